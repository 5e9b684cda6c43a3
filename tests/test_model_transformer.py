"""The transformer's properties: the causal switch, packing isolation, RoPE's relative
positions, parameter metadata, remat, the fused VJPs, and the pure split/merge form.

Legend: B batch, L length, V vocabulary, N tokens, D d_model, F d_ff.
"""

import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from dlmjax import flops
from dlmjax.config import ModelConfig
from dlmjax.model import fused, transformer
from dlmjax.model.transformer import LOGICAL_AXES, Transformer, count_params

V = 40
TINY = ModelConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)


def make(cfg=TINY, seed=0):
  return Transformer(cfg, V, rngs=nnx.Rngs(seed))


def row(tokens, segments):
  """A one-row batch; positions restart at 0 at each segment."""
  seg = np.asarray(segments, np.int32)
  pos = np.zeros_like(seg)
  for i in range(1, seg.size):
    pos[i] = pos[i - 1] + 1 if seg[i] == seg[i - 1] else 0
  return (jnp.asarray([tokens], jnp.int32), jnp.asarray(seg[None]), jnp.asarray(pos[None]))


@pytest.fixture(scope='module')
def model():
  return make()


@pytest.fixture(scope='module')
def forward(model):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda state, t, s, p, causal: transformer.apply(graphdef, state, t, s, p,
                                                                   causal=causal),
                 static_argnums=4), state


def test_causal_logits_ignore_later_tokens_bidirectional_do_not(forward):
  fn, state = forward
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, V, 10)
  changed = tokens.copy()
  changed[7] = (changed[7] + 1 - 4) % (V - 4) + 4
  a, b = row(tokens, [1] * 10), row(changed, [1] * 10)
  causal_a, causal_b = fn(state, *a, True), fn(state, *b, True)
  np.testing.assert_allclose(causal_a[0, :7], causal_b[0, :7], atol=1e-6)
  assert not np.allclose(causal_a[0, 7:], causal_b[0, 7:], atol=1e-4)
  bi_a, bi_b = fn(state, *a, False), fn(state, *b, False)
  assert not np.allclose(bi_a[0, :7], bi_b[0, :7], atol=1e-4)


@pytest.mark.parametrize('causal', [True, False])
def test_changing_document_a_never_changes_document_b_logits(forward, causal):
  fn, state = forward
  rng = np.random.default_rng(1)
  segments = [1] * 5 + [2] * 6 + [0] * 2
  tokens = rng.integers(4, V, 13)
  other = tokens.copy()
  other[:5] = rng.integers(4, V, 5)  # a different document A, same length
  other[11:] = 0  # and different padding
  la, lb = fn(state, *row(tokens, segments), causal), fn(state, *row(other, segments), causal)
  np.testing.assert_allclose(la[0, 5:11], lb[0, 5:11], atol=1e-6)
  assert not np.allclose(la[0, :5], lb[0, :5], atol=1e-4)


@pytest.mark.parametrize('causal', [True, False])
def test_shifting_a_segments_positions_leaves_logits_unchanged(forward, causal):
  fn, state = forward
  rng = np.random.default_rng(2)
  tokens, seg, pos = row(rng.integers(4, V, 12), [1] * 12)
  base = fn(state, tokens, seg, pos, causal)
  shifted = fn(state, tokens, seg, pos + 37, causal)
  np.testing.assert_allclose(base, shifted, atol=2e-4)


def test_logits_are_float32_with_bfloat16_compute():
  cfg = dataclasses.replace(TINY, dtype='bfloat16')
  m = make(cfg)
  out = m(*row(list(range(4, 12)), [1] * 8), causal=True)
  assert out.dtype == jnp.float32 and out.shape == (1, 8, V)
  assert m.embed.dtype == jnp.float32  # params stay in param_dtype


@pytest.mark.parametrize('overrides', [{}, {'tie_embeddings': True}, {'qk_norm': True},
                                       {'n_kv_heads': 1, 'head_dim': 16}])
def test_count_params_matches_the_config_formula(overrides):
  cfg = dataclasses.replace(TINY, **overrides)
  assert count_params(make(cfg)) == flops.num_params(cfg, V)


def test_every_param_carries_logical_axes_and_no_eager_sharding(model):
  params = jax.tree.leaves(nnx.state(model, nnx.Param),
                           is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert params
  for p in params:
    meta = p.get_metadata()
    names = meta['out_sharding']
    assert meta['eager_sharding'] is False
    assert len(names) == p[...].ndim
    assert all(n is None or n in LOGICAL_AXES for n in names), names


def test_init_scales_matrices_and_output_projections_norms_are_ones():
  cfg = dataclasses.replace(TINY, d_model=64, d_ff=256, n_layers=4, init_std=0.02)
  m = make(cfg)
  blk = m.blocks[0]
  assert np.std(np.asarray(blk.w_qkv[...])) == pytest.approx(0.02, rel=0.05)
  assert np.std(np.asarray(blk.w_down[...])) == pytest.approx(0.02 / np.sqrt(8), rel=0.05)
  assert np.std(np.asarray(blk.w_o[...])) == pytest.approx(0.02 / np.sqrt(8), rel=0.1)
  assert np.all(np.asarray(blk.attn_norm.scale[...]) == 1.0)
  assert np.all(np.asarray(m.final_norm.scale[...]) == 1.0)


@pytest.mark.parametrize('remat', [r for r in transformer.REMAT if r != 'none'])
def test_remat_policies_give_the_same_loss_and_gradients(remat):
  tokens, seg, pos = row(list(range(4, 16)), [1] * 6 + [2] * 6)

  def grads(cfg):
    graphdef, state = nnx.split(make(cfg))
    f = lambda s: (transformer.apply(graphdef, s, tokens, seg, pos, causal=False) ** 2).mean()
    return jax.jit(jax.value_and_grad(f))(state)

  (l1, g1), (l2, g2) = grads(TINY), grads(dataclasses.replace(TINY, remat=remat))
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_dropout_only_with_an_rng():
  cfg = dataclasses.replace(TINY, attn_dropout=0.2, mlp_dropout=0.2, resid_dropout=0.2)
  m = make(cfg)
  batch = row(list(range(4, 14)), [1] * 10)
  a, b = m(*batch, causal=True), m(*batch, causal=True)
  np.testing.assert_array_equal(a, b)
  c = m(*batch, causal=True, dropout_rng=jax.random.key(1))
  d = m(*batch, causal=True, dropout_rng=jax.random.key(1))
  np.testing.assert_array_equal(c, d)
  assert not np.allclose(a, c)


def test_split_merge_apply_inside_jit_equals_the_module_call(model):
  batch = row(list(range(5, 14)), [1] * 4 + [2] * 5)
  graphdef, state = nnx.split(model)
  hash(graphdef)  # jit-able as a static argument
  direct = model(*batch, causal=False)
  pure = jax.jit(transformer.apply, static_argnums=0, static_argnames='causal')(
      graphdef, state, *batch, causal=False)
  np.testing.assert_allclose(direct, pure, atol=1e-6)


def _vjp_all(f, args, cotangent):
  out, vjp = jax.vjp(f, *args)
  return out, vjp(cotangent)


def test_swiglu_custom_vjp_matches_autodiff():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(12, 8)), jnp.float32)
  w_gu = jnp.asarray(rng.normal(size=(8, 2, 16)) * 0.3, jnp.float32)
  w_down = jnp.asarray(rng.normal(size=(16, 8)) * 0.3, jnp.float32)
  dy = jnp.asarray(rng.normal(size=(12, 8)), jnp.float32)
  out, grads = _vjp_all(fused.swiglu, (x, w_gu, w_down), dy)
  ref_out, ref_grads = _vjp_all(fused.swiglu_reference, (x, w_gu, w_down), dy)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_qkv_projection_custom_vjp_matches_autodiff():
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(10, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, 2, 4, 3)), jnp.float32)  # K=2 kv heads, G=2, Dh=3
  cot = tuple(jnp.asarray(rng.normal(size=s), jnp.float32)
              for s in ((10, 2, 2, 3), (10, 2, 3), (10, 2, 3)))
  out, grads = _vjp_all(fused.qkv_projection, (x, w), cot)
  ref_out, ref_grads = _vjp_all(fused.qkv_projection_reference, (x, w), cot)
  for a, b in zip(jax.tree.leaves((out, grads)), jax.tree.leaves((ref_out, ref_grads))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_rope_tables_once_equals_rope_tables_inside_and_beyond_the_row_length():
  f = jax.jit(lambda p: transformer.rope_tables_once(p, 8, 10000.0))
  packed = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 6, 7]], jnp.int32)
  later = jnp.asarray([[37, 38, 39, 40, 41, 42, 43, 44]], jnp.int32)  # e.g. a decoding step
  for p in (packed, later):
    for got, want in zip(f(p), transformer.rope_tables(p, 8, 10000.0)):
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_decoding_through_the_kv_cache_gives_the_full_forward_logits(model):
  # Left-padded rows (as the sampler lays out prompts): a prefill, then a two-token chunk,
  # then single tokens, must reproduce the causal forward over the whole row; and one
  # bidirectional call into an empty cache is the bidirectional forward.
  rng = np.random.default_rng(5)
  b, length = 3, 11
  pad = np.array([0, 3, 6])[:, None]
  tokens = jnp.asarray(rng.integers(4, V, (b, length)), jnp.int32)
  seg = jnp.asarray((np.arange(length) >= pad).astype(np.int32))
  pos = jnp.asarray(np.maximum(np.arange(length) - pad, 0).astype(np.int32))
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward_both_ways(state):
    m = nnx.merge(graphdef, state)
    cache, pieces = m.init_cache(b, length), []
    for lo, hi in [(0, 7), (7, 9), (9, 10), (10, 11)]:
      logits, cache = m(tokens[:, lo:hi], seg[:, lo:hi], pos[:, lo:hi], causal=True,
                        cache=cache)
      pieces.append(logits)
    bi, _ = m(tokens, seg, pos, causal=False, cache=m.init_cache(b, length + 4))
    return (jnp.concatenate(pieces, 1), m(tokens, seg, pos, causal=True), cache.index,
            bi, m(tokens, seg, pos, causal=False))

  cached, full, index, bi_cached, bi = forward_both_ways(state)
  assert int(index) == length
  valid = np.asarray(seg, bool)
  np.testing.assert_allclose(np.asarray(cached)[valid], np.asarray(full)[valid], atol=1e-5)
  np.testing.assert_allclose(np.asarray(bi_cached)[valid], np.asarray(bi)[valid], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['pallas', 'splash'])
def test_model_with_a_kernel_backend_matches_xla_logits_and_gradients(backend):
  """The kernels wired into the model (interpret mode on a CPU): same logits and gradients."""
  tokens, seg, pos = row(list(range(5, 35)), [1] * 12 + [2] * 14 + [0] * 4)
  results = []
  for name in ('xla', backend):
    graphdef, state = nnx.split(make(dataclasses.replace(TINY, attention=name)))

    def loss(state, causal):
      logits = transformer.apply(graphdef, state, tokens, seg, pos, causal=causal)
      return (logits * jnp.cos(logits)).sum(), logits

    for causal in (True, False):
      (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True),
                                   static_argnums=1)(state, causal)
      results.append((logits, grads))
  for (l1, g1), (l2, g2) in zip(results[:2], results[2:]):
    np.testing.assert_allclose(np.asarray(l1), np.asarray(l2), atol=1e-4, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=1e-4)
