"""The papers' claims, each with its verdict on one grid and the figures it rests on.

`claims(rows, trends, fits, checks, model_order)` takes the report's rows
(experiments/report.py `collect_runs`), its training-time crossover trends, its scaling-law
fits, its within-run rising-loss checks and its model-size order, and returns one entry per
claim and model size:

    {"claim", "model", "verdict": "shown" | "not shown" | "not tested", "figures": str,
     "values": {...}}

The comparisons use each objective at its best training length among its plain runs at one
unique budget U (no regulariser or other variant), every run with its own full learning-rate
decay: the early-stopped baseline the first paper asks for, applied alike to both objectives.
Validation picks the number of epochs with the lowest seed-averaged final validation loss.
Accuracy picks the most accurate length, because accuracy keeps rising after validation loss
turns up (both papers; docs/study-notes.md for AR here), so a length chosen by validation loss
understates AR. The pick is cross-fitted so that the accuracy compared is not selected for:
the lengths are chosen on the even items of every task and scored on the odd ones, and chosen
on the odd and scored on the even; where both halves choose the same lengths (the usual case)
the comparison is on all items, otherwise it is the mean of the two held-out halves. "Shown"
needs the difference beyond two standard errors (Z); the MDM's validation figure is an ELBO,
an upper bound on its NLL, so "MDM better" on validation is conservative and "AR better" is not
proof.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from experiments import stats

Z = 2.0  # a difference counts when it is beyond Z standard errors
CLAIMS = (
    ('crossover_accuracy', 'Crossover on downstream accuracy: the MDM more accurate than AR at '
                           'the smallest unique budget, AR at the largest'),
    ('crossover_validation', 'Crossover on validation: MDM final ELBO (an upper bound) below AR '
                             'exact NLL at the smallest unique budget, above it at the largest'),
    ('later_with_more_data', 'The training-time crossover comes later with more unique data'),
    ('earlier_with_larger_model', 'The training-time crossover comes earlier with a larger '
                                  'model'),
    ('regularised_ar', 'Regularised AR narrows the gap to the MDM at the smallest budget '
                       '(paper 1: without closing it; paper 2: dropout + weight decay nearly '
                       'closes it)'),
    ('rising_loss_rising_accuracy', 'Validation loss rises while downstream accuracy still '
                                    'improves'),
    ('r_star', 'The MDM\'s R* (useful repetitions) is larger than AR\'s'),
)
TITLES = dict(CLAIMS)
# The keys of the regularisers both papers give AR (experiments/registry.py AR_REGULARISERS).
REGULARISER_KEYS = ('ar.input_mask_rate', 'model.mlp_dropout', 'model.attn_dropout',
                    'optimizer.weight_decay', 'ar.param_noise_std')


def regularised(r) -> bool:
  return any(o.split('=', 1)[0] in REGULARISER_KEYS for o in r.get('overrides', ()))


def _entry(claim, model, verdict, figures, **values) -> dict:
  return {'claim': claim, 'model': str(model), 'verdict': verdict, 'figures': figures,
          'values': values}


def _plain(rows, model) -> list[dict]:
  return [r for r in rows if r['model'] == model and not r.get('variant')]


def _bpb_se(r) -> float | None:
  # val_loss_stderr is in nats per token, as val_loss; bits/byte is val_loss times one factor.
  if r.get('val_loss_stderr') is None or not r.get('val_loss'):
    return None
  return r['val_loss_stderr'] * r['val_bits_per_byte'] / r['val_loss']


def best_length(rows, model, u, objective) -> list[dict]:
  """The runs (one per seed) of `objective` at its best training length at U."""
  by_len = collections.defaultdict(list)
  for r in _plain(rows, model):
    if (r['objective'], r['unique_tokens']) == (objective, u) and r['val_bits_per_byte']:
      by_len[r['epochs']].append(r)
  if not by_len:
    return []
  return min(by_len.values(), key=lambda rs: np.mean([r['val_bits_per_byte'] for r in rs]))


def _paired(ar_runs, mdm_runs) -> list[tuple[dict, dict]]:
  mdm = {r['seed']: r for r in mdm_runs}
  return [(a, mdm[a['seed']]) for a in sorted(ar_runs, key=lambda r: r['seed'])
          if a['seed'] in mdm]


def validation_gap(pairs) -> dict | None:
  """AR minus MDM final bits/byte over seed-paired runs (> 0: the MDM is better), with its SE:
  over seeds when there are two or more, else the two runs' evaluation SEs combined."""
  if not pairs:
    return None
  d = [a['val_bits_per_byte'] - m['val_bits_per_byte'] for a, m in pairs]
  if len(d) >= 2:
    se, how = float(np.std(d, ddof=1) / math.sqrt(len(d))), 'over seeds'
  else:
    ses = [_bpb_se(pairs[0][0]), _bpb_se(pairs[0][1])]
    se = math.hypot(*ses) if None not in ses else None
    how = 'evaluation noise only (one seed)'
  return {'diff': float(np.mean(d)), 'se': se, 'se_from': how, 'seeds': len(d),
          'ar': float(np.mean([a['val_bits_per_byte'] for a, _ in pairs])),
          'mdm': float(np.mean([m['val_bits_per_byte'] for _, m in pairs])),
          'ar_epochs': pairs[0][0]['epochs'], 'mdm_epochs': pairs[0][1]['epochs']}


def _choice_tasks(runs) -> list[str]:
  """The multiple-choice tasks every run scored item by item. A generation task (kind
  'generation') has no chance level in common with them and is not in the macro average."""
  sets = [{t for t, m in (r.get('tasks') or {}).items()
           if m.get('item_correct') and m.get('kind') != 'generation'} for r in runs]
  return sorted(set.intersection(*sets)) if sets else []


def accuracy_gap(pairs, *, resamples: int = 1000, half: int | None = None) -> dict | None:
  """MDM minus AR macro accuracy over the tasks both runs of every pair scored item by item,
  with the paired bootstrap over items and seeds (experiments/stats.py); on the items
  `half`::2 of every task only, when `half` is 0 or 1."""
  if not pairs:
    return None
  tasks = _choice_tasks([r for pair in pairs for r in pair])
  if not tasks:
    return None
  pick = slice(None) if half is None else slice(half, None, 2)
  try:
    p = stats.paired_difference(
        {t: [(m['tasks'][t]['item_correct'][pick], a['tasks'][t]['item_correct'][pick])
             for a, m in pairs] for t in tasks}, resamples=resamples)
  except ValueError:
    return None  # the runs scored different items (task_items differs)
  return {'diff': p.diff, 'se': p.se, 'ci95': list(p.ci95), 'mdm': p.a_acc, 'ar': p.b_acc,
          'seeds': p.seeds, 'tasks': tasks, 'items': p.items,
          'ar_epochs': pairs[0][0]['epochs'], 'mdm_epochs': pairs[0][1]['epochs']}


def _macro(r, tasks, half) -> float:
  return float(np.mean([np.mean(stats.bits(r['tasks'][t]['item_correct'][half::2]))
                        for t in tasks]))


def most_accurate_length(rows, model, u, objective, tasks, half) -> list[dict]:
  """The runs (one per seed) of `objective` at its most accurate length at U, by the
  seed-averaged macro accuracy on the items `half`::2 of `tasks`."""
  by_len = collections.defaultdict(list)
  for r in _plain(rows, model):
    if ((r['objective'], r['unique_tokens']) == (objective, u)
        and set(tasks) <= set(_choice_tasks([r]))):
      by_len[r['epochs']].append(r)
  if not by_len:
    return []
  return max(by_len.values(), key=lambda rs: np.mean([_macro(r, tasks, half) for r in rs]))


def accuracy_crossfit(rows, model, u, *, resamples: int = 1000) -> dict | None:
  """MDM minus AR macro accuracy at U, each objective at its most accurate length, chosen on
  one half of the items and scored on the other (module docstring)."""
  runs = [r for r in _plain(rows, model) if r['unique_tokens'] == u and r.get('tasks')]
  tasks = _choice_tasks([r for r in runs if _choice_tasks([r])])
  if not tasks:
    return None
  folds = []
  for half in (0, 1):
    ar = most_accurate_length(rows, model, u, 'ar', tasks, half)
    mdm = most_accurate_length(rows, model, u, 'mdm', tasks, half)
    folds.append(_paired(ar, mdm))
  if not folds[0] or not folds[1]:
    return None
  lengths = [(f[0][0]['epochs'], f[0][1]['epochs']) for f in folds]
  if lengths[0] == lengths[1]:
    g = accuracy_gap(folds[0], resamples=resamples)
    if g is not None:
      g['chosen'] = 'the same lengths on both halves of the items; scored on all items'
    return g
  # The halves disagree: each choice is scored on the half it was not chosen on.
  held_out = [accuracy_gap(f, resamples=resamples, half=1 - h) for h, f in enumerate(folds)]
  if None in held_out:
    return None
  g = {k: float(np.mean([x[k] for x in held_out])) for k in ('diff', 'mdm', 'ar')}
  g.update(se=math.hypot(*(x['se'] for x in held_out)) / 2,
           seeds=min(x['seeds'] for x in held_out), tasks=tasks,
           items=sum(x['items'] for x in held_out),
           ar_epochs=[x['ar_epochs'] for x in held_out],
           mdm_epochs=[x['mdm_epochs'] for x in held_out],
           chosen='different lengths on the two halves of the items (epochs: chosen on the '
                  'even items, on the odd); each scored on the other half, the mean of the two')
  return g


def _validation_at(rows, model, u) -> dict | None:
  return validation_gap(_paired(best_length(rows, model, u, 'ar'),
                                best_length(rows, model, u, 'mdm')))


def epochs_label(e) -> str:
  """'32', or '32|48' where the two halves of a cross-fitted choice differ."""
  return '|'.join(f'{x:g}' for x in e) if isinstance(e, list) else f'{e:g}'


def _ends(rows, model) -> list[float]:
  """The smallest and largest U where both objectives have plain runs."""
  objs = collections.defaultdict(set)
  for r in _plain(rows, model):
    objs[r['unique_tokens']].add(r['objective'])
  us = sorted(u for u, o in objs.items() if {'ar', 'mdm'} <= o)
  return [us[0], us[-1]] if len(us) >= 2 else []


def _fmt_gap(g, what, fmt) -> str:
  se = '-' if g['se'] is None else format(g['se'], fmt)
  return (f'{what} {g["diff"]:+{fmt}} +- {se} (AR {g["ar"]:{fmt}} at '
          f'{epochs_label(g["ar_epochs"])} ep, MDM {g["mdm"]:{fmt}} at '
          f'{epochs_label(g["mdm_epochs"])} ep; {g["seeds"]} seed'
          f'{"s" if g["seeds"] != 1 else ""})')


def _beyond(g, sign) -> bool:
  return g is not None and g['se'] is not None and sign * g['diff'] > Z * g['se']


def _crossover_claim(rows, model, claim, gap_at, what, fmt) -> dict:
  ends = _ends(rows, model)
  if not ends:
    return _entry(claim, model, 'not tested', 'needs both objectives at two unique budgets')
  gaps = [gap_at(rows, model, u) for u in ends]
  if None in gaps:
    return _entry(claim, model, 'not tested',
                  'no seed-paired runs of both objectives with the needed results at '
                  f'U = {ends[0]:g} and {ends[1]:g}')
  small, large = gaps
  shown = _beyond(small, +1) and _beyond(large, -1)
  figures = (f'U = {ends[0]:g}: {_fmt_gap(small, what, fmt)}; U = {ends[1]:g}: '
             f'{_fmt_gap(large, what, fmt)}')
  return _entry(claim, model, 'shown' if shown else 'not shown', figures, small=small,
                large=large, unique_tokens=ends)


def _trend_claim(claim, key, trends) -> list[dict]:
  out = []
  for model, v in trends.get(key, {}).items():
    verdict = {'yes': 'shown', 'no': 'not shown', 'mixed': 'not shown'}.get(v['answer'],
                                                                            'not tested')
    out.append(_entry(claim, model, verdict, f'{v["answer"]}: {v["detail"]}', answer=v['answer']))
  return out


def _regularised_claim(rows, model) -> dict:
  claim = 'regularised_ar'
  variants = [r for r in rows if r['model'] == model and r['objective'] == 'ar'
              and r.get('variant') and regularised(r)]
  if not variants:
    return _entry(claim, model, 'not tested', 'no regularised AR runs in this grid')
  u = min(r['unique_tokens'] for r in variants)
  ar = best_length(rows, model, u, 'ar')
  mdm = best_length(rows, model, u, 'mdm')
  if not ar or not mdm:
    return _entry(claim, model, 'not tested', f'needs plain AR and MDM runs at U = {u:g}')
  by_tag = collections.defaultdict(list)
  for r in variants:
    if r['unique_tokens'] == u and r['val_bits_per_byte']:
      by_tag[r['variant']].append(r['val_bits_per_byte'])
  tag, reg = min(((t, float(np.mean(v))) for t, v in by_tag.items()), key=lambda x: x[1])
  plain = float(np.mean([r['val_bits_per_byte'] for r in ar]))
  m = float(np.mean([r['val_bits_per_byte'] for r in mdm]))
  se = [s for s in (_bpb_se(r) for r in mdm) if s is not None]
  se = float(np.sqrt(np.mean(np.square(se)))) if se else 0.0
  gap_plain, gap_reg = plain - m, reg - m
  narrows = gap_reg < gap_plain - Z * se
  closes = gap_reg <= Z * se
  account = ('closes it (the second paper\'s account)' if closes and gap_plain > Z * se
             else 'narrows it without closing it (the first paper\'s account)' if narrows
             else 'does not narrow it')
  figures = (f'U = {u:g}: gap AR - MDM {gap_plain:+.3f} bits/byte for plain AR at its best '
             f'length, {gap_reg:+.3f} for the best regularised AR (`{tag}`): {account}')
  return _entry(claim, model, 'shown' if narrows else 'not shown', figures, unique_tokens=u,
                best_variant=tag, gap_plain=gap_plain, gap_regularised=gap_reg, closes=closes)


def _rising_claim(rows, model, checks) -> dict:
  """Across runs: a longer run at the same U with higher final validation loss and higher
  macro accuracy (beyond Z paired SEs); within runs: report.rising_loss_check entries."""
  claim = 'rising_loss_rising_accuracy'
  found, tested = [], 0
  by_len = collections.defaultdict(lambda: collections.defaultdict(list))
  for r in _plain(rows, model):
    if r['tasks']:
      by_len[r['objective'], r['unique_tokens']][r['epochs']].append(r)
  for (obj, u), runs in sorted(by_len.items()):
    lengths = sorted(runs)
    for short, long in zip(lengths, lengths[1:]):
      pairs = _paired(runs[short], runs[long])
      g = accuracy_gap(pairs, resamples=500)  # long minus short
      if g is None:
        continue
      tested += 1
      rose = np.mean([l['val_bits_per_byte'] - s['val_bits_per_byte'] for s, l in pairs])
      if rose > 0 and _beyond(g, +1):
        found.append(f'{obj.upper()} at U = {u:g}: {short:g} -> {long:g} epochs, validation '
                     f'{rose:+.3f} bits/byte, macro accuracy {g["diff"]:+.3f} +- {g["se"]:.3f}')
  within = [c for c in checks if c['model'] == model]
  tested += len(within)
  for c in within:
    if c['loss_rose'] and c['acc_change_se'] is not None and c['acc_change_se'] > Z:
      found.append(f'`{c["run"]}` within the run: {c["bpb_best"]:.3f} -> {c["bpb_last"]:.3f} '
                   f'bits/byte, accuracy {c["acc_best"]:.3f} -> {c["acc_last"]:.3f}')
  if not tested:
    return _entry(claim, model, 'not tested', 'needs task results at two lengths of one '
                  'objective and budget, or task results during a run')
  return _entry(claim, model, 'shown' if found else 'not shown',
                '; '.join(found) if found else f'none of {tested} comparisons', instances=found)


def _r_star_claim(model, per_obj) -> dict:
  claim = 'r_star'
  ar, mdm = per_obj.get('ar', {}), per_obj.get('mdm', {})
  if ar.get('status') != 'identified' or mdm.get('status') != 'identified':
    why = '; '.join(f'{o}: {f.get("status", "no runs")}' for o, f in (('ar', ar), ('mdm', mdm)))
    return _entry(claim, model, 'not tested', f'R* not identified ({why})')
  (_, ar_hi), (mdm_lo, _) = ar['R_star_ci95'], mdm['R_star_ci95']
  figures = (f'AR {ar["R_star"]:.3g} ({ar["R_star_ci95"][0]:.3g} .. {ar_hi:.3g}), MDM '
             f'{mdm["R_star"]:.3g} ({mdm_lo:.3g} .. {mdm["R_star_ci95"][1]:.3g})')
  return _entry(claim, model, 'shown' if mdm_lo > ar_hi else 'not shown', figures,
                ar=ar['R_star'], mdm=mdm['R_star'])


def claims(rows, trends, fits, checks, model_order) -> list[dict]:
  """Every claim for every model size, in CLAIMS order. `checks` are the report's within-run
  rising_loss_check entries (any task)."""
  models = sorted({r['model'] for r in rows}, key=model_order)
  out = []
  for model in models:
    out.append(_crossover_claim(rows, model, 'crossover_accuracy', accuracy_crossfit,
                                'macro accuracy MDM - AR', '.3f'))
  for model in models:
    out.append(_crossover_claim(rows, model, 'crossover_validation', _validation_at,
                                'bits/byte AR - MDM', '.3f'))
  out += _trend_claim('later_with_more_data', 'more_unique_data', trends)
  out += _trend_claim('earlier_with_larger_model', 'larger_model', trends)
  if not trends.get('larger_model'):
    out.append(_entry('earlier_with_larger_model', '-', 'not tested', 'one model size'))
  out += [_regularised_claim(rows, m) for m in models]
  out += [_rising_claim(rows, m, checks) for m in models]
  out += [_r_star_claim(m, fits.get(m, {})) for m in models]
  return out


def markdown(entries) -> list[str]:
  lines = ['## The papers\' claims on this grid', '',
           'Each objective at its best training length among its plain runs at that budget, '
           'each run with its own full decay, paired by seed: on validation the epochs with '
           'the lowest final validation loss, on accuracy the most accurate epochs, chosen on '
           'one half of the items and scored on the other (cross-fitted, so the accuracy '
           'compared is not selected for). "Shown" needs the difference beyond two standard '
           'errors. Accuracy: macro average over the tasks, SE from a paired bootstrap over '
           'items and seeds. The MDM\'s validation figure is its ELBO, an upper bound on its '
           'NLL: "MDM better" is conservative, "AR better" is not proof.', '',
           '| claim | model | verdict | figures |', '|---|---|---|---|']
  for e in entries:
    lines.append(f'| {TITLES[e["claim"]]} | {e["model"]} | **{e["verdict"]}** '
                 f'| {e["figures"]} |')
  return lines
