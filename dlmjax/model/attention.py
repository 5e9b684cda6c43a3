"""Attention over packed rows, one entry point for every backend.

    out_BxLxHxDh = attend(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL, causal=True)

Legend: B batch, L length (queries and keys: self-attention only), H query heads, K key/value
heads (H is a multiple of K: grouped-query attention, G = H // K query heads per kv head),
Dh head dim, GL = G * L (the G query heads of one kv head stacked along the query axis).

A query attends to a key when both lie in the same non-padding segment (segment id != 0) and,
if `causal`, the key's index in the row is not after the query's. Packed documents therefore
never see each other, whichever objective runs. Padding queries see nothing and give 0.

Backends are looked up by name in `_IMPLS`; `BACKENDS` (what `config.validate` accepts for
`model.attention`) is derived from it, so a kernel is added by `register`ing one function with
this signature (the table of `dlmjax/kernels/`, a leaf package, is registered when this module loads). 'xla' is
the reference: plain einsums that run everywhere. 'auto' uses, per platform, the first backend
of `AUTO_ORDER` that passes a small forward + backward comparison against 'xla' (run once per
process and input signature, logged to stderr), so it never runs a kernel that failed its
check; on a CPU it is 'xla'.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlmjax import kernels


def segment_mask(segment_ids_BxL: jax.Array, *, causal: bool) -> jax.Array:
  """bool BxLxL (query, key): may query q attend to key k."""
  seg_q_BxLx1 = segment_ids_BxL[:, :, None]
  seg_k_Bx1xL = segment_ids_BxL[:, None, :]
  mask_BxLxL = (seg_q_BxLx1 == seg_k_Bx1xL) & (seg_k_Bx1xL != 0)
  if causal:
    length = segment_ids_BxL.shape[1]
    mask_BxLxL &= jnp.tril(jnp.ones((length, length), bool))[None]
  return mask_BxLxL


def _attend_xla(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL, *, causal,
                dropout_rate, dropout_rng):
  b, length, h, dh = q_BxLxHxDh.shape
  k = k_BxLxKxDh.shape[2]
  g = h // k
  # Head-major layout, with the G query heads of a kv head stacked along the query axis: every
  # product is then a plain batched matmul over (B, K) and k/v are never repeated G times.
  # On CPU this runs attention (forward and backward) ~2.5x faster than contracting the
  # BxLxKxGxDh layout directly, where XLA transposes the LxL score tensors instead (B 32,
  # L 128, H 4, Dh 32: 22 -> 9 ms per layer).
  # Scaling q (L*H*Dh values) is cheaper than scaling the scores (L*L*H values).
  q_BxLxKxGxDh = (q_BxLxHxDh * jnp.asarray(dh ** -0.5, q_BxLxHxDh.dtype)).reshape(
      b, length, k, g, dh)
  q_BxKxGLxDh = q_BxLxKxGxDh.transpose(0, 2, 3, 1, 4).reshape(b, k, g * length, dh)
  k_BxKxLxDh = k_BxLxKxDh.transpose(0, 2, 1, 3)
  v_BxKxLxDh = v_BxLxKxDh.transpose(0, 2, 1, 3)
  s_BxKxGLxL = jnp.einsum('bkqd,bksd->bkqs', q_BxKxGLxDh, k_BxKxLxDh,
                          preferred_element_type=jnp.float32)
  mask_Bx1xGLxL = jnp.tile(segment_mask(segment_ids_BxL, causal=causal), (1, g, 1))[:, None]
  # Softmax in float32 whatever the compute dtype. A masked score is a large finite negative
  # rather than -inf, so a fully masked (padding) row stays finite; it is zeroed below.
  s_BxKxGLxL = jnp.where(mask_Bx1xGLxL, s_BxKxGLxL, jnp.finfo(jnp.float32).min)
  s_BxKxGLxL = s_BxKxGLxL - jax.lax.stop_gradient(s_BxKxGLxL.max(-1, keepdims=True))
  p_BxKxGLxL = jnp.exp(s_BxKxGLxL)
  denom_BxKxGLx1 = p_BxKxGLxL.sum(-1, keepdims=True)
  if dropout_rate > 0.0 and dropout_rng is not None:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, p_BxKxGLxL.shape)
    p_BxKxGLxL = jnp.where(keep, p_BxKxGLxL / (1.0 - dropout_rate), 0.0)
  # Normalising after the PV product divides L*H*Dh values instead of L*L*H.
  o_BxKxGLxDh = jnp.einsum('bkqs,bksd->bkqd', p_BxKxGLxL.astype(v_BxKxLxDh.dtype), v_BxKxLxDh,
                           preferred_element_type=jnp.float32) / denom_BxKxGLx1
  o_BxLxKxGxDh = o_BxKxGLxDh.reshape(b, k, g, length, dh).transpose(0, 3, 1, 2, 4)
  # A query in a segment always sees itself, so only padding queries have no key at all.
  valid_BxLx1x1x1 = (segment_ids_BxL != 0)[:, :, None, None, None]
  o_BxLxKxGxDh = jnp.where(valid_BxLx1x1x1, o_BxLxKxGxDh, 0.0)
  return o_BxLxKxGxDh.reshape(b, length, h, dh).astype(q_BxLxHxDh.dtype)


@dataclasses.dataclass(frozen=True)
class Backend:
  """An attention implementation with the signature of `_attend_xla`.

  `impl` is the function or a 'module:function' path imported on first use, so that a kernel's
  optional libraries (triton, ...) are needed only where it runs. `platforms` are the JAX
  platforms it runs on ('cpu', 'gpu', 'tpu'); `dropout` whether it does attention dropout.
  """

  name: str
  impl: Callable[..., jax.Array] | str
  platforms: tuple[str, ...]
  dropout: bool = False

  def load(self) -> Callable[..., jax.Array]:
    if callable(self.impl):
      return self.impl
    module, _, attr = self.impl.partition(':')
    return getattr(importlib.import_module(module), attr)


_IMPLS: dict[str, Backend] = {
    'xla': Backend('xla', _attend_xla, platforms=('cpu', 'gpu', 'tpu'), dropout=True)}
# What `auto` tries on each platform, first choice first; the first backend that passes its
# check against 'xla' is used, and 'xla' (the reference) ends every list.
AUTO_ORDER: dict[str, list[str]] = {'cpu': [], 'gpu': [], 'tpu': []}
BACKENDS = ('auto', 'xla')  # what config.validate accepts for model.attention


def register(name: str, impl: Callable[..., jax.Array] | str, *, platforms: tuple[str, ...],
             auto_rank: int | None = None, dropout: bool = False) -> None:
  """Adds (or replaces) a backend; with `auto_rank`, `auto` tries it at that place in the
  order of each of its platforms (0: first)."""
  global BACKENDS
  _IMPLS[name] = Backend(name, impl, tuple(platforms), dropout)
  for platform in AUTO_ORDER:
    order = [n for n in AUTO_ORDER[platform] if n != name]
    if auto_rank is not None and platform in platforms:
      order.insert(auto_rank, name)
    AUTO_ORDER[platform] = order
  BACKENDS = ('auto',) + tuple(_IMPLS)
  _choose.cache_clear()


def unregister(name: str) -> None:
  """Removes a backend registered with `register` (tests use it to clean up)."""
  global BACKENDS
  del _IMPLS[name]
  for platform in AUTO_ORDER:
    AUTO_ORDER[platform] = [n for n in AUTO_ORDER[platform] if n != name]
  BACKENDS = ('auto',) + tuple(_IMPLS)
  _choose.cache_clear()


# ---------------------------------------------------------------------------------------------
# `auto`: the first backend of the platform's order whose start-up check passes.

# Largest error of a backend against 'xla' that its check accepts, relative to the largest
# magnitude of the reference value (output or gradient): bfloat16 keeps 8 significant bits
# (~4e-3 per rounding, growing with the sums); float32 kernels may run their matmuls in TF32
# on GPUs (10 bits), as XLA's default precision does. A broken mask or scale errs by O(0.1-1).
CHECK_TOLERANCE = {'float32': 1e-2, 'bfloat16': 5e-2}


def check_rows(head_dim: int, groups: int, dtype, length: int = 200, kv_heads: int = 2,
               seed: int = 0) -> tuple[jax.Array, ...]:
  """q, k, v (in `dtype`), segment ids and a float32 output cotangent for 2 packed rows: row 0
  holds 2 documents and trailing padding, row 1 holds 3 documents; `kv_heads` kv heads of
  `groups` query heads each. The default length of 200 is not a multiple of any block."""
  rng = np.random.default_rng(seed)
  b, k = 2, kv_heads
  q, kk, v, w = (rng.normal(size=(b, length, n, head_dim)).astype(np.float32)
                 for n in (k * groups, k, k, k * groups))
  seg = np.zeros((b, length), np.int32)
  cut = lambda f: int(round(f * length))  # noqa: E731
  seg[0, :cut(0.35)], seg[0, cut(0.35):cut(0.8)] = 1, 2  # then padding
  seg[1, :cut(0.3)], seg[1, cut(0.3):cut(0.7)], seg[1, cut(0.7):] = 1, 2, 3
  return (*(jnp.asarray(x, dtype) for x in (q, kk, v)), jnp.asarray(seg), jnp.asarray(w))


def output_and_grads(fn, q, k, v, seg, w, causal: bool) -> list[np.ndarray]:
  """float32 [output, dq, dk, dv] of backend function `fn`, for the loss sum(output * w)."""
  def loss(q, k, v):
    o = fn(q, k, v, seg, causal=causal, dropout_rate=0.0, dropout_rng=None)
    return (o.astype(jnp.float32) * w).sum(), o

  (_, o), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return [np.asarray(x, np.float32) for x in (o, *grads)]


def check(name: str, dtype: str = 'float32', head_dim: int = 32, groups: int = 2) -> str | None:
  """Runs backend `name` against 'xla' (forward and gradients, causal and bidirectional, packed
  rows with padding, grouped-query heads, a length off the blocks); None if it agrees within
  CHECK_TOLERANCE[dtype], else why not."""
  q, k, v, seg, w = check_rows(head_dim, groups, jnp.dtype(dtype))
  try:
    fn = _IMPLS[name].load()
    for causal in (True, False):
      # The reference sees the same (rounded) inputs, computed in float32.
      want = output_and_grads(_attend_xla, *(x.astype(jnp.float32) for x in (q, k, v)), seg,
                              w, causal)
      got = output_and_grads(fn, q, k, v, seg, w, causal)
      for what, g, r in zip(('output', 'dq', 'dk', 'dv'), got, want):
        err = float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-30))
        if not err <= CHECK_TOLERANCE[dtype]:  # also catches NaN
          mode = 'causal' if causal else 'bidirectional'
          return (f'{mode} {what} differs from xla by {err:.3g} (relative; tolerance '
                  f'{CHECK_TOLERANCE[dtype]})')
  except Exception as e:  # a kernel that cannot compile or run here fails its check
    first_line = (str(e).strip().splitlines() or [''])[0][:200]
    return f'{type(e).__name__}: {first_line}'
  return None


@functools.cache
def _choose(platform: str, dtype: str, head_dim: int, groups: int, dropout: bool) -> str:
  failed = []
  chosen = 'xla'
  candidates = AUTO_ORDER.get(platform, [])
  for name in candidates:
    backend = _IMPLS[name]
    if dropout and not backend.dropout:
      continue
    with jax.ensure_compile_time_eval():  # attend may be called while a step is being traced
      reason = check(name, dtype, head_dim, groups)
    if reason is None:
      chosen = name
      break
    failed.append(f'{name} ({reason})')
  if candidates and jax.process_index() == 0:  # on a CPU there is nothing to choose from
    note = f'; failed their check: {"; ".join(failed)}' if failed else ''
    print(f'attention: auto chose {chosen} for {platform} {dtype} head_dim={head_dim} '
          f'groups={groups}{note}', file=sys.stderr, flush=True)
  return chosen


def choose(dtype, head_dim: int, groups: int, dropout: bool = False,
           platform: str | None = None) -> str:
  """The backend `auto` uses for these inputs on `platform` (default: JAX's default backend),
  checked once per process and logged to stderr."""
  return _choose(platform or jax.default_backend(), jnp.dtype(dtype).name, head_dim, groups,
                 dropout)


def attend(q_BxLxHxDh: jax.Array, k_BxLxKxDh: jax.Array, v_BxLxKxDh: jax.Array,
           segment_ids_BxL: jax.Array, *, causal: bool, backend: str = 'xla',
           dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> jax.Array:
  """Softmax attention within segments; returns BxLxHxDh in q's dtype.

  `backend='auto'` picks the fastest backend of the platform that passed its check (`choose`).
  `dropout_rate` drops attention probabilities (after normalisation, as in the original
  transformer) when `dropout_rng` is given; backends that cannot do this raise.
  """
  h, k = q_BxLxHxDh.shape[2], k_BxLxKxDh.shape[2]
  if h % k:
    raise ValueError(f'{h} query heads are not a multiple of {k} key/value heads')
  if backend == 'auto':
    backend = choose(q_BxLxHxDh.dtype, q_BxLxHxDh.shape[-1], h // k,
                     dropout=dropout_rate > 0.0 and dropout_rng is not None)
  if backend not in _IMPLS:
    raise ValueError(f'unknown attention backend {backend!r}; known: {", ".join(BACKENDS)}')
  return _IMPLS[backend].load()(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL,
                                causal=causal, dropout_rate=dropout_rate,
                                dropout_rng=dropout_rng)


# ---------------------------------------------------------------------------------------
# Attention over a key/value cache (generation). Legend additions: T new tokens (queries),
# S cache slots.


class LayerCache(NamedTuple):
  """One layer's keys and values for decoding, with the cache-wide slot bookkeeping.

  Slot s holds the key and value of the token written there by an earlier (or the current)
  call; `segment_ids_BxS` is 0 at slots not written yet and at padding, so the same segment
  rule as in `attend` hides them. The current call's T tokens sit at slots
  [index, index + T), the same slots in every row (prompts are left-padded).
  """

  k_BxSxKxDh: jax.Array
  v_BxSxKxDh: jax.Array
  segment_ids_BxS: jax.Array
  index: jax.Array  # int32 scalar: the slot of the current call's first token


def write_cache(cache: LayerCache, k_BxTxKxDh: jax.Array, v_BxTxKxDh: jax.Array) -> LayerCache:
  """`cache` with the current call's keys and values written at slots [index, index + T)."""
  write = lambda old_BxSxKxDh, new_BxTxKxDh: jax.lax.dynamic_update_slice_in_dim(
      old_BxSxKxDh, new_BxTxKxDh.astype(old_BxSxKxDh.dtype), cache.index, axis=1)
  k_BxSxKxDh = write(cache.k_BxSxKxDh, k_BxTxKxDh)
  v_BxSxKxDh = write(cache.v_BxSxKxDh, v_BxTxKxDh)
  return cache._replace(k_BxSxKxDh=k_BxSxKxDh, v_BxSxKxDh=v_BxSxKxDh)


def attend_cache(q_BxTxHxDh: jax.Array, cache: LayerCache, segment_ids_BxT: jax.Array, *,
                 causal: bool) -> jax.Array:
  """Softmax attention of T new queries over the cache's S slots; BxTxHxDh in q's dtype.

  The same rule as `attend`: query t (at slot index + t) sees slot s iff both are in the same
  non-padding segment and, if `causal`, s <= index + t. With T = 1 a decode step is a
  matrix-vector product per head, memory-bound, so plain einsums are the right tool on every
  backend; the grouped layout keeps k/v un-repeated as in `_attend_xla`.
  """
  b, t, h, dh = q_BxTxHxDh.shape
  s, k = cache.k_BxSxKxDh.shape[1], cache.k_BxSxKxDh.shape[2]
  q_BxTxKxGxDh = (q_BxTxHxDh * jnp.asarray(dh ** -0.5, q_BxTxHxDh.dtype)).reshape(
      b, t, k, h // k, dh)
  s_BxKxGxTxS = jnp.einsum('btkgd,bskd->bkgts', q_BxTxKxGxDh,
                           cache.k_BxSxKxDh.astype(q_BxTxHxDh.dtype),
                           preferred_element_type=jnp.float32)
  seg_q_BxTx1 = segment_ids_BxT[:, :, None]
  seg_k_Bx1xS = cache.segment_ids_BxS[:, None, :]
  mask_BxTxS = (seg_q_BxTx1 == seg_k_Bx1xS) & (seg_k_Bx1xS != 0)
  if causal:
    slot_q_T = cache.index + jnp.arange(t, dtype=jnp.int32)
    mask_BxTxS &= (jnp.arange(s, dtype=jnp.int32)[None, :] <= slot_q_T[:, None])[None]
  s_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], s_BxKxGxTxS, jnp.finfo(jnp.float32).min)
  p_BxKxGxTxS = jax.nn.softmax(s_BxKxGxTxS, axis=-1)
  o_BxTxKxGxDh = jnp.einsum('bkgts,bskd->btkgd', p_BxKxGxTxS.astype(q_BxTxHxDh.dtype),
                            cache.v_BxSxKxDh.astype(q_BxTxHxDh.dtype),
                            preferred_element_type=jnp.float32)
  valid_BxTx1x1x1 = (segment_ids_BxT != 0)[:, :, None, None, None]
  o_BxTxKxGxDh = jnp.where(valid_BxTx1x1x1, o_BxTxKxGxDh, 0.0)
  return o_BxTxKxGxDh.reshape(b, t, h, dh).astype(q_BxTxHxDh.dtype)


# The accelerator kernels' table (dlmjax/kernels, a leaf package), once `_choose` exists.
for _name, _path, _platforms, _rank in kernels.KERNELS:
  register(_name, _path, platforms=_platforms, auto_rank=_rank)
