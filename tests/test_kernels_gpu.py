"""The GPU-only backends (`cudnn`, `triton`) against the `xla` reference, and the Triton
kernels compiled for a CUDA target wherever triton is installed.

Legend: B batch, L length, H query heads, K kv heads, Dh head dim.

On a GPU (marked `gpu`): packed rows with padding, 3 documents per row, grouped-query heads, a
length off the blocks, forward and gradients, causal and bidirectional, in bfloat16 to 1% of
the largest magnitude of the float32 reference on the same rounded inputs (what `xla` itself
achieves in bfloat16). The cuDNN test is the check that segment ids are really honoured: a
cuDNN path that dropped them would attend across documents and miss by O(1).
"""

import pytest

import jax.numpy as jnp

from dlmjax.model import attention
from fakes import assert_within, xla_output_and_grads as reference


@pytest.mark.gpu
@pytest.mark.parametrize('backend', ['cudnn', 'triton', 'pallas'])
@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('head_dim,groups', [(64, 4), (128, 1)])
def test_gpu_backend_matches_xla_on_packed_rows_bfloat16(backend, causal, head_dim, groups):
  q, k, v, seg, w = attention.check_rows(head_dim, groups, jnp.bfloat16, length=1000)
  fn = attention._IMPLS[backend].load()
  got = attention.output_and_grads(fn, q, k, v, seg, w, causal)
  assert_within(got, reference(q, k, v, seg, w, causal), 1e-2)  # output, dq, dk, dv


@pytest.mark.gpu
def test_auto_on_gpu_chooses_a_kernel_that_passed_its_check():
  chosen = attention.choose(jnp.bfloat16, 64, 4)
  assert chosen != 'xla' and attention.check(chosen, 'bfloat16', 64, 4) is None


@pytest.mark.parametrize('dtype', ['bf16', 'fp32'])
@pytest.mark.parametrize('causal', [True, False])
def test_triton_kernels_compile_for_sm90(dtype, causal):
  """Forward and backward compile to a cubin for an H100 (sm_90) without a GPU; skipped where
  triton is not installed (the `[gpu]` extra)."""
  triton = pytest.importorskip('triton')
  from triton.backends.compiler import GPUTarget
  from triton.compiler import ASTSource

  from dlmjax.kernels import triton_kernels

  def compile_(fn, pointers, constants):
    signature = {n: 'constexpr' if n in constants else pointers[n] for n in fn.arg_names}
    return triton.compile(ASTSource(fn, signature, constants), target=GPUTarget('cuda', 90, 32),
                          options=dict(num_warps=4, num_stages=2))

  dims = dict(CAUSAL=causal, L=256, H=8, K=2, D=64)
  fwd = compile_(triton_kernels.flash_fwd,
                 dict(lo_ptr='*i32', hi_ptr='*i32', seg_ptr='*i32', q_ptr=f'*{dtype}',
                      k_ptr=f'*{dtype}', v_ptr=f'*{dtype}', o_ptr=f'*{dtype}', lse_ptr='*fp32'),
                 dict(SCALE=0.18, BQ=128, BK=64, **dims))
  pointers = {n: '*i32' for n in ('qlo_ptr', 'qhi_ptr', 'klo_ptr', 'khi_ptr', 'seg_ptr')}
  pointers.update({n: f'*{dtype}' for n in ('q_ptr', 'k_ptr', 'v_ptr', 'do_ptr', 'dq_ptr',
                                            'dk_ptr', 'dv_ptr')})
  pointers.update(lse_ptr='*fp32', delta_ptr='*fp32')
  bwd = compile_(triton_kernels.flash_bwd, pointers,
                 dict(SCALE=0.18, DS_SCALE=0.125, BB=64, **dims))
  assert 'cubin' in fwd.asm and 'cubin' in bwd.asm
