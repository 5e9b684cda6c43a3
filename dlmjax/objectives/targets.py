"""Which tokens are predicted, and the special ids every objective uses.

Legend: B batch rows, L sequence length.

The rule (docs/architecture.md, "What is predicted"): the first token of each segment is
context, never predicted and never masked; every other non-padding token is a target. AR and
MDM score exactly the same tokens, so their validation numbers compare.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlmjax.data.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID

__all__ = ['PAD_ID', 'BOS_ID', 'EOS_ID', 'MASK_ID', 'prediction_mask']


def prediction_mask(segment_ids_BxL: jax.Array) -> jax.Array:
  """bool BxL: True at targets (non-padding tokens that are not the first of their segment)."""
  # A token opens a segment when its left neighbour (padding 0 before column 0) differs.
  prev_BxL = jnp.pad(segment_ids_BxL[:, :-1], ((0, 0), (1, 0)))
  return (segment_ids_BxL != 0) & (segment_ids_BxL == prev_BxL)


def token_ce(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """float32 BxL cross-entropy -log softmax(logits)[target] at every position."""
  logits_BxLxV = logits_BxLxV.astype(jnp.float32)
  target_logit_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits_BxLxV, axis=-1) - target_logit_BxL
