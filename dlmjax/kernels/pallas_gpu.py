"""Flash attention for GPUs in Pallas (Triton lowering): the `pallas` attention backend.

    out_BxLxHxDh = attend(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL, causal=False)

Legend: B batch, L length, Lp L padded to a multiple of the blocks, H query heads, K key/value
heads, G = H // K, Dh head dim, Dp Dh padded to a power of two >= 16 (Triton's matmul minimum),
Bq / Bk / Bb the forward query, forward key and backward block sizes.

Written from the FlashAttention-2 algorithm and the structure of
`jax.experimental.pallas.ops.gpu.attention` (forward: one program per query block and head,
online softmax in base 2; backward: one program per key block that also computes dq of the
query block with the same index), with what this project needs on top:
* packed rows: a query sees a key of its own segment only, and padding queries (segment 0)
  give 0 with zero gradients, as in the `xla` reference;
* block skipping from the segment ids: for each query block only the key blocks whose segment
  range overlaps (and, if causal, that are not wholly in the future) are visited, and the same
  for the backward. With several documents per row this skips most of the L x L square;
* grouped-query attention without repeating k/v: query head h reads kv head h // G in the
  forward, and a backward program owns one kv head and sums dk, dv over its G query heads;
* any length and head dim: the wrapper pads (segment 0, zeros) and slices the result.
On a CPU the kernels run in Pallas interpret mode (slow; for tests).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from dlmjax.kernels import blocks

# A finite "minus infinity": a fully masked tile then gives exp2(0) = 1 instead of NaN, and
# the online softmax's correction factor exp2(MASK - real max) = 0 erases it later.
_MASK = -0.7 * float(jnp.finfo(jnp.float32).max)
_LOG2E = math.log2(math.e)


@dataclasses.dataclass(frozen=True)
class _Call:
  """Static arguments of one kernel call (hashable: jit and custom_vjp key on it)."""

  causal: bool
  scale: float  # log2(e) / sqrt(Dh): scores are kept in base 2
  sizes: blocks.BlockSizes
  interpret: bool


def attend(q_BxLxHxDh: jax.Array, k_BxLxKxDh: jax.Array, v_BxLxKxDh: jax.Array,
           segment_ids_BxL: jax.Array, *, causal: bool, dropout_rate: float = 0.0,
           dropout_rng: jax.Array | None = None, block_sizes: blocks.BlockSizes | None = None,
           interpret: bool | None = None) -> jax.Array:
  """Softmax attention within segments, BxLxHxDh in q's dtype (see `dlmjax.model.attention`).

  `interpret=None` runs the kernels in Pallas interpret mode on a CPU and compiled elsewhere.
  """
  if dropout_rate > 0.0 and dropout_rng is not None:
    raise NotImplementedError('the pallas attention backend has no attention dropout; '
                              'use model.attention=xla')
  _, length, _, dh = q_BxLxHxDh.shape
  sizes = (block_sizes or blocks.BlockSizes()).fit(length)
  if interpret is None:
    interpret = jax.default_backend() == 'cpu'
  call = _Call(causal=causal, scale=_LOG2E / math.sqrt(dh), sizes=sizes, interpret=interpret)
  return blocks.attend_padded(_flash, call, sizes, q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh,
                              segment_ids_BxL)


def _tile_mask(seg_q_Bq, seg_k_Bk, q_start, k_start, causal: bool) -> jax.Array:
  """bool BqxBk: same segment and, if causal, key not after query."""
  mask = seg_q_Bq[:, None] == seg_k_Bk[None, :]
  if causal:
    qpos = q_start + jnp.arange(seg_q_Bq.shape[0])
    kpos = k_start + jnp.arange(seg_k_Bk.shape[0])
    mask &= qpos[:, None] >= kpos[None, :]
  return mask


# ---------------------------------------------------------------------------------------------
# Forward: grid (Nq, B, H); one program = one query block of one head, looping over key blocks.

def _fwd_kernel(lo_ref, hi_ref, seg_q_ref, seg_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *,
                call: _Call):
  bq, bk = call.sizes.q, call.sizes.kv
  i = pl.program_id(0)
  q_BqxDp = q_ref[...]
  seg_q_Bq = seg_q_ref[...]

  def body(j, carry):
    acc_BqxDp, m_Bq, l_Bq = carry
    keys = pl.ds(j * bk, bk)
    s_BqxBk = plgpu.dot(q_BqxDp, k_ref[keys, :], trans_b=True) * call.scale
    mask = _tile_mask(seg_q_Bq, seg_ref[keys], i * bq, j * bk, call.causal)
    s_BqxBk = jnp.where(mask, s_BqxBk, _MASK)
    m_new_Bq = jnp.maximum(m_Bq, s_BqxBk.max(-1))
    correction_Bq = jnp.exp2(m_Bq - m_new_Bq)
    p_BqxBk = jnp.exp2(s_BqxBk - m_new_Bq[:, None])
    l_Bq = l_Bq * correction_Bq + p_BqxBk.sum(-1)
    v_BkxDp = v_ref[keys, :]
    acc_BqxDp = (acc_BqxDp * correction_Bq[:, None]
                 + plgpu.dot(p_BqxBk.astype(v_BkxDp.dtype), v_BkxDp))
    return acc_BqxDp, m_new_Bq, l_Bq

  init = (jnp.zeros(q_BqxDp.shape, jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc_BqxDp, m_Bq, l_Bq = lax.fori_loop(lo_ref[0], hi_ref[0], body, init)
  # l = 0 only where no key block was visited (a block of padding): output 0 there.
  seen_Bq = l_Bq > 0
  o_BqxDp = acc_BqxDp / jnp.where(seen_Bq, l_Bq, 1.0)[:, None]
  o_BqxDp = jnp.where(((seg_q_Bq != 0) & seen_Bq)[:, None], o_BqxDp, 0.0)
  o_ref[...] = o_BqxDp.astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen_Bq, m_Bq + jnp.log2(jnp.where(seen_Bq, l_Bq, 1.0)), 0.0)


def _forward(q, k, v, seg, call: _Call):
  b, lp, h, dp = q.shape
  kv_heads = k.shape[2]
  g = h // kv_heads
  bq, bk = call.sizes.q, call.sizes.kv
  lo, hi = blocks.hull(blocks.block_overlap(seg, bq, bk, call.causal))
  o, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, call=call),
      grid=(lp // bq, b, h),
      in_specs=[
          pl.BlockSpec((None, 1), lambda i, r, n: (r, i)),  # lo
          pl.BlockSpec((None, 1), lambda i, r, n: (r, i)),  # hi
          pl.BlockSpec((None, bq), lambda i, r, n: (r, i)),  # query segments
          pl.BlockSpec((None, lp), lambda i, r, n: (r, 0)),  # all segments of the row
          pl.BlockSpec((None, bq, None, dp), lambda i, r, n: (r, i, n, 0)),
          pl.BlockSpec((None, lp, None, dp), lambda i, r, n: (r, 0, n // g, 0)),
          pl.BlockSpec((None, lp, None, dp), lambda i, r, n: (r, 0, n // g, 0)),
      ],
      out_specs=[
          pl.BlockSpec((None, bq, None, dp), lambda i, r, n: (r, i, n, 0)),
          pl.BlockSpec((None, None, bq), lambda i, r, n: (r, n, i)),
      ],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, lp), jnp.float32)],
      compiler_params=plgpu.CompilerParams(num_warps=call.sizes.warps(dp, backward=False),
                                           num_stages=call.sizes.stages),
      interpret=call.interpret,
      name='dlmjax_flash_fwd',
  )(lo, hi, seg, seg, q, k, v)
  return o, lse


# ---------------------------------------------------------------------------------------------
# Backward: grid (B, K, N); program j of kv head n computes dk, dv of key block j (summed over
# the G query heads of kv head n) and dq of query block j for each of those G heads.

def _bwd_kernel(qlo_ref, qhi_ref, klo_ref, khi_ref, seg_ref, q_ref, k_ref, v_ref, do_ref,
                lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, *, call: _Call, groups: int):
  bb = call.sizes.bwd
  j = pl.program_id(2)
  scale = call.scale
  # d(score in base e)/d(score in base 2) folded in at the end: ds = p (dp - delta) / log2(e).
  ds_scale = scale / _LOG2E

  def probs(q_BbxDp, k_BbxDp, lse_Bb, q_start, k_start):
    s_BbxBb = plgpu.dot(q_BbxDp, k_BbxDp, trans_b=True) * scale
    mask = _tile_mask(seg_ref[pl.ds(q_start, bb)], seg_ref[pl.ds(k_start, bb)], q_start,
                      k_start, call.causal)
    return jnp.exp2(jnp.where(mask, s_BbxBb, _MASK) - lse_Bb[:, None])

  # dk, dv of key block j.
  keys = pl.ds(j * bb, bb)
  k_BbxDp, v_BbxDp = k_ref[keys, :], v_ref[keys, :]

  def over_queries(g, i, carry):
    dk_BbxDp, dv_BbxDp = carry
    queries = pl.ds(i * bb, bb)
    q_BbxDp, do_BbxDp = q_ref[queries, g, :], do_ref[queries, g, :]
    p_BbxBb = probs(q_BbxDp, k_BbxDp, lse_ref[g, queries], i * bb, j * bb)
    dv_BbxDp += plgpu.dot(p_BbxBb.astype(do_BbxDp.dtype), do_BbxDp, trans_a=True)
    dp_BbxBb = plgpu.dot(do_BbxDp, v_BbxDp, trans_b=True)
    ds_BbxBb = p_BbxBb * (dp_BbxBb - delta_ref[g, queries][:, None])
    dk_BbxDp += plgpu.dot(ds_BbxBb.astype(q_BbxDp.dtype), q_BbxDp, trans_a=True)
    return dk_BbxDp, dv_BbxDp

  def over_groups(g, carry):
    return lax.fori_loop(qlo_ref[0], qhi_ref[0], functools.partial(over_queries, g), carry)

  zeros = jnp.zeros(k_BbxDp.shape, jnp.float32)
  dk_BbxDp, dv_BbxDp = lax.fori_loop(0, groups, over_groups, (zeros, zeros))
  dk_ref[...] = (dk_BbxDp * ds_scale).astype(dk_ref.dtype)
  dv_ref[...] = dv_BbxDp.astype(dv_ref.dtype)

  # dq of query block j, head by head.
  queries = pl.ds(j * bb, bb)

  def dq_of_group(g, carry):
    q_BbxDp, do_BbxDp = q_ref[queries, g, :], do_ref[queries, g, :]
    lse_Bb, delta_Bb = lse_ref[g, queries], delta_ref[g, queries]

    def over_keys(jj, dq_BbxDp):
      keys = pl.ds(jj * bb, bb)
      k_BbxDp = k_ref[keys, :]
      p_BbxBb = probs(q_BbxDp, k_BbxDp, lse_Bb, j * bb, jj * bb)
      dp_BbxBb = plgpu.dot(do_BbxDp, v_ref[keys, :], trans_b=True)
      ds_BbxBb = p_BbxBb * (dp_BbxBb - delta_Bb[:, None])
      return dq_BbxDp + plgpu.dot(ds_BbxBb.astype(k_BbxDp.dtype), k_BbxDp)

    dq_BbxDp = lax.fori_loop(klo_ref[0], khi_ref[0], over_keys,
                             jnp.zeros(q_BbxDp.shape, jnp.float32))
    dq_ref[:, g, :] = (dq_BbxDp * ds_scale).astype(dq_ref.dtype)
    return carry

  lax.fori_loop(0, groups, dq_of_group, 0)


def _backward(q, k, v, seg, o, lse, do, call: _Call):
  b, lp, h, dp = q.shape
  kv_heads = k.shape[2]
  g = h // kv_heads
  bb = call.sizes.bwd
  do, delta_BxHxLp = blocks.backward_inputs(seg, o, do)
  ov_BxNxN = blocks.block_overlap(seg, bb, bb, call.causal)
  klo, khi = blocks.hull(ov_BxNxN)  # key blocks for each query block (dq)
  qlo, qhi = blocks.hull(ov_BxNxN.transpose(0, 2, 1))  # query blocks for each key block (dk, dv)
  ranges = [pl.BlockSpec((None, 1), lambda r, n, j: (r, j))] * 4
  dq, dk, dv = pl.pallas_call(
      functools.partial(_bwd_kernel, call=call, groups=g),
      grid=(b, kv_heads, lp // bb),
      in_specs=ranges + [
          pl.BlockSpec((None, lp), lambda r, n, j: (r, 0)),  # segments
          pl.BlockSpec((None, lp, g, dp), lambda r, n, j: (r, 0, n, 0)),  # q of the group
          pl.BlockSpec((None, lp, None, dp), lambda r, n, j: (r, 0, n, 0)),  # k
          pl.BlockSpec((None, lp, None, dp), lambda r, n, j: (r, 0, n, 0)),  # v
          pl.BlockSpec((None, lp, g, dp), lambda r, n, j: (r, 0, n, 0)),  # do of the group
          pl.BlockSpec((None, g, lp), lambda r, n, j: (r, n, 0)),  # lse
          pl.BlockSpec((None, g, lp), lambda r, n, j: (r, n, 0)),  # delta
      ],
      out_specs=[
          pl.BlockSpec((None, bb, g, dp), lambda r, n, j: (r, j, n, 0)),  # dq
          pl.BlockSpec((None, bb, None, dp), lambda r, n, j: (r, j, n, 0)),  # dk
          pl.BlockSpec((None, bb, None, dp), lambda r, n, j: (r, j, n, 0)),  # dv
      ],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=plgpu.CompilerParams(num_warps=call.sizes.warps(dp, backward=True),
                                           num_stages=call.sizes.stages),
      interpret=call.interpret,
      name='dlmjax_flash_bwd',
  )(qlo, qhi, klo, khi, seg, q, k, v, do, lse, delta_BxHxLp)
  return dq, dk, dv


_flash = blocks.differentiable(_forward, _backward)
