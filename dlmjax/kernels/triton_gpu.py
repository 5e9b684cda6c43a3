"""Flash attention written in Triton and called through jax-triton: the `triton` attention backend.

    out_BxLxHxDh = attend(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL, causal=False)

Legend: B batch, L length, Lp L padded to a multiple of the block, H query heads, K key/value
heads, G = H // K, Dh head dim, Dp Dh padded to a power of two >= 16, Bq / Bk / Bb the forward
query, forward key and backward block sizes, NB the number of backward blocks.

The same algorithm as `pallas_gpu` (FlashAttention-2 forward, a fused dk/dv + dq backward per
key block, segment masking with padding queries giving 0, block skipping from the segment ids,
grouped-query heads read without repeating k/v), written directly in Triton for comparison
with the Pallas lowering. Needs the `[gpu]` extra (jax-triton, triton) and a CUDA GPU: this
module is imported only when the backend is used, so CPU installs never need triton.
"""

from __future__ import annotations

import dataclasses
import inspect
import math

import jax
import jax.numpy as jnp
import jax_triton as jt

from dlmjax.kernels import blocks
from dlmjax.kernels.triton_kernels import flash_bwd, flash_fwd

_LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class _Call:
  causal: bool
  head_dim: int
  sizes: blocks.BlockSizes


# jax-triton 0.4 renamed `out_shape` to `out_type`; both name a pytree of shape/dtype structs.
_OUT = 'out_type' if 'out_type' in inspect.signature(jt.triton_call).parameters else 'out_shape'


def _forward(q, k, v, seg, call: _Call):
  b, lp, h, dp = q.shape
  kv_heads = k.shape[2]
  bq, bk = call.sizes.q, call.sizes.kv
  lo, hi = blocks.hull(blocks.block_overlap(seg, bq, bk, call.causal))
  out = [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, lp), jnp.float32)]
  o, lse = jt.triton_call(
      lo, hi, seg, q, k, v, kernel=flash_fwd, grid=(lp // bq, h, b), name='dlmjax_triton_fwd',
      num_warps=call.sizes.warps(dp, backward=False), num_stages=call.sizes.stages,
      SCALE=_LOG2E / math.sqrt(call.head_dim), CAUSAL=call.causal, L=lp, H=h, K=kv_heads, D=dp,
      BQ=bq, BK=bk, **{_OUT: out})
  return o, lse


def _backward(q, k, v, seg, o, lse, do, call: _Call):
  b, lp, h, dp = q.shape
  kv_heads = k.shape[2]
  bb = call.sizes.bwd
  do, delta_BxHxLp = blocks.backward_inputs(seg, o, do)
  ov_BxNxN = blocks.block_overlap(seg, bb, bb, call.causal)
  klo, khi = blocks.hull(ov_BxNxN)
  qlo, qhi = blocks.hull(ov_BxNxN.transpose(0, 2, 1))
  scale = _LOG2E / math.sqrt(call.head_dim)
  out = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)]
  return jt.triton_call(
      qlo, qhi, klo, khi, seg, q, k, v, do, lse, delta_BxHxLp, kernel=flash_bwd,
      grid=(lp // bb, kv_heads, b), name='dlmjax_triton_bwd',
      num_warps=call.sizes.warps(dp, backward=True), num_stages=call.sizes.stages, SCALE=scale,
      DS_SCALE=1.0 / math.sqrt(call.head_dim), CAUSAL=call.causal, L=lp, H=h, K=kv_heads, D=dp,
      BB=bb, **{_OUT: out})


_flash = blocks.differentiable(_forward, _backward)


def attend(q_BxLxHxDh: jax.Array, k_BxLxKxDh: jax.Array, v_BxLxKxDh: jax.Array,
           segment_ids_BxL: jax.Array, *, causal: bool, dropout_rate: float = 0.0,
           dropout_rng: jax.Array | None = None,
           block_sizes: blocks.BlockSizes | None = None) -> jax.Array:
  """Softmax attention within segments, BxLxHxDh in q's dtype (see `dlmjax.model.attention`)."""
  if dropout_rate > 0.0 and dropout_rng is not None:
    raise NotImplementedError('the triton attention backend has no attention dropout; '
                              'use model.attention=xla')
  _, length, _, dh = q_BxLxHxDh.shape
  sizes = (block_sizes or blocks.BlockSizes()).fit(length)
  call = _Call(causal=causal, head_dim=dh, sizes=sizes)
  return blocks.attend_padded(_flash, call, sizes, q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh,
                              segment_ids_BxL)
