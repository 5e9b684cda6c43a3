"""Attention backends against a naive per-row, per-head loop (the definition of the mask).

Legend: B batch, L length, H query heads, K kv heads, Dh head dim.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from dlmjax.model import attention


def naive_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL, causal):
  """float64 loops: query i of head h sees key j of kv head h // G iff same nonzero segment
  (and j <= i when causal); a query that sees nothing gives 0."""
  q, k, v, seg = (np.asarray(a, np.float64) for a in (q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh,
                                                       segment_ids_BxL))
  b, length, h, dh = q.shape
  g = h // k.shape[2]
  out = np.zeros_like(q)
  for r in range(b):
    for head in range(h):
      for i in range(length):
        keys = [j for j in range(length)
                if seg[r, i] != 0 and seg[r, j] == seg[r, i] and (not causal or j <= i)]
        if not keys:
          continue
        s = np.array([q[r, i, head] @ k[r, j, head // g] for j in keys]) / np.sqrt(dh)
        p = np.exp(s - s.max())
        p /= p.sum()
        out[r, i, head] = sum(pj * v[r, j, head // g] for pj, j in zip(p, keys))
  return out


def packed_segments(rng, b, length):
  """Rows of 1-3 segments of random lengths, some rows ending in padding."""
  seg = np.zeros((b, length), np.int32)
  for r in range(b):
    cuts = np.sort(rng.choice(np.arange(1, length), size=2, replace=False))
    seg[r, :cuts[0]] = 1
    seg[r, cuts[0]:cuts[1]] = 2
    seg[r, cuts[1]:] = 3 if r % 2 else 0  # odd rows are full, even rows end in padding
  return seg


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('h,k', [(4, 4), (4, 2), (6, 1)])
def test_xla_matches_naive_loop_on_packed_gqa_rows(causal, h, k):
  rng = np.random.default_rng(0)
  b, length, dh = 3, 13, 8  # odd length on purpose
  q = rng.normal(size=(b, length, h, dh)).astype(np.float32)
  kk = rng.normal(size=(b, length, k, dh)).astype(np.float32)
  v = rng.normal(size=(b, length, k, dh)).astype(np.float32)
  seg = packed_segments(rng, b, length)
  got = attention.attend(jnp.asarray(q), jnp.asarray(kk), jnp.asarray(v), jnp.asarray(seg),
                         causal=causal, backend='xla')
  assert got.shape == (b, length, h, dh) and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), naive_attention(q, kk, v, seg, causal),
                             rtol=2e-5, atol=2e-5)


def test_padding_queries_give_zero_and_finite_gradients():
  rng = np.random.default_rng(1)
  b, length, h, dh = 2, 6, 2, 4
  q, k, v = (jnp.asarray(rng.normal(size=(b, length, h, dh)), jnp.float32) for _ in range(3))
  seg = jnp.asarray([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], jnp.int32)  # row 1: all padding

  def f(q, k, v):
    return attention.attend(q, k, v, seg, causal=False).sum()

  out = attention.attend(q, k, v, seg, causal=False)
  assert np.all(np.asarray(out)[0, 3:] == 0) and np.all(np.asarray(out)[1] == 0)
  grads = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
  assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_bfloat16_inputs_give_bfloat16_output_close_to_float32():
  rng = np.random.default_rng(2)
  q, k, v = (rng.normal(size=(2, 9, 4, 8)).astype(np.float32) for _ in range(3))
  seg = np.ones((2, 9), np.int32)
  ref = attention.attend(*(jnp.asarray(a) for a in (q, k, v, seg)), causal=True)
  got = attention.attend(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), jnp.asarray(seg),
                         causal=True)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref), atol=5e-2)


def test_attention_dropout_needs_an_rng_and_keeps_the_mask():
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 8, 2, 4)), jnp.float32) for _ in range(3))
  seg = jnp.asarray([[1, 1, 1, 1, 2, 2, 2, 2]], jnp.int32)
  plain = attention.attend(q, k, v, seg, causal=True)
  no_rng = attention.attend(q, k, v, seg, causal=True, dropout_rate=0.5)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(no_rng))
  dropped = attention.attend(q, k, v, seg, causal=True, dropout_rate=0.5,
                             dropout_rng=jax.random.key(0))
  assert not np.allclose(np.asarray(plain), np.asarray(dropped))
  # Document 2 (positions 4..7) still never sees document 1: changing v there changes nothing.
  v2 = v.at[0, :4].set(100.0)
  dropped2 = attention.attend(q, k, v2, seg, causal=True, dropout_rate=0.5,
                              dropout_rng=jax.random.key(0))
  np.testing.assert_allclose(np.asarray(dropped)[0, 4:], np.asarray(dropped2)[0, 4:])


def test_unknown_backend_is_rejected_and_backends_are_listed():
  assert attention.BACKENDS == ('auto', 'xla', 'pallas', 'cudnn', 'triton', 'splash')
  x = jnp.zeros((1, 2, 1, 2))
  with pytest.raises(ValueError, match='xla'):
    attention.attend(x, x, x, jnp.ones((1, 2), jnp.int32), causal=True, backend='nope')


def ignores_segments(q, k, v, segment_ids, **kw):
  """A deliberately wrong backend: attends across documents (the known cuDNN failure)."""
  return attention._attend_xla(q, k, v, jnp.ones_like(segment_ids), **kw)


def xla_copy(q, k, v, segment_ids, **kw):
  return attention._attend_xla(q, k, v, segment_ids, **kw)


def crashes(q, k, v, segment_ids, **kw):
  raise RuntimeError('no kernel image for this device')


@pytest.fixture
def registered():
  """Registers test backends for the CPU; unregisters them (and forgets auto's choices) after."""
  names = []

  def register(name, fn, rank, **kw):
    attention.register(name, fn, platforms=('cpu',), auto_rank=rank, **kw)
    names.append(name)

  yield register
  for name in names:
    attention.unregister(name)


def test_auto_on_cpu_is_xla():
  assert attention.AUTO_ORDER['cpu'] == []
  assert attention.choose(jnp.float32, 32, 2) == 'xla'
  assert attention.choose(jnp.bfloat16, 64, 1) == 'xla'


def test_auto_never_selects_a_backend_that_fails_its_check(registered, capsys):
  registered('wrong', ignores_segments, 0)
  registered('broken', crashes, 1)
  assert 'differs from xla' in attention.check('wrong')
  assert 'no kernel image' in attention.check('broken')
  q, k, v, seg, _ = attention.check_rows(16, 2, jnp.float32, length=24)
  # Chosen while the caller is being traced, as inside a train step.
  out = jax.jit(lambda q, k, v: attention.attend(q, k, v, seg, causal=True, backend='auto'))(
      q, k, v)
  np.testing.assert_allclose(np.asarray(out),
                             np.asarray(attention.attend(q, k, v, seg, causal=True)), atol=1e-6)
  assert attention.choose(jnp.float32, 16, 2) == 'xla'
  log = capsys.readouterr().err
  assert 'auto chose xla' in log and 'wrong (causal output differs' in log and 'broken' in log


def test_auto_selects_the_first_backend_that_passes_and_skips_it_for_dropout(registered):
  registered('wrong', ignores_segments, 0)
  registered('good', xla_copy, 1)
  assert attention.check('good') is None
  assert attention.choose(jnp.float32, 16, 2) == 'good'
  # Only backends that do attention dropout are candidates when it is on.
  assert attention.choose(jnp.float32, 16, 2, dropout=True) == 'xla'


def test_kernel_backends_refuse_attention_dropout():
  q, k, v, seg, _ = attention.check_rows(16, 1, jnp.float32, length=8)
  for name in ('pallas', 'splash'):
    with pytest.raises(NotImplementedError, match='dropout'):
      attention.attend(q, k, v, seg, causal=True, backend=name, dropout_rate=0.1,
                       dropout_rng=jax.random.key(0))


def test_the_kernel_table_is_a_leaf_the_model_registers():
  # dlmjax.kernels imports nothing of the model; the model registers every backend it lists.
  code = ('import json, sys, dlmjax.kernels; '
          'print(json.dumps(sorted(m for m in sys.modules if m.startswith("dlmjax"))))')
  loaded = json.loads(subprocess.run([sys.executable, '-c', code], capture_output=True,
                                     text=True, check=True).stdout)
  assert 'dlmjax.kernels' in loaded and not [m for m in loaded if m.startswith('dlmjax.model')]
  from dlmjax import kernels
  assert set(kernels.NAMES) <= set(attention.BACKENDS)
  for name, _, platforms, _ in kernels.KERNELS:
    for platform in platforms:
      assert name in attention.AUTO_ORDER[platform]
