"""The Triton flash-attention kernels of the `triton` backend (`triton_gpu.py` calls them).

Legend: L padded length, H query heads, K key/value heads, D padded head dim, BQ / BK / BB the
forward query, forward key and backward block sizes; arrays are BxLxNxD in memory (N = H or
K heads), lse and delta BxHxL in float32, scores in base 2 (SCALE = log2(e) / sqrt(Dh)).

The same algorithm as `pallas_gpu.py`: FlashAttention-2 forward, a fused dk/dv + dq backward
per key block, a query sees keys of its own segment only (padding queries give 0), each
program loops over the block range that `blocks.hull` gives, and grouped-query heads read
their kv head without repeating it. Only triton is imported here, so the kernels can be
compiled for a GPU target on a machine without one (tests/test_kernels_triton.py).
"""

import triton
import triton.language as tl


@triton.jit
def _scores(q, k_t, seg_q, seg_k, offs_q, offs_k, SCALE: tl.constexpr, CAUSAL: tl.constexpr):
  """Masked base-2 scores of a query tile (Bq x D) against a transposed key tile (D x Bk)."""
  mask = seg_q[:, None] == seg_k[None, :]
  if CAUSAL:
    mask = mask & (offs_q[:, None] >= offs_k[None, :])
  return tl.where(mask, tl.dot(q, k_t) * SCALE, -1.0e30)


@triton.jit
def _probs_and_ds(q, k, v, do, seg_q, seg_k, offs_q, offs_k, lse, delta, SCALE: tl.constexpr,
                  CAUSAL: tl.constexpr):
  """Backward tile (Bb x Bb): probabilities p and score gradients ds = p (dO V^T - delta)."""
  s = _scores(q, tl.trans(k), seg_q, seg_k, offs_q, offs_k, SCALE, CAUSAL)
  p = tl.exp2(s - lse[:, None])
  dp = tl.dot(do, tl.trans(v))
  return p, p * (dp - delta[:, None])


@triton.jit
def flash_fwd(lo_ptr, hi_ptr, seg_ptr, q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                SCALE: tl.constexpr, CAUSAL: tl.constexpr, L: tl.constexpr, H: tl.constexpr,
                K: tl.constexpr, D: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr):
  """Grid (Lp / Bq, H, B): one query block of one head; arrays BxLpxNxDp, lse BxHxLp base 2."""
  i = tl.program_id(0)
  h = tl.program_id(1)
  r = tl.program_id(2).to(tl.int64)
  kv = h // (H // K)
  nq: tl.constexpr = L // BQ
  offs_q = i * BQ + tl.arange(0, BQ)
  offs_d = tl.arange(0, D)
  q = tl.load(q_ptr + ((r * L + offs_q[:, None]) * H + h) * D + offs_d[None, :])
  seg_q = tl.load(seg_ptr + r * L + offs_q)
  lo = tl.load(lo_ptr + r * nq + i)
  hi = tl.load(hi_ptr + r * nq + i)
  m = tl.full([BQ], float('-inf'), tl.float32)
  l = tl.zeros([BQ], tl.float32)
  acc = tl.zeros([BQ, D], tl.float32)
  for j in range(lo, hi):
    offs_k = j * BK + tl.arange(0, BK)
    k_t = tl.load(k_ptr + ((r * L + offs_k[None, :]) * K + kv) * D + offs_d[:, None])  # D x Bk
    seg_k = tl.load(seg_ptr + r * L + offs_k)
    s = _scores(q, k_t, seg_q, seg_k, offs_q, offs_k, SCALE, CAUSAL)
    m_new = tl.maximum(m, tl.max(s, 1))
    correction = tl.exp2(m - m_new)
    p = tl.exp2(s - m_new[:, None])
    l = l * correction + tl.sum(p, 1)
    v = tl.load(v_ptr + ((r * L + offs_k[:, None]) * K + kv) * D + offs_d[None, :])
    acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v)
    m = m_new
  seen = l > 0
  l_safe = tl.where(seen, l, 1.0)
  o = acc / l_safe[:, None]
  o = tl.where((seen & (seg_q != 0))[:, None], o, 0.0)
  tl.store(o_ptr + ((r * L + offs_q[:, None]) * H + h) * D + offs_d[None, :],
           o.to(o_ptr.dtype.element_ty))
  tl.store(lse_ptr + (r * H + h) * L + offs_q, tl.where(seen, m + tl.log2(l_safe), 0.0))


@triton.jit
def flash_bwd(qlo_ptr, qhi_ptr, klo_ptr, khi_ptr, seg_ptr, q_ptr, k_ptr, v_ptr, do_ptr,
                lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
                SCALE: tl.constexpr, DS_SCALE: tl.constexpr, CAUSAL: tl.constexpr,
                L: tl.constexpr, H: tl.constexpr, K: tl.constexpr, D: tl.constexpr,
                BB: tl.constexpr):
  """Grid (Lp / Bb, K, B): dk, dv of key block j summed over the G query heads of kv head n,
  then dq of query block j for each of them."""
  j = tl.program_id(0)
  n = tl.program_id(1)
  r = tl.program_id(2).to(tl.int64)
  groups: tl.constexpr = H // K
  nb: tl.constexpr = L // BB
  offs_d = tl.arange(0, D)
  offs_b = tl.arange(0, BB)

  # dk, dv of key block j.
  offs_k = j * BB + offs_b
  kv_rows = ((r * L + offs_k[:, None]) * K + n) * D + offs_d[None, :]
  k = tl.load(k_ptr + kv_rows)
  v = tl.load(v_ptr + kv_rows)
  seg_k = tl.load(seg_ptr + r * L + offs_k)
  dk = tl.zeros([BB, D], tl.float32)
  dv = tl.zeros([BB, D], tl.float32)
  q_lo = tl.load(qlo_ptr + r * nb + j)
  q_hi = tl.load(qhi_ptr + r * nb + j)
  for g in range(groups):
    h = n * groups + g
    for i in range(q_lo, q_hi):
      offs_q = i * BB + offs_b
      q_rows = ((r * L + offs_q[:, None]) * H + h) * D + offs_d[None, :]
      q = tl.load(q_ptr + q_rows)
      do = tl.load(do_ptr + q_rows)
      seg_q = tl.load(seg_ptr + r * L + offs_q)
      lse = tl.load(lse_ptr + (r * H + h) * L + offs_q)
      delta = tl.load(delta_ptr + (r * H + h) * L + offs_q)
      p, ds = _probs_and_ds(q, k, v, do, seg_q, seg_k, offs_q, offs_k, lse, delta, SCALE,
                            CAUSAL)
      dv += tl.dot(tl.trans(p.to(do.dtype)), do)
      dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
  tl.store(dk_ptr + kv_rows, (dk * DS_SCALE).to(dk_ptr.dtype.element_ty))
  tl.store(dv_ptr + kv_rows, dv.to(dv_ptr.dtype.element_ty))

  # dq of query block j, head by head.
  offs_q = j * BB + offs_b
  seg_q = tl.load(seg_ptr + r * L + offs_q)
  k_lo = tl.load(klo_ptr + r * nb + j)
  k_hi = tl.load(khi_ptr + r * nb + j)
  for g in range(groups):
    h = n * groups + g
    q_rows = ((r * L + offs_q[:, None]) * H + h) * D + offs_d[None, :]
    q = tl.load(q_ptr + q_rows)
    do = tl.load(do_ptr + q_rows)
    lse = tl.load(lse_ptr + (r * H + h) * L + offs_q)
    delta = tl.load(delta_ptr + (r * H + h) * L + offs_q)
    dq = tl.zeros([BB, D], tl.float32)
    for jj in range(k_lo, k_hi):
      offs_kk = jj * BB + offs_b
      rows = ((r * L + offs_kk[:, None]) * K + n) * D + offs_d[None, :]
      kk = tl.load(k_ptr + rows)
      vv = tl.load(v_ptr + rows)
      seg_kk = tl.load(seg_ptr + r * L + offs_kk)
      _, ds = _probs_and_ds(q, kk, vv, do, seg_q, seg_kk, offs_q, offs_kk, lse, delta, SCALE,
                            CAUSAL)
      dq += tl.dot(ds.to(kk.dtype), kk)
    tl.store(dq_ptr + q_rows, (dq * DS_SCALE).to(dq_ptr.dtype.element_ty))
