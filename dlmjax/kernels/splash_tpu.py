"""Splash attention on TPU: the `splash` attention backend.

    out_BxLxHxDh = attend(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL, causal=False)

Legend: B batch (Bs: the rows of one shard), L length, Lp L padded to a multiple of the
block, H query heads, K key/value heads, Dh head dim.

`jax.experimental.pallas.ops.tpu.splash_attention` with a CausalMask or FullMask (static
block sparsity) and the segment ids (dynamic masking, SegmentIds), its kernels made for the
per-device shape and vmapped over the rows, as MaxText does. Splash takes grouped-query heads
natively (kv head h // G for query head h). Under a mesh (the abstract mesh of the trace
context) it runs inside `jax.shard_map` over the axes that `dlmjax.sharding.LOGICAL_RULES`
gives the logical names 'batch' and 'heads' / 'kv_heads' (a Mosaic kernel cannot be
partitioned by XLA); the query heads are only split where the kv heads split the same way.
Padding (segment 0) attends to padding inside splash and is zeroed here, as in the `xla`
reference. On a CPU the kernels run in TPU interpret mode (slow; for tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
from jax.sharding import PartitionSpec as P

from dlmjax import sharding

_LANES = 128  # TPU vector lane width: splash blocks are multiples of it
_MAX_BLOCK = 512  # MaxText's default splash block sizes for v4/v5 TPUs


def _block(length: int, max_block: int = _MAX_BLOCK) -> tuple[int, int]:
  """(block, padded length): blocks of up to `max_block`, a multiple of 128 that divides Lp."""
  lp = -(-length // _LANES) * _LANES
  block = min(max_block, lp)
  return block, -(-lp // block) * block


@functools.lru_cache(maxsize=64)
def _kernel(heads: int, lp: int, block: int, causal: bool, interpret: bool):
  """The splash kernel for one row of `heads` query heads (built once per shape)."""
  mask_cls = masks.CausalMask if causal else masks.FullMask
  mask = masks.MultiHeadMask([mask_cls((lp, lp)) for _ in range(heads)])
  sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                            block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                            use_fused_bwd_kernel=True)
  # The kernel holds its mask tables as arrays: made concrete here, so that a kernel cached
  # while one step was being traced is not a leaked tracer in the next.
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=pltpu.InterpretParams() if interpret else False)


def _attend_shard(q_BsxHxLpxDh, k_BsxKxLpxDh, v_BsxKxLpxDh, seg_BsxLp, *, causal, block,
                  interpret):
  _, h, lp, _ = q_BsxHxLpxDh.shape
  kernel = _kernel(h, lp, block, causal, interpret)
  rows = (q_BsxHxLpxDh, k_BsxKxLpxDh, v_BsxKxLpxDh, splash.SegmentIds(q=seg_BsxLp, kv=seg_BsxLp))
  if interpret:
    # TPU interpret mode (jax 0.10) cannot run a vmapped kernel: the extra grid axis has no
    # dimension semantics there. Row by row is the same computation.
    return jax.lax.map(lambda row: kernel(*row), rows)
  return jax.vmap(kernel)(*rows)


def _mesh_specs(mesh, q_shape, k_shape):
  """shard_map specs for head-major q, k/v and the segment ids from the logical rules."""
  q_spec = sharding.logical_to_spec(('batch', 'heads', None, None), q_shape, mesh)
  k_spec = sharding.logical_to_spec(('batch', 'kv_heads', None, None), k_shape, mesh)
  if q_spec[1] != k_spec[1]:  # a shard's query heads must map onto its own kv heads
    q_spec = P(q_spec[0], None, None, None)
    k_spec = P(k_spec[0], None, None, None)
  return q_spec, k_spec, P(q_spec[0], None)


def attend(q_BxLxHxDh: jax.Array, k_BxLxKxDh: jax.Array, v_BxLxKxDh: jax.Array,
           segment_ids_BxL: jax.Array, *, causal: bool, dropout_rate: float = 0.0,
           dropout_rng: jax.Array | None = None, max_block: int = _MAX_BLOCK,
           interpret: bool | None = None) -> jax.Array:
  """Softmax attention within segments, BxLxHxDh in q's dtype (see `dlmjax.model.attention`).

  `max_block` caps the splash block sizes (a multiple of 128). `interpret=None` runs the
  kernels in TPU interpret mode on a CPU and compiled elsewhere.
  """
  if dropout_rate > 0.0 and dropout_rng is not None:
    raise NotImplementedError('the splash attention backend has no attention dropout; '
                              'use model.attention=xla')
  if interpret is None:
    interpret = jax.default_backend() == 'cpu'
  _, length, _, dh = q_BxLxHxDh.shape
  block, lp = _block(length, max_block)

  def head_major(x_BxLxNxDh):
    return jnp.pad(x_BxLxNxDh, ((0, 0), (0, lp - length), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

  # Splash does not scale the scores.
  q_BxHxLpxDh = head_major(q_BxLxHxDh * jnp.asarray(dh ** -0.5, q_BxLxHxDh.dtype))
  k_BxKxLpxDh, v_BxKxLpxDh = head_major(k_BxLxKxDh), head_major(v_BxLxKxDh)
  seg_BxLp = jnp.pad(segment_ids_BxL.astype(jnp.int32), ((0, 0), (0, lp - length)))
  run = functools.partial(_attend_shard, causal=causal, block=block, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.size > 1:
    q_spec, k_spec, seg_spec = _mesh_specs(mesh, q_BxHxLpxDh.shape, k_BxKxLpxDh.shape)
    run = jax.shard_map(run, mesh=mesh, in_specs=(q_spec, k_spec, k_spec, seg_spec),
                        out_specs=q_spec, check_vma=False)
  o_BxHxLpxDh = run(q_BxHxLpxDh, k_BxKxLpxDh, v_BxKxLpxDh, seg_BxLp)
  o_BxLxHxDh = o_BxHxLpxDh.transpose(0, 2, 1, 3)[:, :length]
  valid_BxLx1x1 = (segment_ids_BxL != 0)[:, :, None, None]
  return jnp.where(valid_BxLx1x1, o_BxLxHxDh, jnp.zeros((), o_BxLxHxDh.dtype)).astype(
      q_BxLxHxDh.dtype)
