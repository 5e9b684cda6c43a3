"""What the GPU flash kernels (`pallas_gpu`, `triton_gpu`) share outside the kernels: padding to
whole blocks, which blocks can interact, and the backward's inputs.

Legend: B batch, L length, Lp L padded to a multiple of the blocks, H query heads, N heads of
either kind, Dh head dim, Dp Dh padded to a power of two >= 16 (the smallest Triton matmul),
Nq / Nk numbers of query / key blocks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tile sizes (powers of two >= 16) and Triton launch parameters of the GPU flash kernels.

  Defaults follow the FlashAttention-2 Triton kernels for head dims 64-128 on A100/H100; they
  are not yet tuned on a GPU here (`python -m dlmjax.bench` measures them).
  """

  q: int = 128  # forward: queries per program
  kv: int = 64  # forward: keys per loop step
  bwd: int = 64  # backward: queries and keys per block
  warps_fwd: int | None = None  # None: 4 for head dims <= 64, else 8
  warps_bwd: int | None = None  # None: 4 for head dims <= 64, else 8
  stages: int = 2

  def warps(self, head_dim_padded: int, backward: bool) -> int:
    """Warps per program: 8 where a head dim of 128 makes the accumulators too big for 4."""
    chosen = self.warps_bwd if backward else self.warps_fwd
    return chosen or (4 if head_dim_padded <= 64 else 8)

  def fit(self, length: int) -> 'BlockSizes':
    """The same sizes, shrunk for a short sequence so padding stays under a block."""
    cap = max(16, next_power_of_2(length))
    return dataclasses.replace(self, q=min(self.q, cap), kv=min(self.kv, cap),
                               bwd=min(self.bwd, cap))

  @property
  def largest(self) -> int:
    return max(self.q, self.kv, self.bwd)


def next_power_of_2(n: int) -> int:
  return 1 << max(0, n - 1).bit_length()


def padded_sizes(length: int, head_dim: int, block: int) -> tuple[int, int]:
  """(Lp, Dp): the length rounded up to `block`, the head dim to a power of two >= 16."""
  return -(-length // block) * block, max(16, next_power_of_2(head_dim))


def pad(x_BxLxNxDh: jax.Array, lp: int, dp: int) -> jax.Array:
  """Zeros after the last position and head-dim entry: no effect on q.k, and the padded output
  columns (zero v) are sliced away."""
  _, length, _, dh = x_BxLxNxDh.shape
  return jnp.pad(x_BxLxNxDh, ((0, 0), (0, lp - length), (0, 0), (0, dp - dh)))


def pad_segments(segment_ids_BxL: jax.Array, lp: int) -> jax.Array:
  """int32 BxLp; the padded positions are padding (segment 0)."""
  length = segment_ids_BxL.shape[1]
  return jnp.pad(segment_ids_BxL.astype(jnp.int32), ((0, 0), (0, lp - length)))


def block_overlap(segment_ids_BxL: jax.Array, bq: int, bk: int, causal: bool) -> jax.Array:
  """bool BxNqxNk: may some query of block i attend to some key of block j.

  True when the blocks' ranges of non-padding segment ids overlap (necessary for sharing a
  segment, whatever the order of the ids) and, if causal, key block j starts no later than
  query block i ends.
  """
  b, lp = segment_ids_BxL.shape
  big = jnp.iinfo(jnp.int32).max

  def bounds(n):
    s_BxNxBn = segment_ids_BxL.reshape(b, lp // n, n)
    return jnp.where(s_BxNxBn == 0, big, s_BxNxBn).min(-1), s_BxNxBn.max(-1)

  qmin_BxNq, qmax_BxNq = bounds(bq)
  kmin_BxNk, kmax_BxNk = bounds(bk)
  ov_BxNqxNk = ((qmin_BxNq[:, :, None] <= kmax_BxNk[:, None, :])
                & (kmin_BxNk[:, None, :] <= qmax_BxNq[:, :, None]))
  if causal:
    first_key_Nk = jnp.arange(lp // bk) * bk
    last_query_Nq = jnp.arange(lp // bq) * bq + bq - 1
    ov_BxNqxNk &= (first_key_Nk[None, :] <= last_query_Nq[:, None])[None]
  return ov_BxNqxNk


def hull(ov_BxNxM: jax.Array) -> tuple[jax.Array, jax.Array]:
  """int32 BxN first and one-past-last index of True along the last axis (0, 0 if none).

  The kernels loop over this contiguous range; blocks inside it that do not overlap are
  masked like any other. With the pipeline's increasing segment ids the range is exact.
  """
  m = ov_BxNxM.shape[-1]
  any_BxN = ov_BxNxM.any(-1)
  lo_BxN = jnp.argmax(ov_BxNxM, -1)
  hi_BxN = m - jnp.argmax(ov_BxNxM[..., ::-1], -1)
  return (jnp.where(any_BxN, lo_BxN, 0).astype(jnp.int32),
          jnp.where(any_BxN, hi_BxN, 0).astype(jnp.int32))


def backward_inputs(seg_BxLp: jax.Array, o_BxLpxHxDp: jax.Array, do_BxLpxHxDp: jax.Array):
  """(do with padding queries zeroed, delta_BxHxLp = rowsum(o * do) in float32).

  Padding queries have no output, so no gradient may flow through them whatever `do` holds;
  zeroing it here lets the kernels skip any special case for them.
  """
  do = jnp.where((seg_BxLp != 0)[:, :, None, None], do_BxLpxHxDp,
                 jnp.zeros((), do_BxLpxHxDp.dtype))
  delta_BxHxLp = jnp.einsum('blhd,blhd->bhl', o_BxLpxHxDp.astype(jnp.float32),
                            do.astype(jnp.float32))
  return do, delta_BxHxLp


def differentiable(forward: Callable, backward: Callable) -> Callable:
  """`flash(q, k, v, seg, call) -> o` with a custom VJP from a kernel pair on padded inputs.

  forward(q, k, v, seg, call) -> (o, lse); backward(q, k, v, seg, o, lse, do, call) ->
  (dq, dk, dv). `call` holds the static arguments (hashable).
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
  def flash(q, k, v, seg, call):
    return forward(q, k, v, seg, call)[0]

  def flash_fwd(q, k, v, seg, call):
    o, lse = forward(q, k, v, seg, call)
    return o, (q, k, v, seg, o, lse)

  def flash_bwd(call, res, do):
    q, k, v, seg, o, lse = res
    return (*backward(q, k, v, seg, o, lse, do, call), None)  # no cotangent for segment ids

  flash.defvjp(flash_fwd, flash_bwd)
  return flash


def attend_padded(flash: Callable, call: Any, sizes: BlockSizes, q_BxLxHxDh: jax.Array,
                  k_BxLxKxDh: jax.Array, v_BxLxKxDh: jax.Array,
                  segment_ids_BxL: jax.Array) -> jax.Array:
  """Pads to whole blocks and a power-of-two head dim, runs `flash`, slices the result back."""
  _, length, _, dh = q_BxLxHxDh.shape
  lp, dp = padded_sizes(length, dh, sizes.largest)
  o = flash(pad(q_BxLxHxDh, lp, dp), pad(k_BxLxKxDh, lp, dp), pad(v_BxLxKxDh, lp, dp),
            pad_segments(segment_ids_BxL, lp), call)
  return o[:, :length, :, :dh]
