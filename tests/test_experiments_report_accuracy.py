"""The grid report's downstream-accuracy part on synthetic runs with hand-chosen task metrics."""

import json
import math

import pytest

from experiments import report
from test_experiments_report import FakeGrid as Grid, FakeSpec

T = 1_000_000


def task(acc, delta=1.0, items=400):
  return {'acc': acc, 'acc_stderr': math.sqrt(acc * (1 - acc) / items), 'acc_norm': acc,
          'nll_true': 10.0, 'nll_alt': 10.0 + delta, 'delta_nll': delta, 'items': items,
          'chance': 0.25, 'estimator': 'llada', 'samples': 2}


def make_run(out, objective, u, curve):
  """`curve`: (step, val bits/byte, acc or None, delta NLL) per eval; the last is final."""
  epochs = T / u
  name = f'{objective}-u{u}'
  rd = out / 'runs' / name
  rd.mkdir(parents=True)
  steps = curve[-1][0]
  records = []
  for step, bpb, acc, delta in curve:
    rec = {'step': step, 'epoch': epochs * step / steps, 'tokens_seen': T * step // steps,
           'val_loss': bpb * 0.7, 'val_bits_per_byte': bpb}
    if acc is not None:
      rec['tasks'] = {'code_cloze': task(acc, delta)}
    records.append(rec)
  (rd / 'eval.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  best = min(records, key=lambda r: r['val_bits_per_byte'])
  result = {'objective': objective, 'params': 1e6, 'unique_tokens': u, 'epochs': epochs,
            'train_tokens': T, 'steps': steps, 'flops': 6e12, 'val_loss': curve[-1][1] * 0.7,
            'val_bits_per_byte': curve[-1][1], 'best_val_bits_per_byte': best['val_bits_per_byte'],
            'best_step': best['step'], 'seed': 0, 'tasks': records[-1].get('tasks', {})}
  (rd / 'result.json').write_text(json.dumps(result))
  return FakeSpec(name, objective, 'tiny', u, epochs, seed=0, tokens=T, flops=6e12)


@pytest.fixture
def grid(tmp_path):
  # At 1K unique tokens (1000 epochs) the AR overfits: validation loss rises after step 50,
  # its accuracy falls; the MDM's loss also rises after step 50 while its accuracy improves.
  # At 100K unique tokens AR is more accurate. acc_MDM - acc_AR: +0.10 at 1K, -0.10 at 100K.
  specs = [
      make_run(tmp_path, 'ar', 1_000, [(25, 3.0, 0.30, 1.0), (50, 2.8, 0.32, 1.2),
                                       (75, 3.2, 0.31, 1.1), (100, 3.5, 0.30, 1.0)]),
      make_run(tmp_path, 'mdm', 1_000, [(25, 3.3, 0.30, 0.8), (50, 3.1, 0.33, 1.3),
                                        (75, 3.15, 0.37, 1.6), (100, 3.2, 0.40, 1.9)]),
      make_run(tmp_path, 'ar', 100_000, [(50, 2.6, 0.40, 2.0), (100, 2.4, 0.45, 2.5)]),
      make_run(tmp_path, 'mdm', 100_000, [(50, 3.0, 0.30, 1.0), (100, 2.9, 0.35, 1.5)]),
  ]
  return Grid('synthetic', tuple(specs)), tmp_path


def test_accuracy_crossover_is_where_mdm_minus_ar_accuracy_changes_sign(grid):
  g, out = grid
  rows, _ = report.collect_runs(g, out)
  c = report.accuracy_crossovers(rows, 'code_cloze')['tiny']
  assert c['status'] == 'crossed' and c['direction'] == 'mdm_better_below'
  assert c['unique_tokens'] == pytest.approx(math.sqrt(1_000 * 100_000))  # +0.1 / -0.1
  assert c['epochs'] == pytest.approx(T / math.sqrt(1_000 * 100_000))


def test_rising_loss_check_compares_the_best_validation_point_with_the_last(grid):
  g, out = grid
  rows, _ = report.collect_runs(g, out)
  runs = report.many_epoch_runs(rows, 'code_cloze')
  assert sorted(r['name'] for r in runs) == ['ar-u1000', 'mdm-u1000']
  checks = {r['objective']: report.rising_loss_check(r, 'code_cloze') for r in runs}
  ar, mdm = checks['ar'], checks['mdm']
  assert (ar['best_step'], ar['last_step'], ar['loss_rose'], ar['acc_improved']) == (50, 100, True, False)
  assert (mdm['bpb_best'], mdm['bpb_last']) == (3.1, 3.2)
  assert mdm['loss_rose'] and mdm['acc_improved']
  assert (mdm['acc_best'], mdm['acc_last']) == (0.33, 0.40)
  se = math.hypot(task(0.33)['acc_stderr'], task(0.40)['acc_stderr'])
  assert mdm['acc_change_se'] == pytest.approx(0.07 / se)
  assert (mdm['delta_nll_best'], mdm['delta_nll_last']) == (1.3, 1.9)


def test_report_has_the_accuracy_section_plots_and_summary(grid):
  g, out = grid
  summary = report.write_report(g, out)
  assert {'code_cloze_acc_vs_epochs.png', 'code_cloze_loss_and_acc_over_training.png'} <= set(
      summary['plots'])
  for name in summary['plots']:
    assert (out / name).stat().st_size > 0
  acc = summary['accuracy']['code_cloze']
  assert acc['crossover']['tiny']['status'] == 'crossed'
  assert len(acc['rising_val_loss']) == 2
  assert summary['runs'][1]['tasks']['code_cloze']['acc'] == 0.40
  md = (out / 'report.md').read_text()
  assert '## Downstream accuracy: `code_cloze`' in md
  assert 'crossover on accuracy at U = 10K' in md
  assert 'accuracy still improved in 1 of those (`mdm-u1000`)' in md
  json.loads((out / 'summary.json').read_text())


def test_report_without_task_results_has_no_accuracy_section(tmp_path):
  spec = make_run(tmp_path, 'ar', 1_000, [(10, 3.0, None, None)])
  summary = report.write_report(Grid('plain', (spec,)), tmp_path)
  assert summary['accuracy'] == {}
  assert 'Downstream accuracy' not in (tmp_path / 'report.md').read_text()
