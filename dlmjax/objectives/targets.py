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
from dlmjax.model import fused

__all__ = ['PAD_ID', 'BOS_ID', 'EOS_ID', 'MASK_ID', 'prediction_mask', 'token_ce', 'weighted_ce']


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


def weighted_ce(model, inputs_BxL: jax.Array, segment_ids_BxL: jax.Array,
                positions_BxL: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array, *,
                causal: bool, dropout_rng: jax.Array | None = None,
                chunk_tokens: int = 0) -> tuple[jax.Array, jax.Array]:
  """Runs `model` on the inputs and scores `targets_BxL`: (float32 scalar sum of
  weights x CE, the only part with a gradient; float32 BxL CE at every position).

  A model with a `hidden` / `unembedding` path (the Transformer) goes through the fused
  output projection + cross-entropy (`fused.linear_cross_entropy`): no BxLxV float32
  logits are held for the backward pass, in chunks of about `chunk_tokens` tokens (0: auto).
  Any other model (a test stand-in that returns logits) is scored from its logits.
  """
  if hasattr(model, 'hidden'):
    h_BxLxD = model.hidden(inputs_BxL, segment_ids_BxL, positions_BxL, causal=causal,
                           dropout_rng=dropout_rng)
    w_DxV = model.unembedding()
    b, length = targets_BxL.shape
    chunks = fused.ce_chunks(length, w_DxV.shape[-1], b, chunk_tokens)
    return fused.linear_cross_entropy(h_BxLxD, w_DxV, targets_BxL, weights_BxL,
                                      num_chunks=chunks, never_predicted=model.never_predicted)
  logits_BxLxV = model(inputs_BxL, segment_ids_BxL, positions_BxL, causal=causal,
                       dropout_rng=dropout_rng)
  ce_BxL = token_ce(logits_BxLxV, targets_BxL)
  return (weights_BxL.astype(jnp.float32) * ce_BxL).sum(), jax.lax.stop_gradient(ce_BxL)
