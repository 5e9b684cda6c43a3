"""The grid report: crossover points, seed averaging, scaling-law fit, files written.

Runs are synthetic run directories (result.json, eval.jsonl, metrics.jsonl) with hand-chosen
numbers, and the grid is a local stand-in with the registry's attributes (duck typing).
"""

import dataclasses
import json
import math

import numpy as np
import pytest

import fakes
from experiments import report

T = 10_000_000  # total training tokens of every synthetic comparison


@dataclasses.dataclass(frozen=True)
class FakeSpec:
  name: str
  objective: str
  model: str
  unique_tokens: int
  epochs: float
  seed: int
  overrides: tuple = ()
  tokens: int = T
  flops: float = 0.0
  tag: str = ''


@dataclasses.dataclass(frozen=True)
class FakeGrid:
  name: str
  runs: tuple
  description: str = 'synthetic'
  hardware: str = 'cpu'
  configs: tuple = ()


def make_run(out, objective, model, u, bpb=None, best=None, seed=0, tokens=T, complete=True,
             params=1_000_000, curve=None):
  """Writes a run directory (fakes.write_run_dir); returns its spec."""
  epochs = tokens / u
  name = f'{model}-{objective}-u{u}-s{seed}-t{tokens}'
  flops = fakes.write_run_dir(out / 'runs' / name, objective, u, tokens, bpb, best=best,
                              seed=seed, complete=complete, params=params, curve=curve)
  return FakeSpec(name=name, objective=objective, model=model, unique_tokens=u, epochs=epochs,
                  seed=seed, tokens=tokens, flops=flops)


def test_crossover_is_log_interpolated_where_d_changes_sign():
  c = report.crossover([1e5, 1e6], [0.2, -0.2], total_tokens=T)
  assert c['status'] == 'crossed'
  assert c['direction'] == 'mdm_better_below'
  assert c['unique_tokens'] == pytest.approx(math.sqrt(1e5 * 1e6))
  assert c['epochs'] == pytest.approx(T / math.sqrt(1e5 * 1e6))
  # Unequal sides: log U moves 1/4 of the way (0.1 / (0.1 + 0.3)) from 1e4 to 1e8.
  c = report.crossover([1e4, 1e8], [0.1, -0.3])
  assert c['unique_tokens'] == pytest.approx(1e5)


def test_crossover_reports_the_first_sign_change_and_its_direction():
  c = report.crossover([1e7, 1e5, 1e6], [0.1, -0.2, 0.2])  # unsorted input, AR wins at small U
  assert c['direction'] == 'ar_better_below'
  assert c['unique_tokens'] == pytest.approx(math.sqrt(1e5 * 1e6))
  assert len(c['crossings']) == 1


def test_crossover_not_reached_says_which_side():
  assert report.crossover([1e5, 1e6, 1e7], [0.3, 0.2, 0.1])['status'] == 'mdm_better_everywhere'


def test_a_tie_is_a_crossing_only_where_the_leader_changes():
  # A tie at the end of the range: AR leads at every other U, no crossing is claimed.
  c = report.crossover([1e4, 1e5, 1e6], [0.0, -0.1, -0.2])
  assert c['status'] == 'ar_better_everywhere' and c['ties'] == [1e4]
  # MDM ahead, a tie, AR ahead: the crossing is at the tie.
  c = report.crossover([1e4, 1e5, 1e6], [0.1, 0.0, -0.2])
  assert c['status'] == 'crossed' and c['unique_tokens'] == 1e5
  assert c['direction'] == 'mdm_better_below'
  # AR ahead on both sides of a tie: no change of leader.
  assert report.crossover([1e4, 1e5, 1e6], [-0.1, 0.0, -0.2])['status'] == 'ar_better_everywhere'
  c = report.crossover([1e5, 1e6, 1e7], [-0.3, -0.2, -0.1])
  assert c['status'] == 'ar_better_everywhere'
  assert c['unique_tokens'] is None and c['epochs'] is None


def test_report_crossover_final_and_best_from_run_directories(tmp_path):
  # final: d = +0.2 at U=1e5, -0.2 at U=1e6.  best (early-stopped): AR gains 0.3 at U=1e5
  # only, so d_best = -0.1 there and -0.2 at 1e6: AR better everywhere.
  specs = [
      make_run(tmp_path, 'ar', 'm1', 100_000, 1.6, best=1.3),
      make_run(tmp_path, 'mdm', 'm1', 100_000, 1.4),
      make_run(tmp_path, 'ar', 'm1', 1_000_000, 1.0),
      make_run(tmp_path, 'mdm', 'm1', 1_000_000, 1.2),
  ]
  summary = report.write_report(FakeGrid('g', tuple(specs)), tmp_path)
  final = summary['crossover']['m1']['final']
  assert final['status'] == 'crossed'
  assert final['unique_tokens'] == pytest.approx(math.sqrt(1e5 * 1e6))
  assert final['epochs'] == pytest.approx(T / math.sqrt(1e5 * 1e6))
  assert summary['crossover']['m1']['best']['status'] == 'ar_better_everywhere'
  md = (tmp_path / 'report.md').read_text()
  assert 'crossover at U = 316K' in md
  assert 'AR better everywhere' in md


def test_crossover_averages_over_seeds(tmp_path):
  # Seed means: AR 1.5 and 1.1, MDM 1.4 and 1.3 -> d = +0.1 at 1e5, -0.2 at 1e6.
  specs = [
      make_run(tmp_path, 'ar', 'm1', 100_000, 1.4, seed=0),
      make_run(tmp_path, 'ar', 'm1', 100_000, 1.6, seed=1),
      make_run(tmp_path, 'mdm', 'm1', 100_000, 1.4, seed=0),
      make_run(tmp_path, 'ar', 'm1', 1_000_000, 1.0, seed=0),
      make_run(tmp_path, 'ar', 'm1', 1_000_000, 1.2, seed=1),
      make_run(tmp_path, 'mdm', 'm1', 1_000_000, 1.2, seed=0),
      make_run(tmp_path, 'mdm', 'm1', 1_000_000, 1.4, seed=1),
  ]
  c = report.write_report(FakeGrid('g', tuple(specs)), tmp_path)['crossover']['m1']['final']
  expected = math.exp(math.log(1e5) + (0.1 / 0.3) * math.log(10))
  assert c['unique_tokens'] == pytest.approx(expected)
  assert [p['d'] for p in c['points']] == pytest.approx([0.1, -0.2])


E, B, BETA = 0.9, 300.0, 0.35


def law_points(r_star, single=(1e5, 3e5, 1e6, 3e6, 1e7), totals=(1e7, 1e8),
               repeated_u=(1e5, 3e5, 1e6, 3e6), **best):
  """Points of the law: one epoch at each of `single`, and each U of `repeated_u` run to each
  total of `totals` (epochs = total / U); `best` defaults to the final loss (no overfitting)."""
  pts = [{'unique_tokens': u, 'epochs': 1.0, 'loss': float(report.law(u, 1.0, E, B, BETA, r_star))}
         for u in single]
  for t in totals:
    for u in repeated_u:
      ep = t / u
      if ep > 1:
        pts.append({'unique_tokens': u, 'epochs': ep,
                    'loss': float(report.law(u, ep, E, B, BETA, r_star))})
  for p in pts:
    p['best'] = p['loss']
  return pts


@pytest.mark.parametrize('r_star', [5.0, 15.0, 60.0])
def test_scaling_fit_recovers_the_r_star_that_made_the_data(r_star):
  fit = report.fit_scaling_law(law_points(r_star), resamples=20)
  assert fit['status'] == 'identified', fit['reason']
  assert fit['R_star'] == pytest.approx(r_star, rel=0.05)
  assert fit['E'] == pytest.approx(E, rel=0.05)
  assert fit['beta'] == pytest.approx(BETA, rel=0.05)
  assert fit['B'] == pytest.approx(B, rel=0.1)
  lo, hi = fit['R_star_ci95']
  assert lo <= r_star * 1.05 and hi >= r_star / 1.05


def test_scaling_fit_with_repeated_runs_on_one_total_is_not_identified():
  fit = report.fit_scaling_law(law_points(15.0, totals=(1e8,)), resamples=5)
  assert fit['status'] == 'not identified'
  assert 'R_star' not in fit and '1 total' not in fit['reason'] and 'has 1' in fit['reason']


def test_scaling_fit_needs_three_single_epoch_budgets():
  # Two seeds at one point are one distinct point, not two.
  pts = law_points(15.0, single=(1e5, 1e6))
  pts.append(dict(pts[0], loss=pts[0]['loss'] + 0.01))
  fit = report.fit_scaling_law(pts)
  assert fit['status'] == 'not enough points' and 'has 2' in fit['reason']


def test_scaling_fit_drops_runs_past_their_minimum():
  pts = law_points(15.0)
  # A run that overfits: its final loss is 10% above its best. Kept, it would drag R* down.
  bad = {'unique_tokens': 1e5, 'epochs': 500.0, 'loss': 3.0, 'best': 2.0}
  fit = report.fit_scaling_law(pts + [bad], resamples=20)
  assert fit['excluded_overfit'] == 1
  assert fit['R_star'] == pytest.approx(15.0, rel=0.05)


def test_scaling_fit_with_r_star_beyond_the_data_is_not_identified():
  # With at most 9 repetitions, R* of 1e4 and of 1e5 predict the same losses: on its bound.
  fit = report.fit_scaling_law(law_points(1e5, totals=(3e5, 1e6), repeated_u=(1e5, 3e5)),
                               resamples=20)
  assert fit['status'] == 'not identified'


def test_incomplete_runs_are_listed_and_skipped(tmp_path):
  specs = [
      make_run(tmp_path, 'ar', 'm1', 100_000, 1.6),
      make_run(tmp_path, 'mdm', 'm1', 100_000, 1.4),
      make_run(tmp_path, 'ar', 'm1', 1_000_000, 1.0),
      make_run(tmp_path, 'mdm', 'm1', 1_000_000, 0.1, complete=False),  # would flip d
  ]
  summary = report.write_report(FakeGrid('g', tuple(specs)), tmp_path)
  assert summary['incomplete'] == [specs[3].name]
  assert specs[3].name not in [r['name'] for r in summary['runs']]
  assert summary['crossover']['m1']['final']['status'] == 'mdm_better_everywhere'
  md = (tmp_path / 'report.md').read_text()
  assert 'runs complete: 3/4' in md and specs[3].name in md


def test_summary_keys_and_plots_exist(tmp_path):
  specs = []
  for model in ('m1', 'm2'):
    for u, (ar, mdm) in {100_000: (1.6, 1.4), 1_000_000: (1.2, 1.25),
                         3_000_000: (1.0, 1.1), 10_000_000: (0.9, 1.05)}.items():
      specs.append(make_run(tmp_path, 'ar', model, u, ar, best=ar - 0.05))
      specs.append(make_run(tmp_path, 'mdm', model, u, mdm))
  summary = report.write_report(FakeGrid('g', tuple(specs)), tmp_path)
  assert set(summary) >= {'grid', 'runs', 'crossover', 'scaling_fit', 'plots'}
  assert summary['grid'] == 'g'
  assert set(summary['runs'][0]) == {
      'name', 'objective', 'model', 'params', 'unique_tokens', 'epochs', 'train_tokens', 'flops',
      'val_loss', 'val_bits_per_byte', 'best_val_bits_per_byte', 'best_step', 'seed'}
  for model in ('m1', 'm2'):
    for metric in ('final', 'best'):
      assert set(summary['crossover'][model][metric]) >= {'unique_tokens', 'epochs', 'status'}
    for obj in ('ar', 'mdm'):
      fit = summary['scaling_fit'][model][obj]
      # One epoch at one budget only: no base law, so no figure at all.
      assert fit['status'] == 'not enough points' and 'R_star' not in fit
  on_disk = json.loads((tmp_path / 'summary.json').read_text())
  assert on_disk == json.loads(json.dumps(summary))
  md = (tmp_path / 'report.md').read_text()
  assert len(summary['plots']) == 4
  for name in summary['plots']:
    assert (tmp_path / name).stat().st_size > 0
    assert f']({name})' in md


def test_a_model_at_several_budgets_is_reported_at_its_fullest_budget(tmp_path):
  # 2T has three unique budgets with both objectives, T only one: the crossover is at 2T.
  specs = [make_run(tmp_path, 'ar', 'm1', 100_000, 1.6),
           make_run(tmp_path, 'mdm', 'm1', 100_000, 1.4)]
  for u, (ar, mdm) in {100_000: (1.5, 1.3), 1_000_000: (1.1, 1.3), 4_000_000: (1.0, 1.2)}.items():
    specs += [make_run(tmp_path, 'ar', 'm1', u, ar, tokens=2 * T),
              make_run(tmp_path, 'mdm', 'm1', u, mdm, tokens=2 * T)]
  c = report.write_report(FakeGrid('g', tuple(specs)), tmp_path)['crossover']['m1']
  assert c['final']['train_tokens'] == 2 * T
  assert c['final']['epochs'] == pytest.approx(2 * T / c['final']['unique_tokens'])
  assert c['final']['unique_tokens'] == pytest.approx(math.sqrt(1e5 * 1e6))
  assert [o['final']['status'] for o in c['other_budgets']] == ['mdm_better_everywhere']


# ---------------------------------------------------------------------------------------
# The crossover in training time.

def test_curve_crossing_is_linear_in_tokens_between_eval_points():
  # d = AR - MDM turns positive between 200 and 300 tokens: 0.1 of the 0.4 rise, a quarter.
  c = report.curve_crossing([100, 200, 300, 400], [-0.3, -0.1, 0.3, 0.2])
  assert c['status'] == 'crossed'
  assert c['tokens'] == pytest.approx(225.0)
  assert c['mdm_ahead_at_end'] is True and c['lead_changes'] == 1


def test_curve_crossing_reports_the_first_crossing_and_counts_lead_changes():
  c = report.curve_crossing([400, 100, 200, 300], [-0.2, -0.4, 0.1, -0.1])  # unsorted input
  assert c['tokens'] == pytest.approx(100 + 100 * 0.4 / 0.5)
  assert c['mdm_ahead_at_end'] is False and c['lead_changes'] == 2


def test_curve_crossing_not_reached_and_ahead_from_start():
  c = report.curve_crossing([1, 2, 3], [-0.1, 0.0, -0.2])  # a tie is not a lead
  assert (c['status'], c['tokens'], c['lead_changes']) == ('not_reached', None, 0)
  c = report.curve_crossing([3, 2, 5], [0.1, 0.2, 0.3])
  assert c['status'] == 'mdm_ahead_from_start' and c['tokens'] is None
  assert c['first_eval_tokens'] == 2
  assert report.curve_crossing([], [])['status'] == 'no_data'


def test_training_crossover_from_run_directories_averages_seeds(tmp_path):
  # Evals at 2M, 4M, 6M, 8M, 10M tokens (fakes.CURVE_STEPS of 10). At U=1e5 the AR seeds average to
  # [3.1, 2.1, 2.3, 2.7, 3.1]; with the MDM's [3.5, 2.6, 2.5, 2.5, 2.4],
  # d = [-0.4, -0.5, -0.2, 0.2, 0.7]: the MDM goes below at 6M + 2M * 0.2 / 0.4 = 7M tokens,
  # 70 epochs of U. At U=1e6 AR stays ahead.
  specs = [
      make_run(tmp_path, 'ar', 'm1', 100_000, curve=[3.0, 2.0, 2.2, 2.6, 3.0], seed=0),
      make_run(tmp_path, 'ar', 'm1', 100_000, curve=[3.2, 2.2, 2.4, 2.8, 3.2], seed=1),
      make_run(tmp_path, 'mdm', 'm1', 100_000, curve=[3.5, 2.6, 2.5, 2.5, 2.4]),
      make_run(tmp_path, 'ar', 'm1', 1_000_000, curve=[3.0, 2.0, 1.8, 1.7, 1.6]),
      make_run(tmp_path, 'mdm', 'm1', 1_000_000, curve=[3.5, 2.6, 2.5, 2.4, 2.3]),
  ]
  summary = report.write_report(FakeGrid('g', tuple(specs)), tmp_path)
  small, large = summary['training_crossover']
  assert (small['model'], small['unique_tokens'], small['seeds']) == ('m1', 100_000, 1)
  assert small['status'] == 'crossed' and small['reached']
  assert small['tokens'] == pytest.approx(7e6)
  assert small['epochs'] == pytest.approx(70.0)
  assert small['fraction'] == pytest.approx(0.7)
  assert small['run_epochs'] == pytest.approx(100.0)
  assert large['status'] == 'not_reached' and not large['reached'] and large['tokens'] is None
  assert summary['training_crossover_trends']['more_unique_data']['m1']['answer'] == 'yes'
  md = (tmp_path / 'report.md').read_text()
  assert '| m1 | 100K | 10M (100) | 7M | 70 | 70% | yes | 1 |' in md
  assert '| m1 | 1M | 10M (10) | not reached | - | - | no | 1 |' in md
  assert 'training_crossover.png' in summary['plots']


def _entry(model, u, tokens, status='crossed'):
  return {'model': model, 'unique_tokens': u, 'tokens': tokens, 'status': status,
          'main_budget': True}


def test_timing_trends_later_with_more_data_and_earlier_with_larger_model():
  order = {'small': 0, 'large': 1}.get
  entries = [_entry('small', 1e5, 4e6), _entry('small', 1e6, None, 'not_reached'),
             _entry('large', 1e5, 2e6), _entry('large', 1e6, 6e6)]
  t = report.timing_trends(entries, order)
  assert t['more_unique_data']['small']['answer'] == 'yes'  # 4M, then not reached
  assert t['more_unique_data']['large']['answer'] == 'yes'  # 2M, then 6M
  # At 1e5: 2M < 4M; at 1e6: 6M < not reached.
  assert t['larger_model']['small->large']['answer'] == 'yes'
  # The larger model later at 1e5 and earlier at 1e6: mixed; nothing reached: not testable.
  entries[2] = _entry('large', 1e5, 5e6)
  assert report.timing_trends(entries, order)['larger_model']['small->large']['answer'] == 'mixed'
  none = [_entry(m, u, None, 'not_reached') for m in ('small', 'large') for u in (1e5, 1e6)]
  t = report.timing_trends(none, order)
  assert t['more_unique_data']['small']['answer'] == 'not testable'
  assert t['larger_model']['small->large']['answer'] == 'not testable'


def test_timing_trends_say_no_when_the_crossover_comes_earlier_with_more_data():
  entries = [_entry('m', 1e5, 6e6), _entry('m', 1e6, 3e6)]
  assert report.timing_trends(entries, str)['more_unique_data']['m']['answer'] == 'no'
