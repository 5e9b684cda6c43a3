"""The Pallas GPU flash-attention kernel (`pallas` backend) against the `xla` reference, run in
Pallas interpret mode on the CPU; and its lowering to Triton for a CUDA GPU.

Legend: B batch, L length, H query heads, K kv heads, Dh head dim, N number of blocks.

Tolerances: float32 inputs (interpret mode computes in float32 like the reference) agree to
2e-5; bfloat16 inputs agree with the float32 reference on the same rounded inputs to 1% of the
largest magnitude, which is what `xla` itself achieves in bfloat16 (measured: 0.2-0.5%).
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax import export

from dlmjax.kernels import blocks, pallas_gpu
from dlmjax.model import attention
from fakes import assert_within, xla_output_and_grads as reference

# Blocks of 16 make a length of 45 span 3 blocks (padded to 48): the loops, the block skipping
# and the padding inside the backend are all exercised at interpret-mode cost.
SMALL = blocks.BlockSizes(q=16, kv=16, bwd=16)


def pallas(q, k, v, seg, **kw):
  return pallas_gpu.attend(q, k, v, seg, block_sizes=SMALL, interpret=True, **kw)


@pytest.mark.parametrize('causal', [True, False])
def test_pallas_matches_xla_forward_and_gradients_on_packed_gqa_rows_float32(causal):
  q, k, v, seg, w = attention.check_rows(head_dim=16, groups=2, dtype=jnp.float32, length=45)
  got = attention.output_and_grads(pallas, q, k, v, seg, w, causal)
  for g, r in zip(got, reference(q, k, v, seg, w, causal)):
    np.testing.assert_allclose(g, r, atol=2e-5, rtol=2e-5)
  # Padding queries give exactly 0 and pass no gradient back.
  out, dq = got[0], got[1]
  pad = np.asarray(seg) == 0
  assert pad.any() and np.all(out[pad] == 0) and np.all(dq[pad] == 0)


def test_pallas_matches_xla_in_bfloat16_with_three_query_heads_per_kv_head():
  q, k, v, seg, w = attention.check_rows(head_dim=24, groups=3, dtype=jnp.bfloat16, length=45,
                                         kv_heads=1)
  got = attention.output_and_grads(pallas, q, k, v, seg, w, causal=True)
  assert_within(got, reference(q, k, v, seg, w, causal=True), 1e-2)


def brute_force_overlap(seg, bq, bk, causal):
  """bool BxNqxNk by definition: some query of block i may attend to some key of block j."""
  b, length = seg.shape
  pairs_BxLxL = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] != 0)
  if causal:
    pairs_BxLxL &= np.tri(length, dtype=bool)
  return pairs_BxLxL.reshape(b, length // bq, bq, length // bk, bk).any(axis=(2, 4))


@pytest.mark.parametrize('causal', [True, False])
def test_block_ranges_cover_every_block_pair_that_can_interact(causal):
  seg = np.array([[1] * 20 + [2] * 30 + [3] * 6 + [0] * 8,
                  [0] * 64,
                  [5] * 64], np.int32)
  ov = np.asarray(blocks.block_overlap(jnp.asarray(seg), 16, 8, causal))
  need = brute_force_overlap(seg, 16, 8, causal)
  assert np.all(ov[need])  # never skips a needed block
  lo, hi = (np.asarray(x) for x in blocks.hull(jnp.asarray(ov)))
  for r, i in np.ndindex(lo.shape):
    needed = np.flatnonzero(need[r, i])
    if needed.size:
      assert lo[r, i] <= needed.min() and needed.max() < hi[r, i]
    else:
      assert lo[r, i] == hi[r, i] == 0
  # With increasing segment ids the range is exact: row 0, query block 3 (positions 48-63:
  # documents 2, 3 and padding) needs key blocks 2-6 bidirectionally, 2-7 never.
  assert (lo[0, 3], hi[0, 3]) == (2, 7)


@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float32])
def test_pallas_kernels_lower_to_triton_for_cuda(dtype):
  """Forward and backward lower to Triton custom calls for a CUDA GPU (no GPU needed to
  lower; compiling the Triton IR to PTX happens on the GPU)."""
  q = jax.ShapeDtypeStruct((2, 300, 8, 64), dtype)
  k = jax.ShapeDtypeStruct((2, 300, 2, 64), dtype)
  seg = jax.ShapeDtypeStruct((2, 300), jnp.int32)

  def loss(q, k, v, seg):
    return pallas_gpu.attend(q, k, v, seg, causal=True, interpret=False).astype(
        jnp.float32).sum()

  exported = export.export(
      jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=['cuda'],
      disabled_checks=[export.DisabledSafetyCheck.custom_call('__gpu$xla.gpu.triton')])(
          q, k, k, seg)
  assert exported.mlir_module().count('__gpu$xla.gpu.triton') == 2  # forward, backward


@pytest.mark.slow
@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('length,head_dim,groups,kv_heads', [(13, 8, 1, 2), (100, 64, 4, 2),
                                                            (70, 40, 3, 2)])
def test_pallas_matches_xla_sweep(causal, dtype, length, head_dim, groups, kv_heads):
  q, k, v, seg, w = attention.check_rows(head_dim, groups, dtype, length=length,
                                         kv_heads=kv_heads, seed=length)
  got = attention.output_and_grads(
      lambda *a, **kw: pallas_gpu.attend(*a, interpret=True, **kw), q, k, v, seg, w, causal)
  want = reference(q, k, v, seg, w, causal)
  if dtype == jnp.float32:
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, atol=2e-5, rtol=2e-5)
  else:
    assert_within(got, want, 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('dtype,tol', [(jnp.bfloat16, 1e-2), (jnp.float32, 5e-3)])
def test_pallas_compiled_on_gpu_matches_xla(causal, dtype, tol):
  """On a GPU (float32 matmuls in TF32, hence 5e-3), at a length of several blocks."""
  q, k, v, seg, w = attention.check_rows(64, 4, dtype, length=1000, kv_heads=2)
  got = attention.output_and_grads(pallas_gpu.attend, q, k, v, seg, w, causal)
  assert_within(got, reference(q, k, v, seg, w, causal), tol)
