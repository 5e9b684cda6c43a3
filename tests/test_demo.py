"""`make demo` is the demo-tiny grid run by the grid runner, its report, and the verdicts of the
report's crossover claims read back from summary.json."""

import pytest

import fakes
from dlmjax import demo
from experiments import registry

# Final bits/byte and items right (of 400) per (objective, unique tokens, epochs) of synthetic
# demo-tiny results: at 16K AR's best length is 32 epochs (3.7); the MDM's ELBO is 0.2 below it
# and it gets 80 more items right; at one epoch of 1M AR is better on both.
RESULTS = {('ar', 16_000, 16): (3.9, 150), ('ar', 16_000, 32): (3.7, 200),
           ('ar', 16_000, 48): (3.9, 230), ('ar', 16_000, 64): (4.8, 220),
           ('mdm', 16_000, 250): (3.5, 280),
           ('ar', 1_000_000, 1): (3.5, 240), ('mdm', 1_000_000, 1): (4.0, 120)}


def write_grid(out, results=RESULTS):
  for run in registry.get(demo.GRID).runs:  # complete runs: the runner skips them
    bpb, right = results[run.objective, run.unique_tokens, run.epochs]
    tasks = {'code_cloze': fakes.task_result('1' * right + '0' * (400 - right))}
    fakes.write_run_dir(out / 'runs' / run.name, run.objective, run.unique_tokens, run.tokens,
                        bpb, tasks=tasks)


def test_demo_reports_the_demo_grid_and_prints_the_verdicts(tmp_path, capsys):
  assert demo.GRID == 'demo-tiny'
  write_grid(tmp_path)
  assert demo.main(['--out', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert '0 trained, 7 already complete' in out
  lines = [' '.join(line.replace('│', ' ').split()) for line in out.splitlines()]
  # One row per (budget, objective, length); the lengths each comparison uses are marked: on
  # validation the lowest final loss, on accuracy the most accurate.
  assert '16K AR 16 3.900 0.375 +- 0.024' in lines
  assert '16K AR 32 3.700 0.500 +- 0.025 val' in lines
  assert '16K AR 48 3.900 0.575 +- 0.025 acc' in lines
  assert '16K MDM 250 3.500 0.700 +- 0.023 val, acc' in lines
  text = ' '.join(lines)
  # Validation SE: the two runs' evaluation SEs (0.01 nats = 0.0143 bits/byte each) combined.
  assert ('U = 16K, validation: MDM final ELBO 3.500 (250 ep) vs AR best exact NLL 3.700 '
          '(32 ep), bits/byte: MDM better by 0.200 +- 0.020') in text
  # Accuracy against AR's most accurate length: 50 of 400 items differ, all one way: SE
  # sqrt(0.125 * 0.875 / 400) = 0.0165, here from 1000 bootstrap resamples.
  assert ('U = 16K, downstream accuracy: macro accuracy MDM 0.700 (250 ep) vs AR 0.575 (48 ep): '
          'MDM better by 0.125 +- 0.01') in text
  assert 'U = 1M, downstream accuracy: macro accuracy MDM 0.300 (1 ep) vs AR 0.600 (1 ep): AR better by 0.300' in text
  assert 'crossover on validation: SHOWN' in text
  assert 'crossover on downstream accuracy: SHOWN' in text
  for name in ('report.md', 'summary.json'):
    assert str(tmp_path / name) in out
    assert (tmp_path / name).is_file()


def test_demo_says_not_shown_when_the_mdm_is_not_ahead(tmp_path, capsys):
  # The same grid with the MDM at 16K as accurate as AR's most accurate length: no crossover
  # on accuracy, and the verdict says so.
  write_grid(tmp_path, {**RESULTS, ('mdm', 16_000, 250): (3.5, 230)})
  assert demo.main(['--out', str(tmp_path)]) == 0
  text = ' '.join(capsys.readouterr().out.split())
  assert 'crossover on downstream accuracy: NOT SHOWN' in text
  assert 'no difference beyond 2 SE (+0.000' in text
  assert 'crossover on validation: SHOWN' in text


@pytest.mark.parametrize('argv', [['--only', 'ar-*'], ['--dry-run']])
def test_demo_refuses_partial_grids_with_a_one_line_error(argv, capsys):
  with pytest.raises(SystemExit) as e:
    demo.main(argv)
  assert e.value.code == 2
  assert 'python -m experiments.grid run demo-tiny' in capsys.readouterr().err


def test_demo_with_overrides_writes_to_its_own_directory():
  assert demo.demo_out(None, []) == 'runs/grids/demo-tiny'
  assert demo.demo_out(None, ['seed=1']) == 'runs/grids/demo-tiny-seed=1'
  assert demo.demo_out('x', ['seed=1']) == 'x'
