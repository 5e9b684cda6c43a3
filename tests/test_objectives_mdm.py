"""The masked diffusion objective against exact oracles.

The ELBO tests use stand-in "models" (plain callables with the model's signature) that return
the exact conditionals of a known distribution, so the Monte Carlo ELBO can be compared with
the true NLL and with the analytically computed expected ELBO.

Legend: B batch, L length, V vocabulary, M symbols of a toy distribution.
"""

import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from dlmjax.config import Config, ModelConfig
from dlmjax.model.transformer import Transformer
from dlmjax.objectives import mdm
from dlmjax.objectives.targets import MASK_ID, PAD_ID, prediction_mask
from fakes import FixedLogits

V = 8
SYMBOLS = np.arange(4, 8)  # the four non-special ids
NEG = -1e9  # a logit that is probability 0 without producing inf - inf


def config(**mdm_overrides):
  cfg = Config()
  for k, v in mdm_overrides.items():
    setattr(cfg.mdm, k, v)
  return cfg


def single_segment_batch(tokens_BxL):
  b, length = tokens_BxL.shape
  return {'tokens': jnp.asarray(tokens_BxL, jnp.int32),
          'segment_ids': jnp.ones((b, length), jnp.int32),
          'positions': jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (b, length))}


def mc_samples(model, batch, cfg, num_calls):
  """(num_calls, B) float64 one-sample ELBO estimates, as the evaluator draws them."""
  nll = jax.jit(lambda batch, rng: mdm.nll(model, batch, rng, cfg))
  out = []
  for i in range(num_calls):
    nll_B, _ = nll(batch, jax.random.fold_in(jax.random.key(7), i))
    out.append(np.asarray(nll_B, np.float64))
  return np.stack(out)


# ---------------------------------------------------------------------------------------
# ELBO oracle 1: i.i.d. tokens. The exact conditional of every token is the marginal p, so
# the ELBO equals the NLL for any schedule integrated over (0, 1]; over t ~ U(eps, 1) the
# linear schedule is still exact and the cosine one is scaled by cos(pi eps / 2) / (1 - eps).
# Evaluation integrates from mdm.EVAL_EPS whatever the training eps (here 1e-3 or 0.3).

PROBS = np.array([0.5, 0.25, 0.15, 0.1])


def iid_model(tokens_BxL, segment_ids_BxL, positions_BxL, *, causal, dropout_rng=None):
  assert causal is False
  logits_V = jnp.full((V,), NEG).at[SYMBOLS].set(jnp.log(PROBS))
  return jnp.broadcast_to(logits_V, tokens_BxL.shape + (V,))


@pytest.mark.parametrize('schedule,eps', [('linear', 1e-3), ('linear', 0.3), ('cosine', 0.3)])
def test_iid_elbo_estimate_matches_true_nll_within_monte_carlo_error(schedule, eps):
  rng = np.random.default_rng(0)
  tokens = SYMBOLS[rng.choice(4, size=(4096, 16), p=PROBS)]
  batch = single_segment_batch(tokens)
  true_B = -np.log(PROBS[tokens[:, 1:] - 4]).sum(axis=1)  # token 0 is context
  e = mdm.EVAL_EPS
  scale = 1.0 if schedule == 'linear' else math.cos(math.pi * e / 2) / (1 - e)
  est = mc_samples(iid_model, batch, config(schedule=schedule, eps=eps), num_calls=4)
  diff = est - scale * true_B
  se = diff.std() / math.sqrt(diff.size)
  assert abs(diff.mean()) < 4 * se, (diff.mean(), se)
  assert se < 0.01 * true_B.mean()


# ---------------------------------------------------------------------------------------
# ELBO oracle 2: a dependent distribution. Each segment is [BOS, c, c, ..., c] with c uniform
# over M symbols, so the true NLL of its n targets given BOS is log M. The exact conditional
# of a masked token is certain once any c is visible, uniform otherwise, so the weighted CE is
# n log M / t when all n targets are masked (probability t^n) and 0 otherwise:
#   E_{t ~ U(eps, 1)} ELBO = log M (1 - eps^n) / (1 - eps)  >=  log M.

M, N_TARGETS, EPS = 4, 7, 0.2


def repeated_symbol_model(tokens_BxL, segment_ids_BxL, positions_BxL, *, causal,
                          dropout_rng=None):
  visible_BxL = (tokens_BxL != MASK_ID) & (positions_BxL > 0) & (segment_ids_BxL != 0)
  same_BxLxL = segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
  seen_BxL = jnp.max(jnp.where(same_BxLxL & visible_BxL[:, None, :], tokens_BxL[:, None, :], -1),
                     axis=-1)
  certain_BxLxV = jnp.where(jnp.arange(V) == seen_BxL[..., None], 0.0, NEG)
  uniform_V = jnp.full((V,), NEG).at[SYMBOLS[:M]].set(0.0)
  return jnp.where((seen_BxL >= 0)[..., None], certain_BxLxV, uniform_V)


def test_dependent_toy_elbo_is_above_the_nll_and_matches_the_analytic_expectation(monkeypatch):
  # The evaluation's t range is what the analytic ELBO integrates over; eps = 0.2 makes the
  # gap to the NLL (a factor 1.25) far larger than the Monte Carlo error.
  monkeypatch.setattr(mdm, 'EVAL_EPS', EPS)
  rng = np.random.default_rng(1)
  b, seg_len = 4096, N_TARGETS + 1
  c = SYMBOLS[rng.integers(0, M, size=(b, 2))]  # two documents per row
  tokens = np.concatenate([np.full((b, 1), 1), np.repeat(c[:, :1], N_TARGETS, 1),
                           np.full((b, 1), 1), np.repeat(c[:, 1:], N_TARGETS, 1)], axis=1)
  seg = np.repeat([[1] * seg_len + [2] * seg_len], b, 0)
  pos = np.tile(np.arange(seg_len), (b, 2))
  batch = {'tokens': jnp.asarray(tokens, jnp.int32), 'segment_ids': jnp.asarray(seg, jnp.int32),
           'positions': jnp.asarray(pos, jnp.int32)}
  est = mc_samples(repeated_symbol_model, batch, config(eps=EPS), num_calls=6).ravel()
  true_nll = 2 * math.log(M)
  expected_elbo = 2 * math.log(M) * (1 - EPS ** N_TARGETS) / (1 - EPS)
  se = est.std() / math.sqrt(est.size)
  assert abs(est.mean() - expected_elbo) < 4 * se, (est.mean(), expected_elbo, se)
  assert est.mean() > true_nll + 4 * se
  assert se < 0.02 * true_nll


# ---------------------------------------------------------------------------------------
# The training loss.


def packed_batch():
  """Rows with several documents, padding, and one row of pure padding."""
  seg = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 2, 3],
                  [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                  [4, 4, 5, 5, 5, 5, 5, 5, 5, 5],
                  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32)
  pos = np.zeros_like(seg)
  for r in range(seg.shape[0]):
    for i in range(1, seg.shape[1]):
      pos[r, i] = pos[r, i - 1] + 1 if seg[r, i] == seg[r, i - 1] else 0
  tokens = np.where(seg > 0, np.random.default_rng(2).integers(4, V, seg.shape), PAD_ID)
  return {'tokens': jnp.asarray(tokens, jnp.int32), 'segment_ids': jnp.asarray(seg),
          'positions': jnp.asarray(pos, jnp.int32)}


def test_gradient_flows_only_from_masked_targets():
  batch = packed_batch()
  model = FixedLogits(np.random.default_rng(3).normal(size=(4, 10, V)))
  graphdef, state = nnx.split(model)
  cfg = config()
  is_target = np.asarray(prediction_mask(batch['segment_ids']))
  for seed in range(4):
    grads = jax.grad(lambda s: mdm.loss(nnx.merge(graphdef, s), batch, jax.random.key(seed),
                                        cfg)[0])(state)
    inputs, causal = model.seen[-1]
    assert causal is False
    masked = inputs == MASK_ID
    assert masked.any() and not (masked & ~is_target).any()
    g = np.abs(np.asarray(grads['logits'][...])).sum(-1)
    assert (g[~masked] == 0).all()  # unmasked targets, context tokens and padding: exactly 0
    assert (g[masked] > 0).all()


def test_a_segments_first_token_is_never_masked():
  batch = packed_batch()
  cfg = config(eps=0.999)  # t >= 0.999: nearly every target is masked
  is_target = np.asarray(prediction_mask(batch['segment_ids']))
  for seed in range(5):
    c = mdm.corrupt(batch, jax.random.key(seed), cfg, train=True)
    masked = np.asarray(c.masked_BxL)
    assert not (masked & ~is_target).any()
    assert masked[is_target].mean() > 0.9
    inputs = np.asarray(c.inputs_BxL)
    np.testing.assert_array_equal(inputs[~masked], np.asarray(batch['tokens'])[~masked])


@pytest.mark.parametrize('loss_norm', ['token', 'sequence'])
def test_token_and_sequence_normalisation_by_hand(loss_norm):
  batch = packed_batch()
  logits = np.random.default_rng(4).normal(size=(4, 10, V))
  cfg = config(loss_norm=loss_norm, eps=0.05, random_length_frac=0.0)
  rng = jax.random.key(11)
  loss, metrics = mdm.loss(FixedLogits(logits), batch, rng, cfg)
  c = mdm.corrupt(batch, jax.random.split(rng)[0], cfg, train=True)
  masked, t = np.asarray(c.masked_BxL), np.asarray(c.t_B, np.float64)
  tokens = np.asarray(batch['tokens'])
  is_target = np.asarray(prediction_mask(batch['segment_ids']))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
  row_sum = np.where(masked, ce / t[:, None], 0.0).sum(1)
  row_n = is_target.sum(1)
  if loss_norm == 'token':
    want = row_sum.sum() / row_n.sum()
  else:
    has = row_n > 0
    want = (row_sum[has] / row_n[has]).mean()  # the all-padding row does not count
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert metrics['n_targets'] == row_n.sum()
  np.testing.assert_allclose(metrics['mask_rate'], masked.sum() / row_n.sum(), rtol=1e-6)


def test_cosine_weight_is_minus_alpha_prime_over_one_minus_alpha():
  t = np.array([0.01, 0.2, 0.5, 0.9, 0.999])
  alpha, dalpha = np.cos(np.pi * t / 2), -np.pi / 2 * np.sin(np.pi * t / 2)  # float64
  mask_prob, weight = mdm.schedule(jnp.asarray(t, jnp.float32), 'cosine')
  np.testing.assert_allclose(mask_prob, 1 - alpha, rtol=1e-5)
  np.testing.assert_allclose(weight, -dalpha / (1 - alpha), rtol=1e-5)
  np.testing.assert_allclose(mdm.schedule(jnp.asarray(t), 'linear')[1], 1 / t, rtol=1e-6)


def test_antithetic_times_take_one_value_per_stratum():
  eps, b = 0.05, 16
  t = np.asarray(mdm.sample_t(jax.random.key(0), b, eps, antithetic=True), np.float64)
  u = (t - eps) / (1 - eps)
  assert (t >= eps).all() and (t < 1).all()
  np.testing.assert_array_equal(np.sort(np.floor(u * b)), np.arange(b))


def test_random_length_rows_become_padding_after_the_cut():
  batch = packed_batch()
  original = np.asarray(batch['tokens'])
  cut = mdm.cut_random_lengths(batch, jax.random.key(5), frac=1.0)
  seg, tokens = np.asarray(cut['segment_ids']), np.asarray(cut['tokens'])
  kept = []
  for r in range(seg.shape[0]):
    n = next(i for i in range(11) if (seg[r, i:] == 0).all())  # padding from n on
    np.testing.assert_array_equal(tokens[r, n:], PAD_ID)
    np.testing.assert_array_equal(tokens[r, :n], original[r, :n])
    kept.append(n)
  assert kept[:3] != [10, 7, 10]  # at least one of the non-empty rows was shortened
  same = mdm.cut_random_lengths(batch, jax.random.key(5), frac=0.0)
  for k in batch:
    np.testing.assert_array_equal(same[k], batch[k])


def test_loss_on_the_real_model_is_finite_with_random_lengths_and_antithetic_t():
  model = Transformer(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64), V,
                      rngs=nnx.Rngs(0))
  cfg = config(antithetic=True, random_length_frac=0.5)
  loss, metrics = mdm.loss(model, packed_batch(), jax.random.key(0), cfg)
  assert np.isfinite(float(loss)) and set(metrics) >= {'loss', 'mask_rate', 'n_targets'}
  assert all(np.ndim(v) == 0 for v in metrics.values())
  nll_B, n_B = mdm.nll(model, packed_batch(), jax.random.key(0), cfg)
  assert nll_B.shape == (4,) and nll_B.dtype == jnp.float32
  np.testing.assert_array_equal(n_B, np.asarray(prediction_mask(packed_batch()['segment_ids'])).sum(1))


def test_realised_weighting_masks_at_least_one_target_per_row_and_weights_n_over_masked():
  batch = packed_batch()
  is_target = np.asarray(prediction_mask(batch['segment_ids']))
  cfg = config(weighting='realised', eps=1e-3, random_length_frac=0.0)
  rows_rescued = 0
  for seed in range(40):
    c = mdm.corrupt(batch, jax.random.key(seed), cfg, train=True)
    masked, w = np.asarray(c.masked_BxL), np.asarray(c.weight_B)
    assert not (masked & ~is_target).any()
    has = is_target.any(1)
    assert masked[has].any(1).all()
    np.testing.assert_allclose(w[has], is_target[has].sum(1) / masked[has].sum(1), rtol=1e-6)
    plain = mdm.corrupt(batch, jax.random.key(seed), config(eps=1e-3, random_length_frac=0.0),
                        train=True)
    rows_rescued += int((~np.asarray(plain.masked_BxL).any(1) & has).sum())
  assert rows_rescued > 0  # small t left some rows with nothing masked: they were rescued


def test_realised_weighting_is_exact_in_expectation_on_iid_tokens():
  # Given k masked of n, the masked set is uniform: E[(n / k) sum_masked CE] = sum CE, for any k.
  rng = np.random.default_rng(5)
  tokens = SYMBOLS[rng.choice(4, size=(2048, 16), p=PROBS)]
  batch = single_segment_batch(tokens)
  true = -np.log(PROBS[tokens[:, 1:] - 4]).mean()
  cfg = config(weighting='realised', random_length_frac=0.0)
  losses = [float(mdm.loss(iid_model, batch, jax.random.key(i), cfg)[0]) for i in range(8)]
  se = np.std(losses, ddof=1) / math.sqrt(len(losses))
  assert abs(np.mean(losses) - true) < 4 * se + 1e-3, (np.mean(losses), true, se)


def test_realised_weighting_needs_the_linear_schedule():
  from dlmjax.config import load_config
  from dlmjax.errors import ConfigError
  with pytest.raises(ConfigError, match='mdm.weighting'):
    load_config([], ['mdm.weighting=realised', 'mdm.schedule=cosine'])


def test_evaluation_stratifies_t_over_the_eval_batch_and_padding_rows_change_nothing():
  cfg = config(eps=0.5)  # the training eps plays no part in evaluation
  cfg.eval.batch_size = 4
  batch = packed_batch()  # 4 rows
  padded = {k: jnp.concatenate([v, jnp.zeros((4,) + v.shape[1:], v.dtype)]) for k, v in
            batch.items()}
  for seed in range(3):
    c = mdm.corrupt(batch, jax.random.key(seed), cfg, train=False)
    cp = mdm.corrupt(padded, jax.random.key(seed), cfg, train=False)
    t = np.asarray(c.t_B, np.float64)
    np.testing.assert_array_equal(np.asarray(cp.t_B)[:4], t)
    u = (t - mdm.EVAL_EPS) / (1 - mdm.EVAL_EPS)
    np.testing.assert_array_equal(np.sort(np.floor(u * 4)), np.arange(4))
