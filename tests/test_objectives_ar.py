"""The AR objective: the loss by hand, its NLL, input masking and parameter noise.

Legend: B batch, L length, V vocabulary.
"""


import numpy as np

import jax
import jax.numpy as jnp
from flax import nnx

from dlmjax.config import Config, ModelConfig
from dlmjax.model.transformer import Transformer
from dlmjax.objectives import ar
from dlmjax.objectives.targets import MASK_ID, prediction_mask
from fakes import FixedLogits

V = 9
TOKENS = [[1, 5, 6, 1, 7], [1, 8, 4, 5, 0]]
SEGMENTS = [[1, 1, 1, 2, 2], [1, 1, 1, 1, 0]]


def batch():
  seg = np.asarray(SEGMENTS, np.int32)
  pos = np.asarray([[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]], np.int32)
  return {'tokens': jnp.asarray(TOKENS, jnp.int32), 'segment_ids': jnp.asarray(seg),
          'positions': jnp.asarray(pos)}


def hand_ce(logits, tokens, segments):
  """Mean of -log softmax(logits[b, i])[tokens[b, i + 1]] over i + 1 in the same segment."""
  total, n, per_row = 0.0, 0, []
  for b in range(len(tokens)):
    row = 0.0
    for i in range(len(tokens[b]) - 1):
      if segments[b][i + 1] != 0 and segments[b][i + 1] == segments[b][i]:
        lp = logits[b, i] - np.log(np.exp(logits[b, i]).sum())
        row -= lp[tokens[b][i + 1]]
        n += 1
    per_row.append(row)
    total += row
  return total / n, n, np.array(per_row)


def test_loss_equals_hand_computed_next_token_cross_entropy():
  logits = np.random.default_rng(0).normal(size=(2, 5, V))
  model = FixedLogits(logits)
  loss, metrics = ar.loss(model, batch(), jax.random.key(0), Config())
  want, n, _ = hand_ce(logits, TOKENS, SEGMENTS)
  assert n == 6  # row 0: tokens 1, 2, 4; row 1: tokens 1, 2, 3
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert metrics['n_targets'] == 6 and model.seen[0][1] is True  # causal attention


def test_nll_is_exact_per_row_sum_and_target_count():
  logits = np.random.default_rng(1).normal(size=(2, 5, V))
  nll_B, n_B = ar.nll(FixedLogits(logits), batch(), jax.random.key(0), Config())
  _, _, per_row = hand_ce(logits, TOKENS, SEGMENTS)
  np.testing.assert_allclose(nll_B, per_row, rtol=1e-6)
  np.testing.assert_array_equal(n_B, [3, 3])
  assert nll_B.dtype == jnp.float32


def test_input_masking_hides_only_targets_and_leaves_targets_unchanged():
  logits = np.random.default_rng(2).normal(size=(2, 5, V))
  cfg = Config()
  cfg.ar.input_mask_rate = 0.5
  model = FixedLogits(logits)
  seen_masked = np.zeros((2, 5), bool)
  for seed in range(8):
    loss, metrics = ar.loss(model, batch(), jax.random.key(seed), cfg)
    # The stand-in ignores its input, so an unchanged loss means unchanged targets.
    np.testing.assert_allclose(loss, hand_ce(logits, TOKENS, SEGMENTS)[0], rtol=1e-6)
    inputs = model.seen[-1][0]
    masked = inputs == MASK_ID
    np.testing.assert_array_equal(inputs[~masked], np.asarray(TOKENS)[~masked])
    seen_masked |= masked
  is_target = np.asarray(prediction_mask(jnp.asarray(SEGMENTS)))
  assert not (seen_masked & ~is_target).any()  # never a segment's first token or padding
  assert seen_masked.any()


def tiny_transformer(**overrides):
  cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, **overrides)
  return Transformer(cfg, V, rngs=nnx.Rngs(0)), cfg


def test_param_noise_changes_the_loss_not_the_clean_params():
  model, _ = tiny_transformer()
  before = jax.tree.map(np.array, nnx.state(model, nnx.Param))
  clean, noisy = Config(), Config()
  noisy.ar.param_noise_std = 0.05
  graphdef, state = nnx.split(model)

  def value_and_grad(cfg):
    f = lambda s, rng: ar.loss(nnx.merge(graphdef, s), batch(), rng, cfg)[0]
    return jax.jit(jax.value_and_grad(f))

  l0, g0 = value_and_grad(clean)(state, jax.random.key(3))
  noisy_fn = value_and_grad(noisy)
  l1, g1 = noisy_fn(state, jax.random.key(3))
  l2, _ = noisy_fn(state, jax.random.key(3))
  l3, _ = noisy_fn(state, jax.random.key(4))
  assert float(l3) != float(l1)  # fresh noise for another step's rng
  assert float(l0) != float(l1) and float(l1) == float(l2)  # same rng, same noise
  after = jax.tree.map(np.array, nnx.state(model, nnx.Param))
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)
  # Gradients are taken with respect to the clean weights: same tree, finite, and different.
  assert jax.tree.structure(g0) == jax.tree.structure(g1)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(g1))
  assert not np.allclose(np.asarray(g0['embed'][...]), np.asarray(g1['embed'][...]))


def test_dropout_comes_from_the_model_config_only_in_the_loss():
  model, model_cfg = tiny_transformer(mlp_dropout=0.3, resid_dropout=0.1)
  cfg = Config()
  cfg.model = model_cfg
  l_a, _ = ar.loss(model, batch(), jax.random.key(0), cfg)
  l_b, _ = ar.loss(model, batch(), jax.random.key(1), cfg)
  assert float(l_a) != float(l_b)
  n_a, _ = ar.nll(model, batch(), jax.random.key(0), cfg)
  n_b, _ = ar.nll(model, batch(), jax.random.key(1), cfg)
  np.testing.assert_array_equal(n_a, n_b)


def test_param_noise_perturbs_weight_matrices_and_embeddings_but_not_norm_scales():
  model, _ = tiny_transformer()
  noisy = ar.with_param_noise(model, jax.random.key(0), 0.01)
  clean = nnx.state(model, nnx.Param)
  moved = nnx.state(noisy, nnx.Param)
  pairs = list(zip(jax.tree.leaves(clean), jax.tree.leaves(moved)))
  assert any(a.ndim == 1 for a, _ in pairs)  # the model has norm scales
  for a, b in pairs:
    if a.ndim >= 2:
      assert 0.005 < float(np.std(np.asarray(b) - np.asarray(a))) < 0.02
    else:
      np.testing.assert_array_equal(a, b)
