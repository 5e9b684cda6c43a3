"""The mixture-of-experts layer: it reduces to the dense SwiGLU, both dispatches agree when
nothing is dropped, the router learns, the auxiliary losses mean what they say and reach both
objectives, capacity drops tokens without breaking causality, and the grouped matmul's CPU
tiles equal jax's ragged_dot.

Legend: B batch, L length, D d_model, N tokens, E experts, A experts per token, M rows,
F expert d_ff, V vocabulary.
"""

import dataclasses
import functools
import math
import pathlib

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from dlmjax import flops
from dlmjax.config import Config, ModelConfig
from dlmjax.model import fused, moe
from dlmjax.model.transformer import Transformer, count_params
from dlmjax.objectives import ar, auxiliary, mdm
from fakes import FixedLogits

V = 40
DENSE = ModelConfig(d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64)
MOE = dataclasses.replace(DENSE, num_experts=4, experts_per_token=2, moe_d_ff=48)


# Jitted calls: eager NNX runs op by op, seconds per forward pass of even a tiny MoE.
@nnx.jit
def layer_out(layer, x_BxLxD):
  return layer(x_BxLxD)


@functools.partial(nnx.jit, static_argnames='causal')
def logits_and_stats(model, t, s, p, *, causal):
  return nnx.capture(model, nnx.Intermediate)(t, s, p, causal=causal)


def tokens_BxL(b=2, length=16, seed=0):
  rng = np.random.default_rng(seed)
  t = jnp.asarray(rng.integers(4, V, (b, length)), jnp.int32)
  return t, jnp.ones_like(t), jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), t.shape)


def x_BxLxD(b=2, length=16, d=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (b, length, d), jnp.float32)


@pytest.mark.parametrize('dispatch', ['dropless', 'capacity'])
def test_one_expert_with_top1_is_the_dense_swiglu_with_the_same_weights(dispatch):
  cfg = dataclasses.replace(DENSE, num_experts=1, experts_per_token=1, moe_dispatch=dispatch,
                            moe_capacity_factor=1.0)
  layer = moe.MoE(cfg, rngs=nnx.Rngs(0))
  x = x_BxLxD()
  want = fused.swiglu_reference(x.reshape(-1, 32), layer.w_gate_up[0], layer.w_down[0])
  np.testing.assert_allclose(layer_out(layer, x).reshape(-1, 32), want, rtol=1e-5, atol=1e-6)


def test_a_one_expert_top1_model_gives_the_dense_models_logits():
  dense = Transformer(DENSE, V, rngs=nnx.Rngs(0))
  sparse = Transformer(dataclasses.replace(DENSE, num_experts=1, experts_per_token=1), V,
                       rngs=nnx.Rngs(1))
  for block_d, block_s in zip(dense.blocks, sparse.blocks):
    for name in ('attn_norm', 'mlp_norm'):
      getattr(block_s, name).scale[...] = getattr(block_d, name).scale[...]
    block_s.w_qkv[...], block_s.w_o[...] = block_d.w_qkv[...], block_d.w_o[...]
    block_s.moe.w_gate_up[...] = block_d.w_gate_up[...][None]
    block_s.moe.w_down[...] = block_d.w_down[...][None]
  sparse.embed[...], sparse.unembed[...] = dense.embed[...], dense.unembed[...]
  sparse.final_norm.scale[...] = dense.final_norm.scale[...]
  np.testing.assert_allclose(logits_and_stats(sparse, *tokens_BxL(), causal=False)[0],
                             logits_and_stats(dense, *tokens_BxL(), causal=False)[0],
                             rtol=1e-5, atol=1e-5)


def test_dropless_equals_capacity_dispatch_when_every_token_fits():
  length = 16
  dropless = moe.MoE(MOE, rngs=nnx.Rngs(0))
  # factor E / A gives C = L slots: even a row that sends every token to one expert fits.
  roomy = moe.MoE(dataclasses.replace(MOE, moe_dispatch='capacity', moe_capacity_factor=2.0),
                  rngs=nnx.Rngs(0))
  assert moe.capacity(4, 2, length, 2.0) == length
  x = x_BxLxD(length=length)
  np.testing.assert_allclose(layer_out(roomy, x), layer_out(dropless, x), rtol=1e-5, atol=1e-6)


def test_capacity_keeps_the_first_c_tokens_of_a_row_per_expert_and_drops_the_rest():
  experts_BxLxA = jnp.zeros((1, 6, 1), jnp.int32)  # every token wants expert 0
  gates_BxLxA = jnp.full((1, 6, 1), 0.5)
  dispatch, combine = moe.dispatch_masks(experts_BxLxA, gates_BxLxA, 2, cap=3)
  np.testing.assert_array_equal(dispatch[0, :, 0].any(-1), [1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(np.argmax(dispatch[0, :3, 0], -1), [0, 1, 2])
  np.testing.assert_allclose(combine[0, :3, 0].sum(-1), 0.5)
  assert not dispatch[0, :, 1].any()
  # factor 0.75 over 2 experts: C = ceil(1 x 6 x 0.75 / 2) = 3, so 3 of 6 assignments drop.
  assert float(moe.dropped_count(experts_BxLxA, 2, 0.75)) == 3


def test_capacity_dispatch_keeps_a_causal_model_causal():
  cfg = dataclasses.replace(MOE, moe_dispatch='capacity', moe_capacity_factor=0.5)
  model = Transformer(cfg, V, rngs=nnx.Rngs(0))
  t, s, p = tokens_BxL(b=1)
  changed = t.at[0, 10:].set((t[0, 10:] - 3) % (V - 4) + 4)
  a, stats = logits_and_stats(model, t, s, p, causal=True)
  b, _ = logits_and_stats(model, changed, s, p, causal=True)
  np.testing.assert_allclose(a[0, :10], b[0, :10], atol=1e-6)
  assert not np.allclose(a[0, 10:], b[0, 10:], atol=1e-4)
  assert float(moe.auxiliary_losses(stats, cfg)[1]['moe_dropped']) > 0  # drops did happen


def test_the_router_learns_from_the_language_model_loss_alone_even_with_top1():
  # Top-1 is where top-k-then-softmax would give a constant gate of 1 and no gradient.
  cfg = Config(objective='ar', model=dataclasses.replace(MOE, experts_per_token=1,
                                                         moe_lb_weight=0.0, moe_z_weight=0.0))
  model = Transformer(cfg.model, V, rngs=nnx.Rngs(0))
  t, s, p = tokens_BxL()
  graphdef, state = nnx.split(model)
  grads = jax.jit(jax.grad(lambda st: ar.loss(nnx.merge(graphdef, st), {
      'tokens': t, 'segment_ids': s, 'positions': p}, jax.random.key(0), cfg)[0]))(state)
  for block in grads['blocks'].values():
    assert float(jnp.abs(block['moe']['w_router'][...]).max()) > 1e-6


def test_load_balance_loss_is_a_for_uniform_routing_and_larger_otherwise():
  n, e, a = 64, 8, 2
  # Uniform: equal probabilities and every expert chosen equally often.
  experts_NxA = jnp.stack([jnp.arange(n) % e, (jnp.arange(n) + 1) % e], axis=1)
  uniform = moe.load_balance_loss(jnp.full((n, e), 1.0 / e), experts_NxA)
  assert float(uniform) == pytest.approx(a)
  # Any non-uniform router that sends every token the same way costs more: the loss is then
  # E x (sum of the top A probabilities) >= A, with equality only at uniform.
  rng = np.random.default_rng(0)
  for temperature in (0.1, 1.0, 10.0):
    logits_E = jnp.asarray(rng.normal(size=e) * temperature, jnp.float32)
    r = moe.route(jnp.ones((n, 1)), logits_E[None, :], a)
    assert float(moe.load_balance_loss(r.probs_NxE, r.experts_NxA)) > a + 1e-4


def test_router_z_loss_is_the_mean_squared_log_partition():
  logits_NxE = jnp.asarray([[0.0, 0.0], [np.log(3.0), 0.0]])
  assert float(moe.router_z_loss(logits_NxE)) == pytest.approx(
      (np.log(2.0) ** 2 + np.log(4.0) ** 2) / 2, rel=1e-6)


@pytest.mark.parametrize('objective', ['ar', 'mdm'])
def test_both_objectives_add_the_weighted_auxiliary_losses_and_report_load(objective):
  t, s, p = tokens_BxL()
  batch = {'tokens': t, 'segment_ids': s, 'positions': p}
  fn = {'ar': ar.loss, 'mdm': mdm.loss}[objective]
  # The papers' recipe recomputes blocks (remat); the layers' reports must survive it.
  remat = 'block' if objective == 'mdm' else 'none'
  graphdef, state = nnx.split(Transformer(dataclasses.replace(MOE, remat=remat), V,
                                          rngs=nnx.Rngs(0)))
  values = {}
  for lb, z in ((0.0, 0.0), (1.0, 10.0)):
    cfg = Config(objective=objective, model=dataclasses.replace(
        MOE, moe_lb_weight=lb, moe_z_weight=z, remat=remat))
    values[lb, z], metrics = jax.jit(
        lambda st: fn(nnx.merge(graphdef, st), batch, jax.random.key(0), cfg))(state)
  for key in ('moe_lb_loss', 'moe_z_loss', 'moe_max_load', 'moe_dropped'):
    assert key in metrics
  assert float(metrics['moe_max_load']) >= 1.0 and float(metrics['moe_dropped']) == 0.0
  np.testing.assert_allclose(values[1.0, 10.0] - values[0.0, 0.0],
                             metrics['moe_lb_loss'] + 10.0 * metrics['moe_z_loss'], rtol=1e-5)


def test_a_model_without_experts_reports_nothing_and_plain_calls_leave_no_state():
  t, s, p = tokens_BxL()
  dense = FixedLogits(np.zeros((2, 16, V), np.float32))
  w = np.ones((2, 16), np.float32)
  _, _, aux = auxiliary.weighted_ce(dense, t, s, p, t, w, causal=True, dropout_rng=None,
                                    cfg=Config())
  assert aux == (0.0, {})
  layer = moe.MoE(MOE, rngs=nnx.Rngs(0))
  layer_out(layer, x_BxLxD())
  assert not jax.tree.leaves(nnx.state(layer, nnx.Intermediate))


def test_cpu_tiled_grouped_matmul_equals_ragged_dot_values_and_gradients():
  rows, groups = 300, 5  # more rows than one tile, so groups straddle tiles
  rng = np.random.default_rng(rows)
  sizes_G = rng.multinomial(rows - 7, np.ones(groups) / groups).astype(np.int32)
  sizes_G[1] = 0  # an empty group; and 7 rows past the last group, which must come out zero
  x_MxK = jnp.asarray(rng.normal(size=(rows, 8)), jnp.float32)
  w_GxKxN = jnp.asarray(rng.normal(size=(groups, 8, 16)), jnp.float32)
  sizes_G = jnp.asarray(sizes_G)
  tiled = lambda x, w: moe._tiled_grouped_matmul(x, w, sizes_G)
  ragged = lambda x, w: jax.lax.ragged_dot(x, w, sizes_G)
  np.testing.assert_allclose(tiled(x_MxK, w_GxKxN), ragged(x_MxK, w_GxKxN), rtol=1e-5, atol=1e-5)
  assert not np.any(tiled(x_MxK, w_GxKxN)[-7:])
  grad = lambda f: jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1))(x_MxK, w_GxKxN)
  for g_tiled, g_ragged in zip(grad(tiled), grad(ragged)):
    np.testing.assert_allclose(g_tiled, g_ragged, rtol=1e-4, atol=1e-5)


def test_grouped_swiglu_sends_each_row_through_its_own_expert():
  rng = np.random.default_rng(0)
  e, d, f, m = 3, 8, 12, 10
  w_gu = jnp.asarray(rng.normal(size=(e, d, 2, f)), jnp.float32)
  w_down = jnp.asarray(rng.normal(size=(e, f, d)), jnp.float32)
  x_MxD = jnp.asarray(rng.normal(size=(m, d)), jnp.float32)
  expert_M = jnp.asarray([2, 0, 3, 1, 2, 2, 0, 3, 1, 0])  # id 3 = no expert (padding)
  y_MxD = moe.grouped_swiglu(x_MxD, expert_M, w_gu, w_down)
  for i, ex in enumerate(np.asarray(expert_M)):
    want = 0.0 if ex == e else fused.swiglu_reference(x_MxD[i:i + 1], w_gu[ex], w_down[ex])[0]
    np.testing.assert_allclose(y_MxD[i], want, rtol=1e-5, atol=1e-5)


def test_num_params_counts_every_expert_and_flops_only_the_active_ones():
  for cfg in (MOE, dataclasses.replace(MOE, n_kv_heads=4, qk_norm=True, tie_embeddings=True)):
    assert flops.num_params(cfg, V) == count_params(Transformer(cfg, V, rngs=nnx.Rngs(0)))
  # Per token an MoE runs its router and A experts: a dense model A x moe_d_ff wide, plus the
  # router's D x E per layer.
  dense_same_width = dataclasses.replace(DENSE, d_ff=MOE.experts_per_token * MOE.moe_d_ff)
  router = DENSE.n_layers * DENSE.d_model * MOE.num_experts
  assert flops.matmul_params(MOE, V) == flops.matmul_params(dense_same_width, V) + router
  assert (flops.train_flops_per_token(MOE, V, 128)
          == flops.train_flops_per_token(dense_same_width, V, 128) + 6 * router)


@pytest.mark.parametrize('objective', [pytest.param('ar', marks=pytest.mark.slow), 'mdm'])
def test_a_tiny_moe_trains_end_to_end_and_logs_expert_load(objective, tmp_path):
  from dlmjax import config as config_lib, train
  from dlmjax.rundir import read_jsonl
  root = pathlib.Path(__file__).resolve().parents[1]
  cfg = config_lib.load_config([str(root / 'configs/tiny.yaml')], [
      f'objective={objective}', 'model.num_experts=4', 'model.experts_per_token=2',
      'model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
      'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=5000', 'data.epochs=2',
      'eval.val_tokens=256', 'eval.num_evals=1', 'eval.batch_size=8', 'eval.mdm_samples=1',
      'train.log_every=10', 'train.progress=false', 'eval.tasks=', f'run_dir={tmp_path / "run"}'])
  result = train.run(cfg)
  assert result['active_params'] < result['params']
  assert result['val_loss'] < math.log(260)  # learned something: below a uniform guess
  metrics = read_jsonl(tmp_path / 'run' / 'metrics.jsonl')
  assert len(metrics) == math.ceil(result['steps'] / 10)
  for m in metrics:
    assert m['moe_max_load'] >= 1.0 and m['moe_dropped'] == 0.0
    assert 0.0 < m['moe_lb_loss'] < 4.0 and 0.0 < m['moe_z_loss']  # 4 = E: all on one expert


def test_expert_weights_are_named_expert_and_shard_over_the_expert_axis():
  from dlmjax import sharding
  from dlmjax.model.transformer import LOGICAL_AXES
  model = nnx.eval_shape(lambda: Transformer(MOE, V, rngs=nnx.Rngs(0)))
  mesh = jax.sharding.AbstractMesh((2, 1, 1, 4), sharding.MESH_AXES)
  for path, p in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = p.get_metadata()['out_sharding']
    assert len(names) == p.ndim and all(n is None or n in LOGICAL_AXES for n in names)
    spec = sharding.logical_to_spec(names, p.shape, mesh)
    assert (spec[0] == 'expert') == (path[-1] in ('w_gate_up', 'w_down')), (path, spec)


def test_decoding_an_moe_model_through_the_kv_cache_gives_the_full_forward_logits():
  model = Transformer(MOE, V, rngs=nnx.Rngs(0))
  t, s, p = tokens_BxL(b=2, length=9)

  @nnx.jit
  def both_ways(m):
    cache, pieces = m.init_cache(2, 9), []
    for lo, hi in [(0, 6), (6, 7), (7, 9)]:
      logits, cache = m(t[:, lo:hi], s[:, lo:hi], p[:, lo:hi], causal=True, cache=cache)
      pieces.append(logits)
    return jnp.concatenate(pieces, 1), m(t, s, p, causal=True)

  decoded, full = both_ways(model)
  np.testing.assert_allclose(decoded, full, rtol=1e-5, atol=1e-5)
