"""The fused output projection + cross-entropy against the plain one, and the objectives'
loss path through it against the logits path.

Legend: B batch, L length, D d_model, V vocabulary.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from dlmjax.config import Config, ModelConfig
from dlmjax.model import fused
from dlmjax.model.transformer import Transformer
from dlmjax.objectives import ar, mdm, targets


def _problem(seed, b=3, length=12, d=8, v=11):
  rng = np.random.default_rng(seed)
  h = jnp.asarray(rng.normal(size=(b, length, d)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(d, v)), jnp.float32)
  t = jnp.asarray(rng.integers(0, v, (b, length)), jnp.int32)
  wt = jnp.asarray(rng.random((b, length)) * (rng.random((b, length)) < 0.7), jnp.float32)
  return h, w, t, wt


@pytest.mark.parametrize('num_chunks', [1, 3])
def test_fused_ce_equals_plain_ce_in_value_per_token_ce_and_gradients(num_chunks):
  h, w, t, wt = _problem(0)
  fused_fn = lambda h, w, wt: fused.linear_cross_entropy(h, w, t, wt, num_chunks=num_chunks)
  plain_fn = lambda h, w, wt: fused.linear_cross_entropy_reference(h, w, t, wt)
  (loss, ce), grads = jax.jit(jax.value_and_grad(fused_fn, argnums=(0, 1, 2),
                                                 has_aux=True))(h, w, wt)
  (ref_loss, ref_ce), ref_grads = jax.jit(jax.value_and_grad(plain_fn, argnums=(0, 1, 2),
                                                             has_aux=True))(h, w, wt)
  # The plain CE written out in float64 pins the definition, not just the two codes.
  logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  want_ce = lse - np.take_along_axis(logits, np.asarray(t)[..., None], -1)[..., 0]
  np.testing.assert_allclose(ce, want_ce, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss, (np.asarray(wt) * want_ce).sum(), rtol=1e-5)
  np.testing.assert_allclose(ref_ce, want_ce, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)


def test_fused_ce_gradient_scales_with_the_loss_cotangent_and_skips_zero_weights():
  h, w, t, wt = _problem(1)
  f = lambda h: 3.0 * fused.linear_cross_entropy(h, w, t, wt, num_chunks=2)[0]
  g = jax.jit(jax.grad(f))(h)
  g_ref = jax.jit(jax.grad(lambda h: 3.0 * fused.linear_cross_entropy_reference(h, w, t, wt)[0]))(h)
  np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(g)[np.asarray(wt) == 0], 0.0)


def test_fused_ce_in_bfloat16_is_close_and_keeps_the_weight_dtype():
  h, w, t, wt = _problem(2, v=37)
  hb = h.astype(jnp.bfloat16)
  f = lambda h, w: fused.linear_cross_entropy(h, w, t, wt, num_chunks=2)[0]
  r = lambda h, w: fused.linear_cross_entropy_reference(h, w, t, wt)[0]
  (loss, (gh, gw)), (ref, (rh, rw)) = (jax.jit(jax.value_and_grad(f, (0, 1)))(hb, w),
                                       jax.jit(jax.value_and_grad(r, (0, 1)))(hb, w))
  assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.float32  # f32 master weight gradient
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gh, np.float32), np.asarray(rh, np.float32), atol=2e-2)
  np.testing.assert_allclose(gw, rw, rtol=2e-2, atol=2e-2)


def test_chunk_count_divides_the_length_and_bounds_the_logits():
  assert fused.ce_chunks(128, 260, 32) == 1  # the CPU preset: one chunk
  n = fused.ce_chunks(2048, 50304, 8)  # 8 rows of the 1B preset
  assert 2048 % n == 0 and 8 * 2048 // n * 50304 * 4 <= 256 << 20
  assert fused.ce_chunks(2048, 50304, 8, chunk_tokens=4096) == 4
  assert fused.ce_chunks(13, 50304, 8000) == 13  # a prime length: one position per chunk


class _LogitsOnly(nnx.Module):
  """The same network seen only through its logits, so `weighted_ce` takes the plain path."""

  def __init__(self, model):
    self.model = model

  def __call__(self, *args, **kwargs):
    return self.model(*args, **kwargs)


# Slow (11 s): the objectives' fused losses are checked against the logits path below.
@pytest.mark.slow
def test_fused_loss_path_equals_the_logits_path_for_the_tied_transformer():
  # Tied: the projection is the transposed input embedding (untied: the objective tests).
  cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, tie_embeddings=True)
  model = Transformer(cfg, 23, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  tokens = jnp.asarray(rng.integers(4, 23, (2, 10)), jnp.int32)
  seg = jnp.asarray([[1] * 6 + [2] * 4, [1] * 7 + [0] * 3], jnp.int32)
  pos = jnp.asarray([list(range(6)) + list(range(4)), list(range(7)) + [0] * 3], jnp.int32)
  wt = jnp.asarray(rng.random((2, 10)), jnp.float32)

  def loss(m, plain):
    m = _LogitsOnly(m) if plain else m
    return targets.weighted_ce(m, tokens, seg, pos, tokens, wt, causal=False, chunk_tokens=4)

  both = nnx.jit(lambda m: (nnx.value_and_grad(lambda m: loss(m, False), has_aux=True)(m),
                            nnx.value_and_grad(lambda m: loss(m, True), has_aux=True)(m)))
  ((l_f, ce_f), g_f), ((l_p, ce_p), g_p) = both(model)
  np.testing.assert_allclose(l_f, l_p, rtol=1e-5)
  np.testing.assert_allclose(ce_f, ce_p, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_f), jax.tree.leaves(g_p)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('objective,norm', [('ar', 'token'), ('mdm', 'sequence')])
def test_objective_losses_and_nll_equal_their_logits_path_values(objective, norm):
  cfg = Config()
  cfg.model = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32)
  cfg.mdm.loss_norm = norm
  model = Transformer(cfg.model, 23, rngs=nnx.Rngs(1))
  rng = np.random.default_rng(4)
  batch = {'tokens': jnp.asarray(rng.integers(4, 23, (3, 9)), jnp.int32),
           'segment_ids': jnp.asarray([[1] * 9, [1] * 4 + [2] * 5, [1] * 5 + [0] * 4], jnp.int32),
           'positions': jnp.asarray([list(range(9)), list(range(4)) + list(range(5)),
                                     list(range(5)) + [0] * 4], jnp.int32)}
  obj = {'ar': ar, 'mdm': mdm}[objective]
  key = jax.random.key(5)
  both = nnx.jit(lambda m: [(fn(m, batch, key, cfg), fn(_LogitsOnly(m), batch, key, cfg))
                            for fn in (obj.loss, obj.nll)])
  for got, want in both(model):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_suppressed_ids_get_no_probability_no_gradient_and_match_the_reference():
  h, w, t, wt = _problem(5, v=13)
  never = (0, 1, 3)
  # Targets at suppressed ids only where the weight is 0 (padding): finite, and they add 0.
  t = jnp.where(jnp.isin(t, jnp.asarray(never)) & (wt > 0), 5, t)
  fused_fn = lambda h, w: fused.linear_cross_entropy(h, w, t, wt, num_chunks=2,
                                                    never_predicted=never)
  ref_fn = lambda h, w: fused.linear_cross_entropy_reference(h, w, t, wt, never)
  (loss, ce), (gh, gw) = jax.jit(jax.value_and_grad(fused_fn, (0, 1), has_aux=True))(h, w)
  (ref, ref_ce), (rh, rw) = jax.jit(jax.value_and_grad(ref_fn, (0, 1), has_aux=True))(h, w)
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(gh, rh, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gw, rw, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(gw)[:, list(never)], 0.0)
  # The CE of an allowed target is that of a softmax over the allowed ids only.
  logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
  allowed = [i for i in range(13) if i not in never]
  sub = logits[..., allowed]
  lse = np.log(np.exp(sub - sub.max(-1, keepdims=True)).sum(-1)) + sub.max(-1)
  want = lse - np.take_along_axis(logits, np.asarray(t)[..., None], -1)[..., 0]
  keep = np.asarray(wt) > 0
  np.testing.assert_allclose(np.asarray(ce)[keep], want[keep], rtol=1e-5, atol=1e-5)


def test_the_transformer_never_predicts_padding_bos_or_the_mask():
  from dlmjax.model.transformer import NEVER_PREDICTED
  model = Transformer(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), 23,
                      rngs=nnx.Rngs(2))
  tokens = jnp.asarray(np.random.default_rng(6).integers(4, 23, (2, 8)), jnp.int32)
  seg, pos = jnp.ones((2, 8), jnp.int32), jnp.broadcast_to(jnp.arange(8), (2, 8))
  for causal in (True, False):
    p = jax.nn.softmax(model(tokens, seg, pos, causal=causal), axis=-1)
    np.testing.assert_array_equal(np.asarray(p)[..., list(NEVER_PREDICTED)], 0.0)
    np.testing.assert_allclose(np.asarray(p).sum(-1), 1.0, rtol=1e-5)


def test_mdm_evaluation_uses_the_fixed_eval_eps_whatever_the_training_eps():
  cfg = Config()
  cfg.model = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32)
  model = Transformer(cfg.model, 23, rngs=nnx.Rngs(1))
  batch = {'tokens': jnp.asarray(np.random.default_rng(7).integers(4, 23, (4, 9)), jnp.int32),
           'segment_ids': jnp.ones((4, 9), jnp.int32),
           'positions': jnp.broadcast_to(jnp.arange(9), (4, 9))}
  key = jax.random.key(8)
  at = lambda eps: mdm.nll(model, batch, key, Config(model=cfg.model, mdm=type(cfg.mdm)(eps=eps)))
  base, ablated = at(mdm.EVAL_EPS), at(0.5)
  for a, b in zip(base, ablated):
    np.testing.assert_array_equal(a, b)
  # ... while training does see its own eps: at 0.5 every row masks at least ~half.
  c = mdm.corrupt(batch, key, Config(mdm=type(cfg.mdm)(eps=0.5)), train=True)
  assert float(c.t_B.min()) >= 0.5
