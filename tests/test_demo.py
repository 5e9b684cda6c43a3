"""`make demo` is the crossover-tiny grid run by the grid runner, its report, and a table
read back from summary.json."""

import pytest

import fakes
from dlmjax import demo
from experiments import registry

# Final / best bits/byte per (objective, unique tokens) of the synthetic crossover-tiny results:
# at 64 epochs the MDM wins on final values and AR on early-stopped ones; at 1 epoch AR wins.
RESULTS = {('ar', 31_250): (4.5, 3.4), ('mdm', 31_250): (3.7, 3.7),
           ('ar', 250_000): (2.9, 2.9), ('mdm', 250_000): (3.7, 3.7),
           ('ar', 2_000_000): (3.0, 3.0), ('mdm', 2_000_000): (3.75, 3.75)}


def test_demo_reports_the_crossover_tiny_grid_and_prints_who_wins(tmp_path, capsys):
  grid = registry.get(demo.GRID)
  assert demo.GRID == 'crossover-tiny'
  for run in grid.runs:  # complete runs: the grid runner skips them, nothing is trained
    final, best = RESULTS[run.objective, run.unique_tokens]
    fakes.write_run_dir(tmp_path / 'runs' / run.name, run.objective, run.unique_tokens,
                        run.tokens, final, best=best)
  assert demo.main(['--out', str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert '0 trained, 6 already complete' in out
  # The smallest budget (most epochs) comes first.
  rows = [line.replace('│', ' ') for line in out.splitlines() if 'by 0.' in line]
  assert len(rows) == 3
  assert rows[0].split()[:2] == ['31.25K', '64']
  assert 'MDM by 0.80' in rows[0] and 'AR by 0.30' in rows[0]
  assert rows[2].split()[:2] == ['2M', '1'] and 'AR by 0.75' in rows[2]
  # The synthetic curves keep the 64-epoch MDM ahead at every eval, the others behind.
  assert 'from the first eval' in rows[0] and rows[2].rstrip().endswith('never')
  for name in ('report.md', 'summary.json', 'training_crossover.png'):
    assert str(tmp_path / name) in out
    assert (tmp_path / name).is_file()


def test_demo_table_shows_extra_per_run_metrics_without_a_winner():
  runs = [{'objective': o, 'unique_tokens': 1000, 'epochs': 4.0, 'val_bits_per_byte': v,
           'best_val_bits_per_byte': v, 'seed': 0, 'cloze_accuracy': a}
          for o, v, a in (('ar', 2.0, 0.25), ('mdm', 1.5, 0.5))]
  header, rows = demo.table_rows({'runs': runs})
  assert header[-2:] == ['AR cloze_accuracy', 'MDM cloze_accuracy']
  assert rows == [['1K', '4', '2.000', '1.500', 'MDM by 0.50', '2.000', '1.500', 'MDM by 0.50',
                   '-', '0.250', '0.500']]


def test_demo_task_table_gives_accuracy_with_its_standard_error_and_distance_from_chance():
  def run(obj, u, acc, se, seed=0):
    return {'objective': obj, 'unique_tokens': u, 'epochs': 2e6 / u, 'seed': seed,
            'tasks': {'code_cloze': {'acc': acc, 'acc_stderr': se, 'chance': 0.25}}}
  # Two MDM seeds at 31.25K average to 0.30 with the standard error shrunk by sqrt(2).
  summary = {'runs': [run('ar', 31_250, 0.33, 0.02), run('mdm', 31_250, 0.28, 0.02),
                      run('mdm', 31_250, 0.32, 0.02, seed=1), run('ar', 2_000_000, 0.25, 0.02)]}
  assert demo.task_rows(summary, 'code_cloze') == [
      ['31.25K', '64', '0.330 +- 0.020', '+4.0', '0.300 +- 0.014', '+3.5'],
      ['2M', '1', '0.250 +- 0.020', '+0.0', '-', '-']]


@pytest.mark.parametrize('argv', [['--only', 'ar-*'], ['--dry-run']])
def test_demo_refuses_partial_grids_with_a_one_line_error(argv, capsys):
  with pytest.raises(SystemExit) as e:
    demo.main(argv)
  assert e.value.code == 2
  assert 'python -m experiments.grid run crossover-tiny' in capsys.readouterr().err


def test_demo_with_overrides_writes_to_its_own_directory():
  assert demo.demo_out(None, []) == 'runs/grids/crossover-tiny'
  assert demo.demo_out(None, ['seed=1']) == 'runs/grids/crossover-tiny-seed=1'
  assert demo.demo_out('x', ['seed=1']) == 'x'
