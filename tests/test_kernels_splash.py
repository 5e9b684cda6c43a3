"""Splash attention (`splash` backend) against the `xla` reference in TPU interpret mode on the
CPU, alone and inside `jax.shard_map` on a mesh of forced host devices; and its lowering to
Mosaic for a TPU.

Legend: B batch, L length, H query heads, K kv heads, Dh head dim.

Tolerances: float32 agrees to 2e-5 (interpret mode computes in float32 like the reference);
bfloat16 agrees with the float32 reference on the same rounded inputs to 1% of the largest
magnitude, as `xla` itself does in bfloat16.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from jax import export

from dlmjax.kernels import splash_tpu
from dlmjax.model import attention
from fakes import assert_within, xla_output_and_grads as reference


def splash(q, k, v, seg, **kw):
  # Blocks of 128: a length of 200 pads to 256 and spans 2 blocks.
  return splash_tpu.attend(q, k, v, seg, max_block=128, interpret=True, **kw)


# Causal float32 is in the slow set: the bfloat16 test below covers causal in `make test`.
@pytest.mark.parametrize('causal', [pytest.param(True, marks=pytest.mark.slow), False])
def test_splash_matches_xla_forward_and_gradients_on_packed_gqa_rows_float32(causal):
  q, k, v, seg, w = attention.check_rows(head_dim=16, groups=2, dtype=jnp.float32, length=200)
  got = attention.output_and_grads(splash, q, k, v, seg, w, causal)
  for g, r in zip(got, reference(q, k, v, seg, w, causal)):
    np.testing.assert_allclose(g, r, atol=2e-5, rtol=2e-5)
  pad = np.asarray(seg) == 0
  assert pad.any() and np.all(got[0][pad] == 0) and np.all(got[1][pad] == 0)
  # The kernel (cached per shape) is reused by another traced function without leaking.
  out = jax.jit(lambda q, k, v: splash(q, k, v, seg, causal=causal))(q, k, v)
  np.testing.assert_allclose(np.asarray(out), got[0], atol=2e-5, rtol=2e-5)


def test_splash_matches_xla_in_bfloat16():
  q, k, v, seg, w = attention.check_rows(head_dim=32, groups=3, dtype=jnp.bfloat16, length=130,
                                         kv_heads=1)
  got = attention.output_and_grads(splash, q, k, v, seg, w, causal=True)
  assert_within(got, reference(q, k, v, seg, w, causal=True), 1e-2)


# Runs in a subprocess (the device count is fixed when jax starts). The splash kernel itself
# is replaced by the reference, row by row: TPU interpret mode can hang with several simulated
# devices, and what is tested here is the wrapper: shard_map specs from the logical rules, the
# rows and heads each device gets, and the vmap over a shard's rows.
_SHARDED = r'''
import json, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update('jax_num_cpu_devices', 4)
from dlmjax import config, sharding
from dlmjax.kernels import splash_tpu
from dlmjax.model import attention
kv_heads, groups, dh = int(sys.argv[1]), int(sys.argv[2]), 16

local_heads = []

def reference_kernel(heads, lp, block, causal, interpret):
  def kernel(q_HxLxDh, k_KxLxDh, v_KxLxDh, seg):
    local_heads.append(q_HxLxDh.shape[0])
    o = attention._attend_xla(*(x.transpose(1, 0, 2)[None] for x in (q_HxLxDh * dh ** 0.5,
                              k_KxLxDh, v_KxLxDh)), seg.q[None], causal=causal,
                              dropout_rate=0.0, dropout_rng=None)
    return o[0].transpose(1, 0, 2)
  return kernel

splash_tpu._kernel = reference_kernel
q, k, v, seg, w = attention.check_rows(dh, groups, jnp.float32, length=40, kv_heads=kv_heads)
fn = lambda *a, **kw: splash_tpu.attend(*a, interpret=False, **kw)
with jax.set_mesh(sharding.make_mesh(config.MeshConfig(data=2, tensor=2))):
  got = attention.output_and_grads(fn, q, k, v, seg, w, causal=False)
  jaxpr = str(jax.make_jaxpr(lambda q, k, v: fn(q, k, v, seg, causal=True))(q, k, v))
want = attention.output_and_grads(attention._attend_xla, q, k, v, seg, w, causal=False)
print(json.dumps({'err': max(float(np.abs(a - b).max()) for a, b in zip(got, want)),
                  'shard_map': 'shard_map' in jaxpr, 'local_heads': local_heads[-1]}))
'''


@pytest.mark.parametrize('kv_heads,groups,local_heads', [(2, 2, 2), (1, 4, 4)])
def test_splash_under_a_mesh_runs_in_shard_map_over_rows_and_heads(kv_heads, groups,
                                                                   local_heads):
  """4 host devices, data=2 x tensor=2: rows split over 'data'; heads over 'tensor' where the
  kv heads split too (K=2), otherwise (K=1) only the rows."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  res = subprocess.run([sys.executable, '-c', _SHARDED, str(kv_heads), str(groups)], env=env,
                       capture_output=True, text=True, check=True, timeout=300)
  out = json.loads(res.stdout.strip().splitlines()[-1])
  assert out['shard_map'] and out['err'] < 2e-5
  assert out['local_heads'] == local_heads  # of 4 query heads


def test_splash_lowers_to_mosaic_for_tpu():
  q = jax.ShapeDtypeStruct((2, 1000, 8, 128), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((2, 1000, 2, 128), jnp.bfloat16)
  seg = jax.ShapeDtypeStruct((2, 1000), jnp.int32)

  def loss(q, k, v, seg):
    return splash_tpu.attend(q, k, v, seg, causal=True, interpret=False).astype(
        jnp.float32).sum()

  exported = export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=['tpu'])(
      q, k, k, seg)
  assert exported.mlir_module().count('tpu_custom_call') >= 2  # forward, fused backward


@pytest.mark.slow
@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('length,head_dim,groups,kv_heads', [(13, 8, 1, 2), (300, 64, 4, 2)])
def test_splash_matches_xla_sweep(causal, length, head_dim, groups, kv_heads):
  q, k, v, seg, w = attention.check_rows(head_dim, groups, jnp.float32, length=length,
                                         kv_heads=kv_heads, seed=length)
  got = attention.output_and_grads(splash, q, k, v, seg, w, causal)
  for g, r in zip(got, reference(q, k, v, seg, w, causal)):
    np.testing.assert_allclose(g, r, atol=2e-5, rtol=2e-5)


@pytest.mark.tpu
@pytest.mark.parametrize('causal', [True, False])
def test_splash_compiled_on_tpu_matches_xla(causal):
  q, k, v, seg, w = attention.check_rows(128, 4, jnp.bfloat16, length=1000, kv_heads=2)
  got = attention.output_and_grads(splash_tpu.attend, q, k, v, seg, w, causal)
  assert_within(got, reference(q, k, v, seg, w, causal), 1e-2)
