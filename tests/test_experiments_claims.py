"""The claims table and the paired statistics on synthetic run directories whose verdicts are
known by construction."""

import math

import numpy as np
import pytest

import fakes
from experiments import claims as claims_lib
from experiments import report, stats
from test_experiments_report import FakeGrid, FakeSpec

N = 400  # items of the synthetic task


def items(right: int, offset: int = 0) -> str:
  """`right` of N items correct, starting at `offset` (wrapping)."""
  bits = ['0'] * N
  for i in range(right):
    bits[(offset + i) % N] = '1'
  return ''.join(bits)


def halves(even: int, odd: int) -> str:
  """`even` of the N / 2 even items correct and `odd` of the odd ones."""
  bits = ['0'] * N
  for i in range(even):
    bits[2 * i] = '1'
  for i in range(odd):
    bits[2 * i + 1] = '1'
  return ''.join(bits)


def run(out, objective, u, epochs, bpb, right=None, seed=0, tag='', overrides=()):
  """`right`: how many of the N items are correct (the first ones), or the item string."""
  tokens = round(u * epochs)
  name = f'{objective}-m-u{u}-e{epochs:g}-s{seed}' + (f'-{tag}' if tag else '')
  if isinstance(right, int):
    right = items(right)
  tasks = {'t': fakes.task_result(right)} if right is not None else None
  flops = fakes.write_run_dir(out / 'runs' / name, objective, u, tokens, bpb, seed=seed,
                              tasks=tasks)
  return FakeSpec(name=name, objective=objective, model='m', unique_tokens=u, epochs=epochs,
                  seed=seed, tokens=tokens, flops=flops, tag=tag, overrides=tuple(overrides))


def verdicts(tmp_path, specs) -> dict:
  summary = report.write_report(FakeGrid('g', tuple(specs)), tmp_path)
  assert '## The papers\' claims on this grid' in (tmp_path / 'report.md').read_text()
  return {c['claim']: c for c in summary['claims']}


def test_crossover_verdicts_use_each_objectives_best_length_and_two_standard_errors(tmp_path):
  specs = []
  for seed, (ar32, mdm) in enumerate(((3.7, 3.4), (3.8, 3.6))):  # gaps 0.3 and 0.2
    specs += [run(tmp_path, 'ar', 1000, 16, 3.9, 150, seed), run(tmp_path, 'ar', 1000, 32, ar32,
              200, seed), run(tmp_path, 'ar', 1000, 48, 4.0, 260, seed),
              run(tmp_path, 'mdm', 1000, 250, mdm, 200, seed),
              run(tmp_path, 'ar', 100_000, 1, 3.0, 250, seed),
              run(tmp_path, 'mdm', 100_000, 1, 3.5, 150, seed)]
  c = verdicts(tmp_path, specs)
  v = c['crossover_validation']
  small = v['values']['small']
  # AR's length is chosen by validation (32 epochs), not by its better accuracy at 48.
  assert (small['ar_epochs'], small['mdm_epochs']) == (32, 250)
  # Over two seeds: mean gap 0.25, SE std([0.3, 0.2]) / sqrt(2) = 0.05: 5 SE. 1 epoch: AR.
  assert small['diff'] == pytest.approx(0.25) and small['se'] == pytest.approx(0.05)
  assert v['verdict'] == 'shown'
  # Accuracy: AR at its most accurate length (48 epochs, on both halves of the items) gets 60
  # more items right than the MDM: not shown.
  a = c['crossover_accuracy']
  small = a['values']['small']
  assert (small['ar_epochs'], small['mdm_epochs']) == (48, 250)
  assert small['diff'] == pytest.approx(-0.15) and a['verdict'] == 'not shown'
  assert 'both halves' in small['chosen']
  assert a['values']['large']['diff'] == pytest.approx(-0.25)
  # A longer AR run with higher validation loss and more items right: the rising-loss claim.
  r = c['rising_loss_rising_accuracy']
  assert r['verdict'] == 'shown' and 'AR at U = 1000: 32 -> 48 epochs' in r['figures']
  assert c['r_star']['verdict'] == 'not tested'
  assert c['regularised_ar']['verdict'] == 'not tested'


def test_a_gap_of_exactly_two_standard_errors_is_not_shown(tmp_path):
  specs = []
  for seed, (ar, mdm) in enumerate(((3.7, 3.4), (3.8, 3.7))):  # mean 0.2, SE 0.1
    specs += [run(tmp_path, 'ar', 1000, 32, ar, seed=seed),
              run(tmp_path, 'mdm', 1000, 250, mdm, seed=seed),
              run(tmp_path, 'ar', 100_000, 1, 3.0, seed=seed),
              run(tmp_path, 'mdm', 100_000, 1, 3.5, seed=seed)]
  c = verdicts(tmp_path, specs)
  assert c['crossover_validation']['values']['small']['se'] == pytest.approx(0.1)
  assert c['crossover_validation']['verdict'] == 'not shown'
  assert c['crossover_accuracy']['verdict'] == 'not tested'  # no task results


def test_the_accuracy_choice_is_cross_fitted_so_its_winners_curse_does_not_count(tmp_path):
  # AR's two lengths are equally accurate over all items, one on the even items and one on the
  # odd; the MDM is between them on each half. Chosen and scored on the same items, AR's best
  # would look 0.1 better than it is and hide the MDM's lead; chosen on one half and scored on
  # the other, each choice scores 0.4 against the MDM's 0.5.
  specs = [run(tmp_path, 'ar', 1000, 32, 3.7, halves(120, 80)),
           run(tmp_path, 'ar', 1000, 48, 3.9, halves(80, 120)),
           run(tmp_path, 'mdm', 1000, 250, 3.5, halves(100, 100)),
           run(tmp_path, 'ar', 100_000, 1, 3.0, halves(150, 150)),
           run(tmp_path, 'mdm', 100_000, 1, 3.5, halves(100, 100))]
  a = verdicts(tmp_path, specs)['crossover_accuracy']
  small = a['values']['small']
  assert small['ar_epochs'] == [32, 48] and small['mdm_epochs'] == [250, 250]
  assert small['diff'] == pytest.approx(0.1) and small['ar'] == pytest.approx(0.4)
  # Each half: 20 of 200 items differ, all one way: SE sqrt(0.1 * 0.9 / 200) = 0.0212; the
  # mean of the two disjoint halves has half of their combined SE.
  assert small['se'] == pytest.approx(math.hypot(0.0212, 0.0212) / 2, rel=0.15)
  assert a['values']['large']['diff'] == pytest.approx(-0.25)
  assert a['verdict'] == 'shown'
  assert 'at 32|48 ep' in a['figures']


@pytest.mark.parametrize('reg_bpb, verdict, account', [
    (3.6, 'shown', 'without closing it'), (3.5, 'shown', 'closes it'),
    (3.69, 'not shown', 'does not narrow it')])
def test_regularised_ar_narrows_or_closes_the_gap(tmp_path, reg_bpb, verdict, account):
  specs = [run(tmp_path, 'ar', 1000, 32, 3.7), run(tmp_path, 'mdm', 1000, 250, 3.5),
           run(tmp_path, 'ar', 1000, 250, reg_bpb, tag='imask0.3',
               overrides=('ar.input_mask_rate=0.3',)),
           # A recipe variant is not a regulariser, however good its loss.
           run(tmp_path, 'ar', 1000, 250, 3.0, tag='lr4e-3', overrides=('optimizer.lr=0.004',))]
  c = verdicts(tmp_path, specs)['regularised_ar']
  assert c['verdict'] == verdict and account in c['figures']
  assert c['values']['best_variant'] == 'imask0.3'
  assert c['values']['gap_plain'] == pytest.approx(0.2)


def test_mcnemar_is_the_exact_binomial_test_on_discordant_items():
  # 10 items only a gets right, none only b: p = 2 * 0.5**10.
  t = stats.mcnemar('1' * 10 + '1' * 5 + '0' * 5, '0' * 10 + '1' * 5 + '0' * 5)
  assert (t['a_only'], t['b_only'], t['items']) == (10, 0, 20)
  assert t['p_value'] == pytest.approx(2 * 0.5 ** 10)
  assert stats.mcnemar('0101', '0101')['p_value'] == 1.0


def test_paired_bootstrap_matches_the_analytic_standard_error():
  rng = np.random.default_rng(0)
  a = ''.join('1' if x else '0' for x in rng.random(2000) < 0.6)
  b = ''.join('1' if x else '0' for x in rng.random(2000) < 0.5)
  p = stats.paired_difference({'t': [(a, b)]}, resamples=2000)
  d = np.array(list(a), int) - np.array(list(b), int)
  assert p.diff == pytest.approx(d.mean())
  assert p.se == pytest.approx(d.std() / math.sqrt(d.size), rel=0.1)
  # Macro over two tasks: the mean of the two differences; identical runs: no spread.
  q = stats.paired_difference({'t': [(a, b)], 'u': [(b, b)]}, resamples=200)
  assert q.diff == pytest.approx(d.mean() / 2) and q.tasks == 2
  assert stats.paired_difference({'u': [(b, b)]}, resamples=50).se == 0.0
  with pytest.raises(ValueError, match='item counts'):
    stats.paired_difference({'t': [(a, b[:-1])]})
