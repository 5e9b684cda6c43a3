"""The attention section of `python -m dlmjax.bench` (dlmjax/kernels/speed.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from dlmjax import bench
from dlmjax.kernels import speed
from dlmjax.model import attention


def test_packed_rows_fill_every_position_with_increasing_documents():
  seg = speed.packed_segments(np.random.default_rng(0), 3, 512)
  assert seg.shape == (3, 512) and np.all(seg > 0)
  assert np.all(np.diff(seg, axis=1) >= 0) and all(len(np.unique(r)) > 1 for r in seg)


def test_ratio_is_xla_time_over_the_fastest_other_backend_at_that_case():
  rows = [dict(backend='xla', L=4096, causal=False, packed=False, ms=30.0),
          dict(backend='pallas', L=4096, causal=False, packed=False, ms=10.0),
          dict(backend='cudnn', L=4096, causal=False, packed=False, ms=12.0),
          dict(backend='triton', L=4096, causal=False, packed=False, error='OOM'),
          dict(backend='pallas', L=4096, causal=True, packed=False, ms=1.0),
          dict(backend='pallas', L=2048, causal=False, packed=False, ms=1.0)]
  assert speed.best_over_xla(rows, 4096, causal=False, packed=False) == 3.0
  assert speed.best_over_xla(rows, 4096, causal=False, packed=True) is None
  assert speed.best_over_xla(rows[:1], 4096, causal=False, packed=False) is None


def test_dense_flop_count_halves_for_causal():
  full = speed.attention_flops(2, 1024, 8, 64, causal=False)
  assert full == 3.5 * 4 * 2 * 8 * 1024 ** 2 * 64
  assert speed.attention_flops(2, 1024, 8, 64, causal=True) == full / 2


def test_bench_times_each_requested_backend_for_every_case(capsys):
  attention.register('xla_again', lambda *a, **kw: attention._attend_xla(*a, **kw),
                     platforms=('cpu',))
  try:
    shapes = speed.AttentionShapes(lengths=(32,), tokens=64, heads=2, kv_heads=1, head_dim=8,
                                   dtype='float32', repeats=1)
    res = speed.bench_attention(shapes, ['xla', 'xla_again'])
  finally:
    attention.unregister('xla_again')
  cases = {(r['backend'], r['causal'], r['packed']) for r in res['results'] if r['ms'] > 0}
  assert len(cases) == 2 * 2 * 2 and all(r['B'] == 2 for r in res['results'])
  assert res[speed.RATIO_KEY] is None  # L=4096 not measured
  table = speed.format_table(res)
  assert table.count('| xla_again | 32 |') == 4


def test_cpu_defaults_time_only_xla_and_bench_flags_override_shapes():
  assert speed.available_backends('cpu') == ['xla']
  assert set(speed.available_backends('gpu')) == {'xla', 'pallas', 'cudnn', 'triton'}
  assert speed.available_backends('tpu') == ['xla', 'splash']
  args = bench.argparse.Namespace(attn_lengths='128,256', attn_heads='8,2,64', attn_tokens=512,
                                  attn_dtype='bfloat16')
  shapes = bench._attention_shapes(args)
  assert (shapes.lengths, shapes.heads, shapes.kv_heads, shapes.head_dim, shapes.tokens,
          shapes.dtype) == ((128, 256), 8, 2, 64, 512, 'bfloat16')


def test_bench_rejects_unknown_backends_with_one_line(capsys):
  with pytest.raises(SystemExit) as exc:
    bench.main(['--attn-only', '--attn-backends', 'xla,nope'])
  assert exc.value.code == 2 and 'nope' in capsys.readouterr().err
