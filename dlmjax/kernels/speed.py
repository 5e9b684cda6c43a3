"""Attention speed: the attention section of `python -m dlmjax.bench`.

    res = bench_attention(AttentionShapes.for_platform('gpu'))
    res['best_over_xla']  # xla's time over the fastest other backend's, L=4096 bidirectional

Legend: B batch, L length, H query heads, K key/value heads, Dh head dim.

Every attention backend that runs on this machine's platform (kernels that would only run in
interpret mode on a CPU are left out) is timed on the same inputs: a jitted forward + backward
(value and gradients of sum(out * w) with respect to q, k, v), median over repeats after a
compile and a warm-up, for each length, causal and bidirectional, one document per row
("unpacked") and rows packed with documents of random lengths ("packed", mean L / 4, as the
pipeline packs them). TFLOP/s count the dense attention FLOPs (4 B H L^2 Dh forward, 2.5x that
backward, halved when causal) whatever a kernel skips, so they compare backends directly.
tokamax (MaxText's GPU attention library) is timed too where it is installed, as `tokamax`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dlmjax.model import attention

# The bench's headline ratio, and the length and mode it is taken at (issue 7's target).
RATIO_KEY = 'attention_best_over_xla_L4096_bidir'
RATIO_LENGTH = 4096


@dataclasses.dataclass(frozen=True)
class AttentionShapes:
  """What the attention section measures; `tokens` per call sets B = tokens // L."""

  lengths: tuple[int, ...]
  tokens: int
  heads: int
  kv_heads: int
  head_dim: int
  dtype: str
  repeats: int = 5

  @classmethod
  def for_platform(cls, platform: str) -> 'AttentionShapes':
    if platform == 'cpu':
      # Small enough that the section takes ~10-20 s on 2 cores.
      return cls(lengths=(256, 512), tokens=1024, heads=4, kv_heads=2, head_dim=32,
                 dtype='float32', repeats=3)
    # The 1B preset's attention (32 query heads, 8 kv heads, head dim 64) in bfloat16, with
    # 16K tokens per call: 8 rows of 2048 or 4 rows of 4096.
    return cls(lengths=(2048, 4096), tokens=16384, heads=32, kv_heads=8, head_dim=64,
               dtype='bfloat16')


def available_backends(platform: str) -> list[str]:
  """'xla' and every registered backend compiled for `platform` (none on a CPU)."""
  names = ['xla']
  if platform != 'cpu':
    names += [n for n in attention.BACKENDS
              if n not in ('auto', 'xla') and platform in attention._IMPLS[n].platforms]
  return names


def packed_segments(rng: np.random.Generator, b: int, length: int) -> np.ndarray:
  """int32 BxL: documents of exponentially distributed lengths (mean L / 4) filling each row."""
  seg = np.zeros((b, length), np.int32)
  for r in range(b):
    pos, doc = 0, 1
    while pos < length:
      n = max(1, int(rng.exponential(length / 4)))
      seg[r, pos:pos + n] = doc
      pos, doc = pos + n, doc + 1
  return seg


def attention_flops(b: int, length: int, heads: int, head_dim: int, causal: bool) -> float:
  """Dense forward + backward FLOPs: QK^T and PV are 2 B H L^2 Dh each forward, and the
  backward does 2.5x the forward's matmul work (FlashAttention-2's convention)."""
  fwd = 4.0 * b * heads * length * length * head_dim
  return 3.5 * fwd * (0.5 if causal else 1.0)


def _tokamax(q, k, v, segment_ids, *, causal, dropout_rate=0.0, dropout_rng=None):
  import tokamax  # optional; only where installed
  del dropout_rate, dropout_rng
  mask = attention.segment_mask(segment_ids, causal=False)[:, None]
  out = tokamax.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
  return jnp.where((segment_ids != 0)[:, :, None, None], out, jnp.zeros((), out.dtype))


def _time_one(fn, q, k, v, seg, w, causal: bool, repeats: int) -> float:
  def loss(q, k, v):
    return (fn(q, k, v, seg, causal=causal, dropout_rate=0.0, dropout_rng=None).astype(
        jnp.float32) * w).sum()

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  jax.block_until_ready(step(q, k, v))  # compile
  jax.block_until_ready(step(q, k, v))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(step(q, k, v))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_attention(shapes: AttentionShapes, backends: list[str] | None = None) -> dict:
  """{'shapes', 'backends', 'results': [{backend, L, B, causal, packed, ms, tflops | error}],
  RATIO_KEY and its packed twin (None where not measured)}."""
  platform = jax.default_backend()
  backends = list(backends or available_backends(platform))
  fns = {n: attention._IMPLS[n].load if n in attention._IMPLS else None for n in backends}
  tokamax_version = None
  if platform == 'gpu' and 'tokamax' not in backends:
    try:
      import tokamax
      tokamax_version = getattr(tokamax, '__version__', 'unknown')
      backends.append('tokamax')
    except ImportError:
      pass
  rng = np.random.default_rng(0)
  dtype = jnp.dtype(shapes.dtype)
  results = []
  for length in shapes.lengths:
    b = max(1, shapes.tokens // length)
    q, k, v, w = (jnp.asarray(rng.normal(size=(b, length, n, shapes.head_dim)), dtype)
                  for n in (shapes.heads, shapes.kv_heads, shapes.kv_heads, shapes.heads))
    w = w.astype(jnp.float32)
    segments = {False: jnp.ones((b, length), jnp.int32),
                True: jnp.asarray(packed_segments(rng, b, length))}
    for causal in (True, False):
      for packed in (False, True):
        for name in backends:
          row = {'backend': name, 'L': length, 'B': b, 'causal': causal, 'packed': packed}
          try:
            fn = _tokamax if name == 'tokamax' else fns[name]()
            s = _time_one(fn, q, k, v, segments[packed], w, causal, shapes.repeats)
            flops = attention_flops(b, length, shapes.heads, shapes.head_dim, causal)
            row.update(ms=s * 1e3, tflops=flops / s / 1e12)
          except Exception as e:  # a backend that fails here (memory, unsupported) is reported
            row['error'] = f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:160]}'
          results.append(row)
  out = {'shapes': dataclasses.asdict(shapes), 'backends': backends, 'results': results,
         'tokamax_version': tokamax_version}
  for packed, key in ((False, RATIO_KEY), (True, RATIO_KEY + '_packed')):
    out[key] = best_over_xla(results, RATIO_LENGTH, causal=False, packed=packed)
  return out


def best_over_xla(results: list[dict], length: int, *, causal: bool, packed: bool) -> float | None:
  """xla's time over the fastest other backend's at (length, causal, packed); None if either
  is missing (not measured, or failed)."""
  times = {r['backend']: r['ms'] for r in results
           if r['L'] == length and r['causal'] == causal and r['packed'] == packed and 'ms' in r}
  others = [t for name, t in times.items() if name != 'xla']
  if 'xla' not in times or not others:
    return None
  return times['xla'] / min(others)


def format_table(res: dict) -> str:
  """The results as a markdown table (one row per backend and case)."""
  lines = ['| backend | L | B | mask | packed | fwd+bwd ms | TFLOP/s |',
           '|---|---|---|---|---|---|---|']
  for r in res['results']:
    mask = 'causal' if r['causal'] else 'bidir'
    timing = (f'{r["ms"]:.3g} | {r["tflops"]:.3g}' if 'ms' in r else f'{r["error"]} | ')
    lines.append(f'| {r["backend"]} | {r["L"]} | {r["B"]} | {mask} | '
                 f'{"yes" if r["packed"] else "no"} | {timing} |')
  return '\n'.join(lines)
