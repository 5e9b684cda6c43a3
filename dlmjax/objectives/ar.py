"""Autoregressive next-token objective, with the data-constrained regularisers of the papers.

Legend: B batch rows, L sequence length, V vocabulary.

Logits at position i predict token i + 1 wherever token i + 1 is a target
(`targets.prediction_mask`); a segment's first token is context. Two optional regularisers
(`cfg.ar`) come from the ablations that ask whether AR closes the gap to diffusion:
  * input_mask_rate: each target token is replaced by MASK_ID in the *input* (token dropout);
    what is predicted does not change;
  * param_noise_std: Gaussian noise on every weight matrix and embedding for the forward pass
    (not on norm scales, whose init is 1 and whose noise would be a different regulariser;
    the same parameters weight decay acts on); the gradient is that of the noisy loss taken
    with respect to the clean weights. Sensible values stay at or below `model.init_std`.
Dropout rates come from `cfg.model` and act only in `loss`, never in `nll`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dlmjax.config import Config
from dlmjax.objectives import auxiliary
from dlmjax.objectives.targets import MASK_ID, prediction_mask, weighted_ce


def _next_token_targets(tokens_BxL, segment_ids_BxL):
  """The token each position predicts (int32 BxL) and whether it is a target (bool BxL)."""
  # Shift the targets left instead of slicing the logits: no copy of the BxLxV array.
  next_BxL = jnp.roll(tokens_BxL, -1, axis=1)
  is_target_BxL = jnp.roll(prediction_mask(segment_ids_BxL), -1, axis=1)
  is_target_BxL = is_target_BxL.at[:, -1].set(False)  # the roll wrapped column 0 around
  return next_BxL, is_target_BxL


def with_param_noise(model: nnx.Module, rng: jax.Array, std: float) -> nnx.Module:
  """A copy of `model` whose weight matrices and embeddings (every nnx.Param of 2 or more
  dimensions) have N(0, std^2) noise added; norm scales are left alone; `model` is untouched.

  The noise is a constant of the step, so d(loss)/d(clean) = d(loss)/d(noisy).
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  noisy = [p + std * jax.random.normal(k, p.shape, p.dtype) if p.ndim >= 2 else p
           for p, k in zip(leaves, keys)]
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, noisy), rest)


def _has_dropout(cfg: Config) -> bool:
  m = cfg.model
  return max(m.attn_dropout, m.mlp_dropout, m.resid_dropout) > 0.0


def loss(model, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jax.Array, dict]:
  """Mean next-token cross-entropy over the batch's target tokens, and metrics."""
  tokens_BxL, segment_ids_BxL = batch['tokens'], batch['segment_ids']
  mask_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
  inputs_BxL = tokens_BxL
  masked_BxL = jnp.zeros(tokens_BxL.shape, bool)
  if cfg.ar.input_mask_rate > 0.0:
    # Only targets are eligible: a segment's first token stays visible, as in the MDM.
    masked_BxL = prediction_mask(segment_ids_BxL) & jax.random.bernoulli(
        mask_rng, cfg.ar.input_mask_rate, tokens_BxL.shape)
    inputs_BxL = jnp.where(masked_BxL, MASK_ID, tokens_BxL)
  if cfg.ar.param_noise_std > 0.0:
    model = with_param_noise(model, noise_rng, cfg.ar.param_noise_std)
  next_BxL, is_target_BxL = _next_token_targets(tokens_BxL, segment_ids_BxL)
  n = is_target_BxL.sum()
  # The mean over targets is a weighted sum with weight 1/n, the form the fused
  # cross-entropy differentiates.
  weights_BxL = is_target_BxL / jnp.maximum(n, 1).astype(jnp.float32)
  value, _, aux = auxiliary.weighted_ce(
      model, inputs_BxL, segment_ids_BxL, batch['positions'], next_BxL,
      weights_BxL, causal=True, dropout_rng=dropout_rng if _has_dropout(cfg) else None,
      cfg=cfg)
  value = value + aux.loss
  metrics = {'loss': value, 'n_targets': n.astype(jnp.float32),
             'input_mask_rate': masked_BxL.sum() / jnp.maximum(n, 1),
             'loss_weight': n.astype(jnp.float32),  # objectives.LOSS_WEIGHT
             **aux.metrics}
  return value, metrics


def nll(model, batch: dict, rng: jax.Array, cfg: Config) -> tuple[jax.Array, jax.Array]:
  """Exact NLL: (float32 B summed nats per row, int32 B targets per row). No regulariser."""
  del rng  # deterministic: no masking, no noise, no dropout
  next_BxL, is_target_BxL = _next_token_targets(batch['tokens'], batch['segment_ids'])
  _, ce_BxL = weighted_ce(model, batch['tokens'], batch['segment_ids'], batch['positions'],
                          next_BxL, is_target_BxL.astype(jnp.float32), causal=True,
                          chunk_tokens=cfg.model.ce_chunk_tokens)
  return (jnp.where(is_target_BxL, ce_BxL, 0.0).sum(axis=1),
          is_target_BxL.sum(axis=1).astype(jnp.int32))
