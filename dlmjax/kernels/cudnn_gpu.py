"""cuDNN fused attention through `jax.nn.dot_product_attention`: the `cudnn` attention backend.

    out_BxLxHxDh = attend(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL, causal=False)

Legend: B batch, L length, H query heads, K key/value heads (cuDNN takes them grouped), Dh
head dim.

Packed rows reach cuDNN as an explicit boolean mask (the segment mask of the `xla` reference),
which jax turns into an additive bias: cuDNN then honours the segment ids, at the price of a
BxLxL bias read in the forward and a bias gradient written in the backward. The faster
`MaskType.CAUSAL`-only path is not used on purpose: it ignores segment ids, the silent
cross-document attention reported for MaxText's `cudnn_flash_jax` (AI-Hypercomputer/maxtext
issue 4476). The causal structure is still passed as `is_causal` so cuDNN skips the upper
triangle. cuDNN runs bfloat16 / float16 only, with a head dim <= 128 (256 on Hopper) that is a
multiple of 8.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlmjax.model import attention


def attend(q_BxLxHxDh: jax.Array, k_BxLxKxDh: jax.Array, v_BxLxKxDh: jax.Array,
           segment_ids_BxL: jax.Array, *, causal: bool, dropout_rate: float = 0.0,
           dropout_rng: jax.Array | None = None) -> jax.Array:
  """Softmax attention within segments, BxLxHxDh in q's dtype (see `dlmjax.model.attention`)."""
  if dropout_rate > 0.0 and dropout_rng is not None:
    raise NotImplementedError('the cudnn attention backend has no attention dropout; '
                              'use model.attention=xla')
  if q_BxLxHxDh.dtype not in (jnp.bfloat16, jnp.float16):
    raise NotImplementedError(f'cuDNN attention needs bfloat16 or float16 inputs, not '
                              f'{q_BxLxHxDh.dtype} (set model.dtype=bfloat16)')
  mask_Bx1xLxL = attention.segment_mask(segment_ids_BxL, causal=False)[:, None]
  o_BxLxHxDh = jax.nn.dot_product_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh,
                                            mask=mask_Bx1xLxL, is_causal=causal,
                                            implementation='cudnn')
  # A padding query has an all-False mask row, which cuDNN averages over every key.
  valid_BxLx1x1 = (segment_ids_BxL != 0)[:, :, None, None]
  return jnp.where(valid_BxLx1x1, o_BxLxHxDh, jnp.zeros((), o_BxLxHxDh.dtype))
