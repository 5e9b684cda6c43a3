"""The bench's accelerator sections on CPU: the 1B step's dry run, its skip line, the GPU
tests' summary and the markdown table (the GPU figures themselves need a GPU).

Legend: B batch rows, L length.
"""

import numpy as np
import pytest

from dlmjax import bench

# Even smaller than the bench's own dry run, so the test takes seconds.
SMALL = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.n_kv_heads=1',
         'model.d_ff=64', 'model.vocab_size=64', 'data.seq_len=16']


def test_synthetic_batches_are_packed_rows_like_the_pipeline():
  batches = bench.synthetic_batches(rows=5, seq_len=32, vocab_size=50, count=2, seed=1)
  assert len(batches) == 2
  for b in batches:
    seg, pos, tok = b['segment_ids'], b['positions'], b['tokens']
    assert seg.shape == pos.shape == tok.shape == (5, 32)
    assert all(a.dtype == np.int32 for a in (seg, pos, tok))
    starts = np.ones_like(seg, bool)
    starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
    np.testing.assert_array_equal(pos[starts & (seg > 0)], 0)  # positions restart per segment
    inner = ~starts & (seg > 0)
    np.testing.assert_array_equal(pos[:, 1:][inner[:, 1:]], pos[:, :-1][inner[:, 1:]] + 1)
    assert (tok[seg == 0] == 0).all() and (tok[seg > 0] >= 4).all() and (tok < 50).all()
    assert (seg[-1, -1] == 0) and (seg[:, 0] == 1).all()  # the last row ends in padding


def test_step_section_on_cpu_is_skipped_with_the_reason():
  res = bench.bench_train_step([[]], rows_per_device=2)
  assert 'no accelerator' in res['skipped'] and '--dry-run' in res['skipped']


def test_the_first_step_variant_is_timed_with_both_objectives_the_others_with_mdm():
  plan = bench.step_plan([[], ['model.remat=none'], ['model.param_dtype=bfloat16']])
  assert plan == [([], ('mdm', 'ar')), (['model.remat=none'], ('mdm',)),
                  (['model.param_dtype=bfloat16'], ('mdm',))]


@pytest.mark.slow  # two bf16 train-step compilations: ~15 s of CPU
def test_step_dry_run_times_mdm_and_ar_of_the_bf16_preset_and_renders_a_table(monkeypatch):
  monkeypatch.setattr(bench, 'STEP_DRY_RUN', tuple(SMALL))
  res = bench.bench_train_step([['model.remat=none']], rows_per_device=2, dry_run=True,
                               repeats=1, steps_per_repeat=1)
  assert [(r['variant'], r['objective']) for r in res['runs']] == [
      ('model.remat=none', 'mdm'), ('model.remat=none', 'ar')]
  for r in res['runs']:
    assert r['step_s'] > 0 and r['tokens_per_s'] > 0 and r['mfu'] > 0
    # The paper preset's compute and master-weight dtypes, with the variant's remat.
    assert (r['seq_len'], r['global_rows'], r['dtype'], r['param_dtype'], r['remat']) == (
        16, 2, 'bfloat16', 'float32', 'none')
  assert 'mfu' not in res  # no MFU claim from a dry run
  text = bench.to_markdown({**bench.machine(), 'step': res})
  assert '1B preset (dry run' in text
  assert '| model.remat=none | ar | bfloat16 / float32 | none |' in text


def test_junit_summary_counts_outcomes_and_names_the_failures():
  xml = '''<testsuites><testsuite>
    <testcase classname="tests.test_a" name="test_ok"/>
    <testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>
    <testcase classname="tests.test_b" name="test_broken"><error message="y"/></testcase>
    <testcase classname="tests.test_b" name="test_skip"><skipped message="z"/></testcase>
  </testsuite></testsuites>'''
  assert bench.junit_summary(xml) == {
      'passed': 1, 'failed': 1, 'errors': 1, 'skipped': 1,
      'failing': ['tests.test_a::test_bad', 'tests.test_b::test_broken']}


def test_an_unknown_step_variant_key_exits_2_before_measuring(capsys):
  with pytest.raises(SystemExit) as e:
    bench.main(['--sections', 'step', '--step-variant', 'model.remat=none model.bogus=1'])
  assert e.value.code == 2
  assert 'model.bogus' in capsys.readouterr().err
