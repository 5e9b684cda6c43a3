"""Masked diffusion objective (MDLM / SMDM / the papers' recipe) and its Monte Carlo ELBO.

Legend: B batch rows, L sequence length, V vocabulary.

Forward process: draw t ~ U(eps, 1) per row, mask each target token (`prediction_mask`; a
segment's first token is context and never masked) independently with probability
1 - alpha_t, and predict the masked tokens with bidirectional attention. The continuous-time
ELBO weights a masked token's cross-entropy by -alpha'_t / (1 - alpha_t):
  linear  alpha_t = 1 - t          mask prob t               weight 1 / t
  cosine  alpha_t = cos(pi t / 2)  mask prob 2 sin^2(pi t/4)  weight (pi / 2) / tan(pi t / 4)
With exact conditionals the expectation of the summed weighted CE is the NLL of the targets
given the context tokens (any-order autoregression), hence an upper bound for a learned model.

Variance control (training only): `mdm.antithetic` spreads the batch's t over [eps, 1)
(MDLM); `mdm.weighting=realised` is MegaDLMs' alternative: every row with targets has at
least one masked target (a row drawn with none masks its target of smallest draw), and each
masked token is weighted by n_targets / n_masked of its row, the realised mask fraction,
instead of 1 / t (the linear schedule's weight, of which it is the sample estimate).

Evaluation (`nll`, and the `mc_elbo` task estimators) always draws t from U(EVAL_EPS, 1),
whatever `mdm.eps` trained the model: runs that ablate the training eps are then scored on
the same quantity (the ELBO's t integral from EVAL_EPS to 1). `nll` stratifies t over the
rows of its batch (MDLM's low-discrepancy sampler, one uniform shifted by i / B, B the
configured `eval.batch_size`): each row's
t is still uniform, so each row's estimate stays unbiased, while the batch total no longer
carries the variance of B independent times. Measured on a trained tiny MDM (U = 16K, 250
epochs; 32K validation tokens, K = 8): the standard error of the validation bits/byte fell
from 0.033 to 0.012-0.023.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dlmjax.config import Config
from dlmjax.objectives import auxiliary
from dlmjax.objectives.targets import MASK_ID, PAD_ID, prediction_mask

EVAL_EPS = 1e-3  # the lower end of t in every evaluation (see the module docstring)


def schedule(t_B: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
  """(mask probability 1 - alpha_t, ELBO weight -alpha'_t / (1 - alpha_t)) at times t."""
  if name == 'linear':
    return t_B, 1.0 / t_B
  if name == 'cosine':
    # 1 - cos(x) = 2 sin^2(x / 2): no cancellation at small t.
    quarter_B = 0.25 * math.pi * t_B
    return 2.0 * jnp.sin(quarter_B) ** 2, 0.5 * math.pi / jnp.tan(quarter_B)
  raise ValueError(f'unknown mdm schedule {name!r}; known: linear, cosine')


def sample_t(rng: jax.Array, batch_size: int, eps: float, *, antithetic: bool,
             strata: int = 0) -> jax.Array:
  """float32 B times in [eps, 1); antithetic: one uniform shifted by i / S (MDLM's sampler),
  S = `strata` or B. Row i's time depends only on i, S and `rng`, so rows appended to a
  batch (padding for data parallelism) leave the others' times unchanged when S is fixed."""
  if antithetic:
    s = strata or batch_size
    u_B = (jax.random.uniform(rng, ()) + jnp.arange(batch_size) / s) % 1.0
  else:
    u_B = jax.random.uniform(rng, (batch_size,))
  return eps + (1.0 - eps) * u_B


def cut_random_lengths(batch: dict, rng: jax.Array, frac: float) -> dict:
  """Each row, with probability `frac`, keeps only a prefix of uniform length in 1..L; the rest
  becomes padding. SMDM does this for 1% of its batches so that the model also sees short,
  padded inputs, as at generation time."""
  b, length = batch['tokens'].shape
  pick_rng, len_rng = jax.random.split(rng)
  cut_B = jnp.where(jax.random.bernoulli(pick_rng, frac, (b,)),
                    jax.random.randint(len_rng, (b,), 1, length + 1), length)
  keep_BxL = jnp.arange(length)[None, :] < cut_B[:, None]
  return dict(batch,
              tokens=jnp.where(keep_BxL, batch['tokens'], PAD_ID),
              segment_ids=jnp.where(keep_BxL, batch['segment_ids'], 0),
              positions=jnp.where(keep_BxL, batch['positions'], 0))


class Corrupted(NamedTuple):
  batch: dict  # the batch the model sees (after any random-length cut), clean tokens
  inputs_BxL: jax.Array  # tokens with MASK_ID where masked
  masked_BxL: jax.Array  # bool: masked targets, the only tokens the loss scores
  is_target_BxL: jax.Array  # bool: prediction_mask of `batch`
  t_B: jax.Array
  weight_B: jax.Array  # -alpha'_t / (1 - alpha_t)


def corrupt(batch: dict, rng: jax.Array, cfg: Config, *, train: bool) -> Corrupted:
  """The forward process. `train=False` (evaluation) skips random lengths and draws t from
  U(EVAL_EPS, 1), stratified over the rows (see the module docstring)."""
  t_rng, mask_rng, len_rng = jax.random.split(rng, 3)
  if train and cfg.mdm.random_length_frac > 0.0:
    batch = cut_random_lengths(batch, len_rng, cfg.mdm.random_length_frac)
  tokens_BxL = batch['tokens']
  b = tokens_BxL.shape[0]
  if train:
    t_B = sample_t(t_rng, b, cfg.mdm.eps, antithetic=cfg.mdm.antithetic)
  else:  # strata of the configured eval batch, whatever rows were appended to it
    t_B = sample_t(t_rng, b, EVAL_EPS, antithetic=True, strata=cfg.eval.batch_size)
  mask_prob_B, weight_B = schedule(t_B, cfg.mdm.schedule)
  is_target_BxL = prediction_mask(batch['segment_ids'])
  u_BxL = jax.random.uniform(mask_rng, tokens_BxL.shape)
  masked_BxL = is_target_BxL & (u_BxL < mask_prob_B[:, None])
  if train and cfg.mdm.weighting == 'realised':
    masked_BxL, weight_B = _realised(masked_BxL, is_target_BxL, u_BxL)
  inputs_BxL = jnp.where(masked_BxL, MASK_ID, tokens_BxL)
  return Corrupted(batch, inputs_BxL, masked_BxL, is_target_BxL, t_B, weight_B)


def _realised(masked_BxL, is_target_BxL, u_BxL):
  """MegaDLMs' variance control: (masks with at least one masked target per row that has
  targets, float32 B weights n_targets / n_masked)."""
  first_BxL = jax.nn.one_hot(jnp.argmin(jnp.where(is_target_BxL, u_BxL, 2.0), axis=1),
                             u_BxL.shape[1], dtype=jnp.bool_)
  none_B = ~masked_BxL.any(axis=1)
  masked_BxL = masked_BxL | (none_B[:, None] & first_BxL & is_target_BxL)
  n_B = is_target_BxL.sum(axis=1)
  weight_B = n_B / jnp.maximum(masked_BxL.sum(axis=1), 1)
  return masked_BxL, weight_B.astype(jnp.float32)


def _masked_ce(model, c: Corrupted, weights_BxL, dropout_rng, cfg: Config):
  """Runs the model bidirectionally on the corrupted inputs: (sum of weights x CE over the
  masked targets, the only part with a gradient; float32 BxL CE at every position; the
  model's auxiliary losses)."""
  weights_BxL = jnp.where(c.masked_BxL, weights_BxL, 0.0)
  return auxiliary.weighted_ce(model, c.inputs_BxL, c.batch['segment_ids'],
                               c.batch['positions'], c.batch['tokens'], weights_BxL,
                               causal=False, dropout_rng=dropout_rng, cfg=cfg)


def loss(model, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jax.Array, dict]:
  """The diffusion training loss (normalised by `cfg.mdm.loss_norm`) and metrics.

  The forward process drawn is `corrupt(batch, jax.random.split(rng)[0], cfg, train=True)`
  (the other half of the split drives dropout), so a caller can reproduce the masks.
  """
  corrupt_rng, dropout_rng = jax.random.split(rng)
  c = corrupt(batch, corrupt_rng, cfg, train=True)
  m = cfg.model
  use_dropout = max(m.attn_dropout, m.mlp_dropout, m.resid_dropout) > 0.0
  n_B = c.is_target_BxL.sum(axis=1)
  n = n_B.sum()
  # Each masked token's CE enters with its ELBO weight times the normalisation, so the loss
  # is one weighted sum (the form the fused cross-entropy differentiates).
  if cfg.mdm.loss_norm == 'token':
    # Every target token of the batch counts once, masked or not: the ELBO per target token.
    norm_B = jnp.broadcast_to(1.0 / jnp.maximum(n, 1), n_B.shape)
    weight = n
  else:
    # Each row's ELBO per target token, averaged over the rows that have targets (a row of
    # pure padding says nothing and must not dilute the mean).
    has_B = n_B > 0
    norm_B = jnp.where(has_B, 1.0 / jnp.maximum(n_B, 1), 0.0) / jnp.maximum(has_B.sum(), 1)
    weight = has_B.sum()
  weights_BxL = jnp.broadcast_to((c.weight_B * norm_B)[:, None], c.masked_BxL.shape)
  value, _, aux = _masked_ce(model, c, weights_BxL, dropout_rng if use_dropout else None, cfg)
  value = value + aux.loss
  metrics = {'loss': value, 'n_targets': n.astype(jnp.float32),
             'mask_rate': c.masked_BxL.sum() / jnp.maximum(n, 1), 't_mean': c.t_B.mean(),
             'loss_weight': weight.astype(jnp.float32),  # objectives.LOSS_WEIGHT
             **aux.metrics}
  return value, metrics


def nll(model, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """One Monte Carlo sample of the ELBO: (float32 B summed nats per row, int32 B targets).

  Unbiased for the ELBO over t ~ U(eps, 1); the evaluator averages K calls with different
  `rng` (independent replicates, so their spread is the standard error's). No dropout, no
  random lengths; t stratified over the rows.
  """
  c = corrupt(batch, rng, cfg, train=False)
  weights_BxL = jnp.broadcast_to(c.weight_B[:, None], c.masked_BxL.shape)
  _, ce_BxL, _ = _masked_ce(model, c, weights_BxL, None, cfg)
  wce_BxL = jnp.where(c.masked_BxL, ce_BxL * weights_BxL, 0.0)
  return wce_BxL.sum(axis=1), c.is_target_BxL.sum(axis=1).astype(jnp.int32)
