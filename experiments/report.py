"""The crossover report of a grid: tables, plots, crossover points and scaling-law fits.

`write_report(grid, out_dir)` reads each run's directory `OUT/runs/<RunSpec.name>/`
(result.json, eval.jsonl) and writes into `out_dir`:

    report.md      header, table of runs, the papers' claims with verdicts (experiments/
                   claims.py), crossover statements, fit table, accuracy, plots
    summary.json   the same numbers for programs (see `write_report`)
    *.png          epochs view, training curves, training-time crossover, FLOPs-matched view

It relies only on these attributes of the registry's objects (duck typed):
`Grid.name, .description, .hardware, .runs` and
`RunSpec.name, .objective, .model, .unique_tokens, .epochs, .seed, .tokens, .flops`.
"""

from __future__ import annotations

import collections
import math
import pathlib
from typing import Any, Iterable

import numpy as np

from dlmjax.rundir import RunDir, training_evals, write_json_atomic, write_text_atomic
from experiments import claims as claims_lib

OBJECTIVES = ('ar', 'mdm')
COLORS = {'ar': 'tab:blue', 'mdm': 'tab:orange'}
LABELS = {'ar': 'AR', 'mdm': 'MDM'}
METRICS = {'final': 'val_bits_per_byte', 'best': 'best_val_bits_per_byte'}

# Published values of the data-constrained R* (the epochs after which repeated data is worth
# 1/e of fresh data): Muennighoff et al. 2023 for AR, Prabhudesai et al. 2025 for diffusion.
PUBLISHED_R_STAR = {'ar': 15.0, 'mdm': 500.0}


# ---------------------------------------------------------------------------------------------
# Collecting runs

def collect_runs(grid, out_dir) -> tuple[list[dict], list[str]]:
  """Reads the complete runs of `grid` under `out_dir/runs/`.

  Returns (rows, incomplete names). A row is the result.json values the report uses, plus the
  spec's `model` label and planned total `tokens` (which groups runs into one comparison), and
  the run's validation curve (`curve`: eval.jsonl records).
  """
  rows, incomplete = [], []
  for spec in grid.runs:
    rd = RunDir(pathlib.Path(out_dir) / 'runs' / spec.name)
    res = rd.read_result()
    if res is None:  # absent, or damaged: not finished (its next `run` finishes it again)
      incomplete.append(spec.name)
      continue
    curve = training_evals(rd.evals)
    rows.append({
        'name': spec.name,
        'objective': res.get('objective', spec.objective),
        'model': spec.model,
        'params': res.get('params'),
        'unique_tokens': res.get('unique_tokens', spec.unique_tokens),
        'epochs': res.get('epochs', spec.epochs),
        'train_tokens': res.get('train_tokens', spec.tokens),
        'flops': res.get('flops', spec.flops),
        'val_loss': res.get('val_loss'),
        'val_bits_per_byte': res.get('val_bits_per_byte'),
        'best_val_bits_per_byte': res.get('best_val_bits_per_byte'),
        'best_step': res.get('best_step'),
        'seed': res.get('seed', spec.seed),
        'variant': variant(spec),
        'overrides': tuple(getattr(spec, 'overrides', ())),
        'val_loss_stderr': res.get('val_loss_stderr'),
        'budget_tokens': spec.tokens,
        'curve': curve,
        'tasks': res.get('tasks') or {},  # final multiple-choice metrics (eval.tasks)
    })
  return rows, incomplete


def variant(spec) -> str:
  """The run's variant tag ('imask0.3', 'lr1e-3'); '' for a grid's plain runs, which recipe
  grids tag 'base'."""
  tag = getattr(spec, 'tag', '')
  return '' if tag == 'base' else tag


def _mean_by(rows: Iterable[dict], key, value: str) -> dict:
  """Mean of `value` over the rows sharing `key(row)` (seed averaging)."""
  groups = collections.defaultdict(list)
  for r in rows:
    if r.get(value) is not None:
      groups[key(r)].append(float(r[value]))
  return {k: float(np.mean(v)) for k, v in groups.items()}


# ---------------------------------------------------------------------------------------------
# Crossover

def crossover(unique_tokens: Iterable[float], d: Iterable[float],
              total_tokens: float | None = None) -> dict:
  """Where d(U) = bpb_AR(U) - bpb_MDM(U) changes sign, linear in log U.

  `unique_tokens` and `d` are paired (already seed-averaged). Returns
  {"unique_tokens", "epochs", "status", "direction", "crossings", "points"}: `status` is
  "crossed", "mdm_better_everywhere" (d > 0 at every U), "ar_better_everywhere" (d < 0) or
  "no_data"; the first crossing (smallest U) is reported, all of them are in `crossings`, and
  the U where d is exactly 0 in `ties` ("everywhere" then means at every other U).
  `direction` "mdm_better_below" is the papers' claim: MDM wins with little unique data.
  """
  pts = sorted(zip(map(float, unique_tokens), map(float, d)))
  out = {'unique_tokens': None, 'epochs': None, 'status': 'no_data', 'direction': None,
         'crossings': [], 'points': [{'unique_tokens': u, 'd': v} for u, v in pts]}
  if not pts:
    return out
  # A crossing is a change of sign between neighbouring non-zero points: interpolated when
  # they are adjacent, at the first tie when ties lie between them. A tie at an end of the
  # range, or ties with the same sign on both sides, show no change of leader.
  signed = [(i, u, v) for i, (u, v) in enumerate(pts) if v != 0.0]
  crossings = []
  for (i1, u1, d1), (i2, u2, d2) in zip(signed, signed[1:]):
    if d1 * d2 < 0:
      if i2 == i1 + 1:
        t = d1 / (d1 - d2)
        u = math.exp(math.log(u1) + t * (math.log(u2) - math.log(u1)))
      else:
        u = pts[i1 + 1][0]
      crossings.append((u, d2))
  out['ties'] = [u for u, v in pts if v == 0.0]
  if crossings:
    # The sign after the crossing says who wins above it: d < 0 there means AR wins at large U.
    out['crossings'] = [c for c, _ in crossings]
    out['unique_tokens'] = crossings[0][0]
    out['status'] = 'crossed'
    out['direction'] = 'mdm_better_below' if crossings[0][1] < 0 else 'ar_better_below'
  elif signed and all(v > 0 for _, _, v in signed):
    out['status'] = 'mdm_better_everywhere'
  elif signed and all(v < 0 for _, _, v in signed):
    out['status'] = 'ar_better_everywhere'
  else:
    out['status'] = 'tie'  # d == 0 at every U
  if out['unique_tokens'] is not None and total_tokens:
    out['epochs'] = total_tokens / out['unique_tokens']
  out['range'] = [pts[0][0], pts[-1][0]]
  return out


def budget_crossover(brows: list[dict], field: str, budget: float, *,
                     higher_is_better: bool = False) -> dict:
  """`crossover` of AR against MDM on `field` (seed means) over the unique-token values that
  both objectives have at one total budget; d > 0 where the MDM is better."""
  means = _mean_by(brows, lambda r: (r['objective'], r['unique_tokens']), field)
  us = sorted({u for (o, u) in means if o == 'ar'} & {u for (o, u) in means if o == 'mdm'})
  sign = -1.0 if higher_is_better else 1.0
  c = crossover(us, [sign * (means['ar', u] - means['mdm', u]) for u in us], budget)
  c['train_tokens'] = budget
  return c


def crossovers(rows: list[dict]) -> dict:
  """{model: {"final": crossover, "best": crossover}} at each model's total-token budget.

  A model run at several total budgets is reported at the one with the most unique-token
  values having both objectives (ties: the largest budget); the others go to "other_budgets".
  """
  out = {}
  for model in sorted({r['model'] for r in rows}, key=_model_order(rows)):
    mrows = [r for r in rows if r['model'] == model]
    per_budget = {}
    for budget in sorted({r['budget_tokens'] for r in mrows}):
      brows = [r for r in mrows if r['budget_tokens'] == budget]
      per_budget[budget] = {metric: budget_crossover(brows, field, budget)
                            for metric, field in METRICS.items()}
    main = _main_budget(mrows)
    out[model] = dict(per_budget[main])
    others = [per_budget[b] for b in per_budget if b != main]
    if others:
      out[model]['other_budgets'] = others
  return out


def _main_budget(mrows: list[dict]) -> float:
  """The total-token budget at which a model's comparisons are reported: the one with the most
  unique-token values (ties: the largest budget)."""
  count = collections.Counter()
  for budget in {r['budget_tokens'] for r in mrows}:
    objs = collections.defaultdict(set)
    for r in mrows:
      if r['budget_tokens'] == budget:
        objs[r['unique_tokens']].add(r['objective'])
    count[budget] = sum(1 for o in objs.values() if set(OBJECTIVES) <= o)
  return max(count, key=lambda b: (count[b], b))


def _model_order(rows):
  # Sizes sort by parameter count, not by label ("10m" before "1b").
  params = {}
  for r in rows:
    params.setdefault(r['model'], r.get('params') or 0)
  return lambda m: (params.get(m, 0), str(m))


# ---------------------------------------------------------------------------------------------
# Crossover in training time: when, during one (model, U) pair of runs, does the MDM's
# validation curve go below the AR's? The papers' "crossover timing": it should come later
# with more unique data (AR overfits later) and earlier with a larger model.

def mean_curve(rows: list[dict]) -> list[tuple[float, float]]:
  """Seed-averaged validation curve [(tokens_seen, bits/byte)] of runs with one config.

  Only the eval points every run has are kept (seeds of one config evaluate at the same steps).
  """
  per_run = [{float(p['tokens_seen']): float(p['val_bits_per_byte']) for p in r['curve']
              if p.get('tokens_seen') is not None and p.get('val_bits_per_byte') is not None}
             for r in rows]
  if not per_run:
    return []
  shared = set.intersection(*(set(c) for c in per_run))
  return [(x, float(np.mean([c[x] for c in per_run]))) for x in sorted(shared)]


def curve_crossing(tokens: Iterable[float], d: Iterable[float]) -> dict:
  """Where d(x) = bpb_AR(x) - bpb_MDM(x), sampled at training tokens x, first becomes > 0.

  Linear in x between the two eval points around the sign change. Returns
  {"status", "tokens", "first_eval_tokens", "mdm_ahead_at_end", "lead_changes"}: `status` is
  "crossed" (`tokens` is the interpolated crossing), "mdm_ahead_from_start" (d > 0 already at
  the first eval point, `first_eval_tokens`: the crossover, if any, came before it),
  "not_reached" (d <= 0 at every point) or "no_data"; `lead_changes` counts every change of
  sign of d (a noisy MDM curve may cross back).
  """
  pts = sorted(zip(map(float, tokens), map(float, d)))
  out = {'status': 'no_data', 'tokens': None, 'first_eval_tokens': None,
         'mdm_ahead_at_end': None, 'lead_changes': 0}
  if not pts:
    return out
  out['first_eval_tokens'] = pts[0][0]
  ahead = [v > 0 for _, v in pts]
  out['mdm_ahead_at_end'] = ahead[-1]
  out['lead_changes'] = sum(a != b for a, b in zip(ahead, ahead[1:]))
  if ahead[0]:
    out['status'] = 'mdm_ahead_from_start'
  elif any(ahead):
    i = ahead.index(True)
    (x1, d1), (x2, d2) = pts[i - 1], pts[i]
    out['status'] = 'crossed'
    out['tokens'] = x1 + (x2 - x1) * (-d1) / (d2 - d1)
  else:
    out['status'] = 'not_reached'
  return out


def training_crossovers(rows: list[dict]) -> list[dict]:
  """The training-time crossover of every (model, total budget, U) with runs of both objectives.

  Each entry: {"model", "unique_tokens", "train_tokens" (the total budget), "run_epochs",
  "seeds", "status", "reached", "tokens" (training tokens at the crossover), "epochs"
  (tokens / U), "fraction" (tokens / train_tokens), "mdm_ahead_at_end", "lead_changes",
  "main_budget" (the budget the model's trends use)}. Sorted by model size, then U.
  """
  out = []
  for model in sorted({r['model'] for r in rows}, key=_model_order(rows)):
    mrows = [r for r in rows if r['model'] == model]
    main = _main_budget(mrows)
    for budget, u in sorted({(r['budget_tokens'], r['unique_tokens']) for r in mrows}):
      sel = [r for r in mrows if r['budget_tokens'] == budget and r['unique_tokens'] == u]
      curves = {o: mean_curve([r for r in sel if r['objective'] == o]) for o in OBJECTIVES}
      if not all(curves.values()):
        continue
      ar, mdm = dict(curves['ar']), dict(curves['mdm'])
      xs = sorted(set(ar) & set(mdm))
      c = curve_crossing(xs, [ar[x] - mdm[x] for x in xs])
      c.update(model=model, unique_tokens=u, train_tokens=budget,
               run_epochs=budget / u if u else None,
               seeds=min(sum(r['objective'] == o for r in sel) for o in OBJECTIVES),
               reached=c['status'] in ('crossed', 'mdm_ahead_from_start'),
               epochs=None if c['tokens'] is None else c['tokens'] / u,
               fraction=None if c['tokens'] is None else c['tokens'] / budget,
               main_budget=budget == main)
      out.append(c)
  return out


def _timing_key(c: dict) -> float:
  # A crossover not reached within the run comes (if ever) after it: later than any reached one.
  if c['status'] == 'mdm_ahead_from_start':
    return 0.0
  return c['tokens'] if c['tokens'] is not None else math.inf


def timing_trends(entries: list[dict], order) -> dict:
  """Does the training-time crossover come later with more U, and earlier with a larger model?

  `entries` are training_crossovers() rows; `order` sorts model labels by size. Returns
  {"more_unique_data": {model: verdict}, "larger_model": {"SMALL->LARGE": verdict}} where a
  verdict is {"answer": "yes" | "no" | "mixed" | "not testable", "detail": str}. "Later" and
  "earlier" are in training tokens; a crossover not reached by the end of a run counts as later
  than every reached one, and two unreached ones cannot be ordered.
  """
  main = [c for c in entries if c['main_budget']]
  models = sorted({c['model'] for c in main}, key=order)
  more_data = {}
  for model in models:
    cs = sorted((c for c in main if c['model'] == model), key=lambda c: c['unique_tokens'])
    pairs = [(_timing_key(a), _timing_key(b)) for a, b in zip(cs, cs[1:])]
    more_data[str(model)] = _ordering(pairs, later_is_yes=True)
  larger = {}
  for small, large in zip(models, models[1:]):
    by_u = {m: {c['unique_tokens']: _timing_key(c) for c in main if c['model'] == m}
            for m in (small, large)}
    shared = sorted(set(by_u[small]) & set(by_u[large]))
    larger[f'{small}->{large}'] = _ordering([(by_u[small][u], by_u[large][u]) for u in shared],
                                            later_is_yes=False)
  return {'more_unique_data': more_data, 'larger_model': larger}


def _ordering(pairs: list[tuple[float, float]], *, later_is_yes: bool) -> dict:
  """Verdict on pairs (a, b) of crossover times: is b later (or earlier) than a every time?"""
  comparable = [(a, b) for a, b in pairs if not (math.isinf(a) and math.isinf(b))]
  later = sum(b > a for a, b in comparable)
  earlier = sum(b < a for a, b in comparable)
  yes, no = (later, earlier) if later_is_yes else (earlier, later)
  detail = f'{yes} of {len(comparable)} comparable pairs agree, {no} disagree'
  if not comparable or yes == no == 0:
    answer = 'not testable'
  elif no == 0:
    answer = 'yes'
  elif yes == 0:
    answer = 'no'
  else:
    answer = 'mixed'
  return {'answer': answer, 'detail': detail}


# ---------------------------------------------------------------------------------------------
# Data-constrained scaling law (Muennighoff et al. 2023), fitted in their two stages
#
# Stage 1, the base law L(D) = E + B / D^beta, comes from single-epoch runs at several unique
# budgets D (no repetition, so D' = D). Stage 2 fits R* alone, with E, B and beta held, to the
# repeated runs: D' = U + U R* (1 - exp(-R / R*)), R = epochs - 1. A run past its overfitting
# minimum (final loss above its best by more than OVERFIT_TOLERANCE) is left out of stage 2, as
# the law describes loss that still falls with more (effective) data. Both stages minimise a
# Huber loss on log loss from several starts; a bootstrap over the points gives intervals. R*
# is "not identified" when the repeated runs lie on one total-token line (R* and the base law
# trade off along it), when its estimate sits on a bound, or when more than 5% of the
# bootstrap fits do.

OVERFIT_TOLERANCE = 0.01  # relative: final > best * (1 + this) means past the minimum
HUBER_DELTA = 1e-3  # on log loss, Muennighoff et al.'s choice
R_STAR_BOUNDS = (1e-2, 1e5)
MIN_SINGLE_EPOCH_BUDGETS = 3
MIN_REPEATED_TOTALS = 2


def effective_data(unique_tokens, epochs, r_star):
  """D' = U + U R* (1 - exp(-R / R*)), R = epochs - 1 (repetitions beyond the first pass)."""
  u = np.asarray(unique_tokens, np.float64)
  r = np.maximum(np.asarray(epochs, np.float64) - 1.0, 0.0)
  return u + u * r_star * (1.0 - np.exp(-r / r_star))


def law(unique_tokens, epochs, e, b, beta, r_star):
  """L(D') = E + B / D'^beta."""
  return e + b / effective_data(unique_tokens, epochs, r_star) ** beta


def _huber(r: np.ndarray, delta: float = HUBER_DELTA) -> float:
  a = np.abs(r)
  return float(np.sum(np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))))


def _fit_base(d: np.ndarray, y: np.ndarray, d0: float,
              start: tuple[float, float, float] | None = None) -> tuple[float, float, float] | None:
  """(E, B, beta) of L = E + B (D / d0)^-beta minimising the Huber loss on log L; from a grid
  of starts, or from `start` alone (a bootstrap resample starts at the full data's fit)."""
  from scipy import optimize

  def objective(p):
    e, b0, beta = np.exp(p)
    pred = e + b0 * (d / d0) ** -beta
    return _huber(np.log(pred) - np.log(y))

  best = None
  # A grid of starts, as Muennighoff et al. do: the surface has flat valleys in (E, beta).
  starts = [start] if start else [
      (e_frac * float(y.min()), max(float(y.max()) - e_frac * float(y.min()), 1e-6), beta0)
      for e_frac in (0.1, 0.5, 0.9) for beta0 in (0.05, 0.2, 0.5, 1.0)]
  for p0 in starts:
    sol = optimize.minimize(objective, np.log(p0), method='L-BFGS-B',
                            bounds=[(math.log(1e-6), math.log(1e4)),
                                    (math.log(1e-9), math.log(1e9)),
                                    (math.log(1e-3), math.log(3.0))],
                            options={'ftol': 1e-15, 'gtol': 1e-12, 'maxiter': 5000})
    if np.isfinite(sol.fun) and (best is None or sol.fun < best.fun):
      best = sol
  return None if best is None else tuple(float(v) for v in np.exp(best.x))


def _fit_r_star(u, ep, y, base, d0) -> float:
  """R* alone, E, B, beta held: a dense log grid, then a bounded refinement of its best cell."""
  from scipy import optimize

  e, b0, beta = base

  def objective(log_r):
    pred = e + b0 * (effective_data(u, ep, math.exp(log_r)) / d0) ** -beta
    return _huber(np.log(pred) - np.log(y))

  lo, hi = (math.log(v) for v in R_STAR_BOUNDS)
  grid = np.linspace(lo, hi, 57)
  vals = [objective(g) for g in grid]
  i = int(np.argmin(vals))
  a, c = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
  sol = optimize.minimize_scalar(objective, bounds=(a, c), method='bounded',
                                 options={'xatol': 1e-9})
  return math.exp(sol.x if sol.fun <= vals[i] else grid[i])


def _at_bound(r_star: float) -> bool:
  lo, hi = R_STAR_BOUNDS
  return r_star <= lo * 1.05 or r_star >= hi / 1.05


def fit_scaling_law(points: list[dict], *, resamples: int = 200, seed: int = 0) -> dict:
  """The two-stage fit on one objective and model size.

  `points`: {"unique_tokens", "epochs", "loss" (final), "best" (the run's lowest validation
  loss; None: not checked)}; seeds are averaged per (U, epochs) first. Returns {"status":
  "identified" | "not identified" | "not enough points", "reason", "E", "B", "beta" (stage 1,
  B in tokens), "R_star", "R_star_ci95", "single_epoch_points", "repeated_points",
  "excluded_overfit", "totals", "rmse_log"}.
  """
  keyed = collections.defaultdict(list)
  for p in points:
    if p.get('loss') is not None:
      keyed[float(p['unique_tokens']), float(p['epochs'])].append(p)
  avg = {}
  for k, ps in keyed.items():
    bests = [q['best'] for q in ps if q.get('best') is not None]
    avg[k] = (float(np.mean([q['loss'] for q in ps])),
              float(np.mean(bests)) if len(bests) == len(ps) else None)
  single = sorted((u, l) for (u, e), (l, _) in avg.items() if abs(e - 1.0) < 1e-9)
  repeated_all = sorted((u, e, l, b) for (u, e), (l, b) in avg.items() if e > 1.0 + 1e-9)
  repeated = [(u, e, l) for u, e, l, b in repeated_all
              if b is None or l <= b * (1.0 + OVERFIT_TOLERANCE)]
  totals = sorted({round(u * e) for u, e, _ in repeated})
  out: dict[str, Any] = {'single_epoch_points': len(single), 'repeated_points': len(repeated),
                         'excluded_overfit': len(repeated_all) - len(repeated),
                         'totals': totals}
  if len({u for u, _ in single}) < MIN_SINGLE_EPOCH_BUDGETS:
    return {**out, 'status': 'not enough points',
            'reason': f'the base law needs single-epoch runs at {MIN_SINGLE_EPOCH_BUDGETS}+ '
                      f'unique budgets; this grid has {len(single)}'}
  su = np.array([u for u, _ in single])
  sy = np.array([l for _, l in single])
  d0 = float(np.exp(np.mean(np.log(su))))
  base = _fit_base(su, sy, d0)
  if base is None:
    return {**out, 'status': 'not enough points', 'reason': 'the base-law fit failed'}
  e, b0, beta = base
  out.update(E=e, B=b0 * d0 ** beta, beta=beta,
             rmse_log=float(np.sqrt(np.mean((np.log(e + b0 * (su / d0) ** -beta)
                                             - np.log(sy)) ** 2))))
  if len(totals) < MIN_REPEATED_TOTALS:
    return {**out, 'status': 'not identified',
            'reason': f'R* needs repeated runs (before their overfitting minimum) at '
                      f'{MIN_REPEATED_TOTALS}+ total-token budgets; this grid has {len(totals)}'}
  ru = np.array([u for u, _, _ in repeated])
  re_ = np.array([e for _, e, _ in repeated])
  ry = np.array([l for _, _, l in repeated])
  r_star = _fit_r_star(ru, re_, ry, base, d0)
  rng = np.random.default_rng(seed)
  boot = []
  for _ in range(resamples):
    i = rng.integers(0, len(su), len(su))
    j = rng.integers(0, len(ru), len(ru))
    if (len(set(su[i])) < MIN_SINGLE_EPOCH_BUDGETS
        or len({round(u * x) for u, x in zip(ru[j], re_[j])}) < MIN_REPEATED_TOTALS):
      continue  # a resample the design itself could not fit
    b = _fit_base(su[i], sy[i], d0, start=base)
    if b is not None:
      boot.append(_fit_r_star(ru[j], re_[j], ry[j], b, d0))
  out['R_star'] = r_star
  out['bootstrap_fits'] = len(boot)
  if boot:
    out['R_star_ci95'] = [float(v) for v in np.percentile(boot, [2.5, 97.5])]
  share_at_bound = float(np.mean([_at_bound(r) for r in boot])) if boot else 1.0
  if _at_bound(r_star) or share_at_bound > 0.05:
    return {**out, 'status': 'not identified',
            'reason': f'R* lies on its bound {R_STAR_BOUNDS} (estimate {r_star:.3g}; '
                      f'{share_at_bound:.0%} of bootstrap fits)'}
  return {**out, 'status': 'identified', 'reason': ''}


def scaling_fits(rows: list[dict]) -> dict:
  """{model: {objective: fit}} on the final validation loss of each objective's plain runs."""
  out = {}
  for model in sorted({r['model'] for r in rows}, key=_model_order(rows)):
    out[model] = {}
    for obj in sorted({r['objective'] for r in rows if r['model'] == model}):
      sel = [r for r in rows if r['model'] == model and r['objective'] == obj
             and not r.get('variant')]
      out[model][obj] = fit_scaling_law(
          [{'unique_tokens': r['unique_tokens'], 'epochs': r['epochs'],
            'loss': r['val_bits_per_byte'], 'best': r['best_val_bits_per_byte']} for r in sel])
  return out


# ---------------------------------------------------------------------------------------------
# Plots

def _spans_decades(values) -> bool:
  v = [float(x) for x in values if x is not None and x > 0]
  return len(v) > 1 and max(v) / min(v) >= 10


def _grid_axes(plt, n: int, width: float = 5.0, height: float = 4.0):
  ncols = min(3, max(n, 1))
  nrows = max(1, math.ceil(n / ncols))
  fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
  flat = list(axes.flat)
  for ax in flat[n:]:
    ax.set_visible(False)
  return fig, flat[:n]


def _log_scale(ax, which: str, fmt) -> None:
  """Makes `which` ('x' or 'y') of `ax` a log axis labelled at 1, 2 and 5 x 10^k with
  `fmt(value)`: matplotlib's default labels every minor tick in scientific notation when the
  range spans less than a decade, and those labels overlap."""
  from matplotlib import ticker
  getattr(ax, f'set_{which}scale')('log')
  axis = getattr(ax, f'{which}axis')
  axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt(v)))
  axis.set_minor_formatter(ticker.NullFormatter())


def _fmt_flops(v) -> str:
  return f'{v:.0e}'.replace('e+', 'e')


def _fmt_opt(v) -> str:
  """A figure a task may not have (a generation task has no delta NLL): '-' if None."""
  return '-' if v is None else f'{v:.3f}'


def _fmt_tokens(n) -> str:
  n = float(n)
  for scale, suffix in ((1e12, 'T'), (1e9, 'B'), (1e6, 'M'), (1e3, 'K')):
    if abs(n) >= scale:
      return f'{n / scale:.3g}{suffix}'
  return f'{n:.3g}'


def plot_epochs(rows, cross, path) -> None:
  """Final and best bits/byte vs epochs, AR vs MDM, one panel per model size."""
  import matplotlib.pyplot as plt
  models = sorted({r['model'] for r in rows}, key=_model_order(rows))
  # One panel gets the width of two: the title and the legend need it.
  fig, axes = _grid_axes(plt, len(models), width=7.0 if len(models) == 1 else 5.0)
  for ax, model in zip(axes, models):
    mrows = [r for r in rows if r['model'] == model]
    budgets = sorted({r['budget_tokens'] for r in mrows})
    for bi, budget in enumerate(budgets):
      brows = [r for r in mrows if r['budget_tokens'] == budget]
      tag = f', {_fmt_tokens(budget)} tok' if len(budgets) > 1 else ''
      for obj in OBJECTIVES:
        orows = [r for r in brows if r['objective'] == obj]
        if not orows:
          continue
        for metric, style, marker in (('final', '-', 'o'), ('best', '--', 'x')):
          field = METRICS[metric]
          means = _mean_by(orows, lambda r: r['epochs'], field)
          xs = sorted(means)
          ax.plot(xs, [means[x] for x in xs], style, marker=marker, color=COLORS[obj],
                  alpha=1.0 - 0.5 * bi / max(len(budgets), 1),
                  label=f'{LABELS[obj]} {metric}{tag}')
    c = cross.get(model, {}).get('final', {})
    if c.get('epochs'):
      ax.axvline(c['epochs'], color='gray', lw=1, ls=':',
                 label=f'crossover (final): {c["epochs"]:.3g} ep')
    if _spans_decades([r['epochs'] for r in mrows]):
      _log_scale(ax, 'x', lambda v: f'{v:g}')
    if len(budgets) == 1 and budgets[0]:
      # At a fixed total budget, epochs and unique tokens are one axis read two ways.
      t = float(budgets[0])
      sec = ax.secondary_xaxis('top', functions=(lambda e, t=t: t / np.maximum(e, 1e-30),
                                                 lambda uu, t=t: t / np.maximum(uu, 1e-30)))
      sec.set_xlabel('unique tokens U (tokens)')
      if ax.get_xscale() == 'log':
        from matplotlib import ticker
        sec.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _fmt_tokens(v)))
      ax.set_title(f'model {model}: {_fmt_tokens(t)} total tokens')
    else:
      ax.set_title(f'model {model}')
    ax.set_xlabel('epochs (passes over the unique tokens)')
    ax.set_ylabel('validation bits/byte')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  _finish(plt, fig, 'Final (solid) and best (dashed) validation bits/byte vs epochs, AR vs MDM',
          path)


def _label_panel(ax, unique_tokens, xlabel: str, labelled) -> None:
  ax.set_title(f'U = {_fmt_tokens(unique_tokens)} unique tokens')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('validation bits/byte')
  ax.grid(True, which='both', alpha=0.3)
  if labelled:
    ax.legend(fontsize=8)


def _finish(plt, fig, title: str, path) -> None:
  fig.suptitle(title, wrap=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_curves(rows, entries, path) -> None:
  """Validation bits/byte vs epoch for every run, one panel per unique budget, with each
  model's training-time crossover (`entries`, from training_crossovers) as a vertical line."""
  import matplotlib.pyplot as plt
  budgets = sorted({r['unique_tokens'] for r in rows})
  models = sorted({r['model'] for r in rows}, key=_model_order(rows))
  styles = ['-', '--', ':', '-.']
  fig, axes = _grid_axes(plt, len(budgets))
  for ax, u in zip(axes, budgets):
    xs_all = []
    labelled = set()
    for r in sorted((r for r in rows if r['unique_tokens'] == u),
                    key=lambda r: (r['objective'], str(r['model']), r['seed'])):
      pts = [(p['epoch'], p['val_bits_per_byte']) for p in r['curve']
             if p.get('epoch') is not None and p.get('val_bits_per_byte') is not None]
      if not pts:
        continue
      xs_all += [x for x, _ in pts]
      label = f'{LABELS.get(r["objective"], r["objective"])} {r["model"]}'
      ax.plot(*zip(*pts), styles[models.index(r['model']) % len(styles)],
              color=COLORS.get(r['objective'], 'gray'), lw=1.2,
              label=None if label in labelled else label)
      labelled.add(label)
    for c in entries:
      if c['unique_tokens'] == u and c['epochs'] is not None:
        label = f'crossover {c["model"]}: {c["epochs"]:.3g} ep'
        ax.axvline(c['epochs'], color='gray', lw=1,
                   ls=styles[models.index(c['model']) % len(styles)], label=label)
        labelled.add(label)
    if _spans_decades(xs_all) and max(xs_all) / min(x for x in xs_all if x > 0) >= 100:
      ax.set_xscale('log')  # points at epoch 0 drop out of a log axis; the rest stay readable
    _label_panel(ax, u, 'epoch (training tokens seen / U)', labelled)
  _finish(plt, fig, 'Training curves: validation bits/byte vs epoch, AR vs MDM', path)


def plot_flops(rows, path) -> None:
  """Validation bits/byte vs training FLOPs, AR vs MDM, one panel per unique budget.

  Curves are each run's evaluations at tokens_seen x FLOPs/token; markers are final values.
  Across model sizes this is the compute-matched comparison on the same unique data.
  """
  import matplotlib.pyplot as plt
  budgets = sorted({r['unique_tokens'] for r in rows})
  models = sorted({r['model'] for r in rows}, key=_model_order(rows))
  styles = ['-', '--', ':', '-.']
  markers = ['o', 's', '^', 'D', 'v', 'P']
  fig, axes = _grid_axes(plt, len(budgets))
  for ax, u in zip(axes, budgets):
    labelled = set()
    for r in sorted((r for r in rows if r['unique_tokens'] == u),
                    key=lambda r: (r['objective'], str(r['model']), r['seed'])):
      if not r['flops'] or not r['train_tokens']:
        continue
      mi = models.index(r['model'])
      color = COLORS.get(r['objective'], 'gray')
      label = f'{LABELS.get(r["objective"], r["objective"])} {r["model"]}'
      # FLOPs grow linearly with tokens seen, so a curve's x is tokens_seen x FLOPs/token.
      per_token = float(r['flops']) / float(r['train_tokens'])
      pts = [(p['tokens_seen'] * per_token, p['val_bits_per_byte']) for p in r['curve']
             if p.get('tokens_seen') and p.get('val_bits_per_byte') is not None]
      if pts:
        ax.plot(*zip(*pts), styles[mi % len(styles)], color=color, lw=1, alpha=0.6)
      if r['val_bits_per_byte'] is not None:
        ax.plot([float(r['flops'])], [r['val_bits_per_byte']], markers[mi % len(markers)],
                color=color, ms=6, label=None if label in labelled else label + ' (final)')
        labelled.add(label)
    # Compute spans decades across model sizes; log also keeps one scale for every panel.
    _log_scale(ax, 'x', _fmt_flops)
    _label_panel(ax, u, 'training compute (FLOPs)', labelled)
  _finish(plt, fig, 'FLOPs-matched view: validation bits/byte vs training FLOPs, AR vs MDM', path)


def plot_training_crossover(rows, entries, path) -> None:
  """Training tokens (left) and epochs (right) at the training-time crossover vs unique tokens.

  One line per model; a crossover not reached by the end of the run is a hollow triangle at
  the run's length (the crossover, if any, lies above it).
  """
  import matplotlib.pyplot as plt
  models = sorted({c['model'] for c in entries}, key=_model_order(rows))
  markers = ['o', 's', '^', 'D', 'v', 'P']
  fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=True)
  for mi, model in enumerate(models):
    cs = sorted((c for c in entries if c['model'] == model and c['main_budget']),
                key=lambda c: c['unique_tokens'])
    color = f'C{mi}'
    for ax, key, scale in ((ax_t, 'tokens', lambda c: 1.0), (ax_e, 'epochs',
                                                              lambda c: 1.0 / c['unique_tokens'])):
      hit = [(c['unique_tokens'], c[key]) for c in cs if c[key] is not None]
      miss = [(c['unique_tokens'], c['train_tokens'] * scale(c)) for c in cs if not c['reached']]
      early = [(c['unique_tokens'], c['first_eval_tokens'] * scale(c)) for c in cs
               if c['status'] == 'mdm_ahead_from_start' and c['first_eval_tokens'] > 0]
      if early:
        ax.plot(*zip(*early), ls='none', marker='v', mfc='none', color=color, ms=9, mew=1.5,
                label=f'{model}: MDM ahead from the first eval')
      if hit:
        ax.plot(*zip(*hit), '-', marker=markers[mi % len(markers)], color=color, ms=7,
                label=f'{model}: crossover')
        for x, y in hit:
          ax.annotate(_fmt_tokens(y) if key == 'tokens' else f'{y:.3g}', (x, y), fontsize=8,
                      color=color, textcoords='offset points', xytext=(7, 4))
      if miss:
        ax.plot(*zip(*miss), ls='none', marker='^', mfc='none', color=color, ms=9, mew=1.5,
                label=f'{model}: not reached by the end of the run')
  for ax, what in ((ax_t, 'training tokens at the crossover'),
                   (ax_e, 'epochs at the crossover')):
    _log_scale(ax, 'x', _fmt_tokens)
    _log_scale(ax, 'y', _fmt_tokens if ax is ax_t else (lambda v: f'{v:g}'))
    ax.margins(x=0.15, y=0.15)
    ax.set_xlabel('unique tokens U')
    ax.set_ylabel(what)
    ax.grid(True, which='both', alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  ax_t.set_title('when the MDM curve goes below the AR curve')
  ax_e.set_title('the same, in passes over U')
  _finish(plt, fig, 'Crossover in training time: later with more unique data? '
          'earlier with a larger model?', path)


def _save_plot(fn, args, path: pathlib.Path) -> None:
  # Rendered to a temporary name and renamed, like every other report file.
  tmp = path.with_name(f'.{path.name}.tmp.png')
  try:
    fn(*args, tmp)
    tmp.replace(path)
  finally:
    tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The report

def _f(x, spec='.4f') -> str:
  return '-' if x is None else format(x, spec)


def _crossover_sentence(model, metric, c) -> str:
  what = {'final': 'final validation bits/byte (MDM: ELBO, an upper bound; AR: exact NLL)',
          'best': 'lowest validation bits/byte within each run (a mid-schedule checkpoint; '
                  'biased toward the noisier MDM estimate)'}[metric]
  span = ''
  if c.get('range'):
    span = f' over U = {_fmt_tokens(c["range"][0])} .. {_fmt_tokens(c["range"][1])}'
  budget = f' at {_fmt_tokens(c["train_tokens"])} total tokens' if c.get('train_tokens') else ''
  s = c['status']
  if s == 'crossed':
    side = ('MDM better below it, AR above' if c['direction'] == 'mdm_better_below'
            else 'AR better below it, MDM above')
    more = f' ({len(c["crossings"])} sign changes)' if len(c['crossings']) > 1 else ''
    ep = f' = {c["epochs"]:.3g} epochs' if c.get('epochs') else ''
    return (f'- **{model}**, {what}{budget}: crossover at U = {_fmt_tokens(c["unique_tokens"])} '
            f'unique tokens{ep}; {side}{more}.')
  if s == 'mdm_better_everywhere':
    return (f'- **{model}**, {what}{budget}: not reached in range{span}: MDM better '
            f'everywhere{_ties(c)}.')
  if s == 'ar_better_everywhere':
    return (f'- **{model}**, {what}{budget}: not reached in range{span}: AR better '
            f'everywhere{_ties(c)}.')
  if s == 'tie':
    return f'- **{model}**, {what}{budget}: AR and MDM tie at every U{span}.'
  return f'- **{model}**, {what}: no unique budget has complete runs of both objectives.'


def _claim_holds(c) -> bool:
  # The papers' claim: MDM wins when unique data is scarce and AR when it is plentiful.
  return c['status'] == 'crossed' and c['direction'] == 'mdm_better_below'


def _timing_status(c) -> str:
  if c['status'] == 'crossed':
    return _fmt_tokens(c['tokens'])
  return {'mdm_ahead_from_start': f'MDM ahead from the first eval '
                                  f'({_fmt_tokens(c["first_eval_tokens"])})',
          'not_reached': 'not reached'}.get(c['status'], '-')


def _timing_markdown(entries, trends) -> list[str]:
  lines = ['## Crossover in training time', '',
           'For each model and unique budget U: the training tokens at which the MDM\'s '
           'validation curve (seed-averaged) goes below the AR\'s, interpolated linearly between '
           'eval points; "not reached": AR stays ahead to the end of the run. The papers expect '
           'it later with more unique data and earlier with a larger model.', '',
           '| model | U | run: tokens (epochs) | crossover: training tokens | epochs '
           '| share of run | MDM ahead at end | seeds |',
           '|---|---:|---:|---:|---:|---:|---|---:|']
  for c in entries:
    other = '' if c['main_budget'] else ' (other budget)'
    # A noisy MDM curve can cross back and forth; say so rather than hide it.
    changes = f' ({c["lead_changes"]} lead changes)' if c['lead_changes'] > 1 else ''
    lines.append(
        f'| {c["model"]}{other} | {_fmt_tokens(c["unique_tokens"])} '
        f'| {_fmt_tokens(c["train_tokens"])} ({_f(c["run_epochs"], ".4g")}) '
        f'| {_timing_status(c)} | {_f(c["epochs"], ".3g")} | {_f(c["fraction"], ".0%")} '
        f'| {"yes" if c["mdm_ahead_at_end"] else "no"}{changes} | {c["seeds"]} |')
  lines.append('')
  for model, v in trends['more_unique_data'].items():
    lines.append(f'- **{model}**: later with more unique data? **{v["answer"]}** '
                 f'({v["detail"]}).')
  for pair, v in trends['larger_model'].items():
    lines.append(f'- **{pair}**: earlier with the larger model? **{v["answer"]}** '
                 f'({v["detail"]}).')
  return lines


def _fit_intro() -> str:
  return ('L(D\') = E + B / D\'^beta with D\' = U + U R* (1 - exp(-R / R*)), R = epochs - 1, '
          'fitted in Muennighoff et al.\'s (2023) two stages to final validation bits/byte: '
          'E, B, beta from single-epoch runs at several unique budgets, then R* alone from the '
          'repeated runs at two or more total budgets that are not past their overfitting '
          'minimum; Huber loss on log loss, several starts, 95% interval from a bootstrap over '
          'the points. A figure is given only where it is identified. Published: R* about '
          f'{PUBLISHED_R_STAR["ar"]:g} for AR (Muennighoff et al.) and about '
          f'{PUBLISHED_R_STAR["mdm"]:g} for diffusion (Prabhudesai et al. 2025); the first '
          'paper (arXiv 2511.03276) objects that this formulation, fitted to validation loss, '
          'misses that downstream accuracy keeps improving after the loss turns up, so it reads '
          'R* as a lower bound on the useful repetitions, not their limit.')


def _markdown(grid, rows, incomplete, cross, fits, plots, timing, trends, claims) -> str:
  total = len(rows) + len(incomplete)
  lines = [f'# Report: grid `{grid.name}`', '',
           f'{getattr(grid, "description", "")}', '',
           f'- hardware: {getattr(grid, "hardware", "-")}',
           f'- runs complete: {len(rows)}/{total}', '',
           'Bits/byte are on held-out validation documents (MDM: the ELBO bound); `best` is the '
           'lowest validation loss during training and its step (early stopping).', '']
  if incomplete:
    lines += ['## Incomplete runs (no result.json; left out of the analysis)', '',
              *[f'- `{n}`' for n in incomplete], '']
  lines += ['## Runs', '',
            '| run | objective | model | params | unique tokens | epochs | train tokens | FLOPs '
            '| final bits/byte | best bits/byte (step) | seed |',
            '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    params = _fmt_tokens(r['params']) if r['params'] else '-'
    lines.append(
        f'| `{r["name"]}` | {r["objective"]} | {r["model"]} | {params} '
        f'| {_fmt_tokens(r["unique_tokens"])} | {r["epochs"]:.4g} '
        f'| {_fmt_tokens(r["train_tokens"])} | {_f(r["flops"], ".3g")} '
        f'| {_f(r["val_bits_per_byte"])} | {_f(r["best_val_bits_per_byte"])} '
        f'({r["best_step"] if r["best_step"] is not None else "-"}) | {r["seed"]} |')
  lines += ['', *claims_lib.markdown(claims)]
  lines += ['', '## Crossover', '',
            'd(U) = bits/byte(AR) - bits/byte(MDM), seed-averaged, at a fixed total-token budget; '
            'the crossover is where d changes sign, interpolated linearly in log U '
            '(epochs = total tokens / U).', '']
  for model, entry in cross.items():
    for metric in ('final', 'best'):
      lines.append(_crossover_sentence(model, metric, entry[metric]))
  lines.append('')
  for metric, proto in (('final', 'Final validation values (MDM ELBO vs AR exact NLL)'),
                        ('best', 'Within-run lowest values')):
    held = [m for m, e in cross.items() if _claim_holds(e[metric])]
    lines.append(f'- {proto}: MDM overtakes AR as unique data shrinks for '
                 f'{len(held)}/{len(cross)} model sizes'
                 + (f' ({", ".join(map(str, held))}).' if held else '.'))
  lines += ['', *_timing_markdown(timing, trends), '', '## Data-constrained scaling law', '',
            _fit_intro(),
            '', '| model | objective | status | E | B | beta | R* (95% interval) '
            '| single-epoch points | repeated points (totals; past minimum, left out) |',
            '|---|---|---|---:|---:|---:|---:|---:|---|']
  for model, per_obj in fits.items():
    for obj, fit in per_obj.items():
      r_star = '-'
      if fit['status'] == 'identified':
        ci = fit.get('R_star_ci95')
        r_star = f'{fit["R_star"]:.3g}' + (f' ({ci[0]:.3g} .. {ci[1]:.3g})' if ci else '')
      status = fit['status'] + (f': {fit["reason"]}' if fit.get('reason') else '')
      lines.append(f'| {model} | {obj} | {status} | {_f(fit.get("E"), ".4g")} '
                   f'| {_f(fit.get("B"), ".4g")} | {_f(fit.get("beta"), ".4g")} | {r_star} '
                   f'| {fit["single_epoch_points"]} | {fit["repeated_points"]} '
                   f'({len(fit["totals"])}; {fit["excluded_overfit"]}) |')
  lines += _accuracy_markdown(rows)
  lines += ['', '## Plots', '']
  for p in plots:
    lines += [f'![{p}]({p})', '']
  return '\n'.join(lines) + '\n'


def write_report(grid, out_dir) -> dict:
  """Writes report.md, summary.json and the PNG plots of `grid` into `out_dir`.

  Runs are read from `out_dir/runs/<RunSpec.name>/`. Returns the summary:
  {"grid", "runs": [...], "incomplete": [names],
   "crossover": {model: {"final", "best"}}             (crossover in unique tokens: crossover()),
   "training_crossover": [entry per (model, U)]        (in training time: training_crossovers()),
   "training_crossover_trends": {"more_unique_data", "larger_model"}       (timing_trends()),
   "scaling_fit": {model: {objective: fit}}                          (fit_scaling_law()),
   "accuracy": {task: {"crossover", "rising_val_loss"}}             (accuracy_summary()),
   "claims": [{"claim", "model", "verdict", "figures", "values"}]   (experiments/claims.py),
   "plots": [file names]}.
  """
  import matplotlib
  # No display on a cluster node or in CI; a notebook's inline backend renders off-screen
  # already, and switching it away would stop the notebook's own plots.
  if 'inline' not in matplotlib.get_backend():
    matplotlib.use('Agg')

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows, incomplete = collect_runs(grid, out)
  cross = crossovers(rows)
  timing = training_crossovers(rows)
  trends = timing_trends(timing, _model_order(rows))
  fits = scaling_fits(rows)
  acc = accuracy_summary(rows)
  checks = [c for t in acc.values() for c in t['rising_val_loss']]
  claims = claims_lib.claims(rows, trends, fits, checks, _model_order(rows))

  plots = []
  for name, fn, args in accuracy_plots(rows):
    _save_plot(fn, args, out / name)
    plots.append(name)
  if rows:
    for name, fn, args in (('val_bpb_vs_epochs.png', plot_epochs, (rows, cross)),
                           ('training_curves.png', plot_curves, (rows, timing)),
                           ('training_crossover.png', plot_training_crossover, (rows, timing)),
                           ('val_bpb_vs_flops.png', plot_flops, (rows,))):
      _save_plot(fn, args, out / name)
      plots.append(name)

  run_keys = ('name', 'objective', 'model', 'params', 'unique_tokens', 'epochs', 'train_tokens',
              'flops', 'val_loss', 'val_bits_per_byte', 'best_val_bits_per_byte', 'best_step',
              'seed')
  summary: dict[str, Any] = {
      'grid': grid.name,
      'runs': [{k: r[k] for k in run_keys} for r in rows],
      'incomplete': incomplete,
      'crossover': cross,
      'training_crossover': timing,
      'training_crossover_trends': trends,
      'scaling_fit': fits,
      'plots': plots,
  }
  # JSON keys must be strings; budgets key nothing, so only model labels need it.
  summary['crossover'] = {str(k): v for k, v in cross.items()}
  summary['scaling_fit'] = {str(k): v for k, v in fits.items()}
  summary['runs'] = [dict(s, tasks=r['tasks']) if r['tasks'] else s
                     for s, r in zip(summary['runs'], rows)]
  summary['accuracy'] = acc
  summary['claims'] = claims
  write_json_atomic(out / 'summary.json', summary)
  write_text_atomic(out / 'report.md', _markdown(grid, rows, incomplete, cross, fits, plots, timing,
                                                   trends, claims))
  return summary


# ---------------------------------------------------------------------------------------------
# Downstream accuracy (runs trained with eval.tasks, e.g. the code cloze)
#
# Each run's result.json carries the final task metrics and its eval.jsonl records carry them
# at the task evaluation steps. The crossover on accuracy uses d(U) = acc_MDM - acc_AR, which,
# like bpb_AR - bpb_MDM, is positive where the MDM is better, so `crossover` reads it alike.
# The papers' claim "validation loss rises while accuracy improves" is tested on each
# objective's many-epoch runs: from the step of best validation loss to the end of training.

def task_names(rows) -> list[str]:
  return sorted({t for r in rows for t in r['tasks']})


def _task_curve(run: dict, task: str) -> list[dict]:
  return [{'step': p['step'], 'epoch': p.get('epoch'), 'bpb': p.get('val_bits_per_byte'),
           **p['tasks'][task]} for p in run['curve'] if task in p.get('tasks', {})]


def accuracy_crossovers(rows, task: str) -> dict:
  """{model: crossover of acc_MDM - acc_AR over U} at each model's main total budget."""
  out = {}
  for model in sorted({r['model'] for r in rows}, key=_model_order(rows)):
    mrows = [dict(r, acc=r['tasks'][task]['acc']) for r in rows
             if r['model'] == model and task in r['tasks']]
    if mrows:
      budget = _main_budget(mrows)
      out[model] = budget_crossover([r for r in mrows if r['budget_tokens'] == budget], 'acc',
                                    budget, higher_is_better=True)
  return out


def many_epoch_runs(rows, task: str) -> list[dict]:
  """Per model and objective, the runs with the most epochs that have a task curve."""
  out = []
  for key in sorted({(str(r['model']), r['objective']) for r in rows}):
    sel = [r for r in rows if (str(r['model']), r['objective']) == key
           and len(_task_curve(r, task)) >= 2]
    if sel:
      top = max(r['epochs'] for r in sel)
      out += sorted((r for r in sel if r['epochs'] == top), key=lambda r: r['seed'])
  return out


def rising_loss_check(run: dict, task: str) -> dict | None:
  """From the task evaluation nearest the best validation loss to the last one: how
  validation bits/byte, accuracy and delta NLL moved (None without two task points)."""
  curve = [p for p in _task_curve(run, task) if p['bpb'] is not None]
  if len(curve) < 2:
    return None
  best = min(curve, key=lambda p: p['bpb'])
  last = curve[-1]
  d_acc = last['acc'] - best['acc']
  se = math.hypot(best.get('acc_stderr', 0.0), last.get('acc_stderr', 0.0))
  return {'run': run['name'], 'objective': run['objective'], 'model': run['model'],
          'epochs': run['epochs'], 'best_step': best['step'], 'last_step': last['step'],
          'bpb_best': best['bpb'], 'bpb_last': last['bpb'], 'acc_best': best['acc'],
          'acc_last': last['acc'], 'acc_change_se': d_acc / se if se else None,
          'delta_nll_best': best.get('delta_nll'), 'delta_nll_last': last.get('delta_nll'),
          'loss_rose': last['bpb'] > best['bpb'], 'acc_improved': d_acc > 0}


def accuracy_summary(rows) -> dict:
  out = {}
  for task in task_names(rows):
    checks = [c for c in (rising_loss_check(r, task) for r in many_epoch_runs(rows, task)) if c]
    out[task] = {'crossover': {str(k): v for k, v in accuracy_crossovers(rows, task).items()},
                 'rising_val_loss': checks}
  return out


def plot_accuracy(rows, task: str, cross: dict, path) -> None:
  """Final accuracy vs epochs per model, AR vs MDM, with the chance level."""
  import matplotlib.pyplot as plt
  models = sorted({r['model'] for r in rows if task in r['tasks']}, key=_model_order(rows))
  fig, axes = _grid_axes(plt, len(models))
  for ax, model in zip(axes, models):
    mrows = [r for r in rows if r['model'] == model and task in r['tasks']]
    for obj in OBJECTIVES:
      orows = [dict(r, acc=r['tasks'][task]['acc'], se=r['tasks'][task].get('acc_stderr', 0.0))
               for r in mrows if r['objective'] == obj]
      if not orows:
        continue
      acc = _mean_by(orows, lambda r: r['epochs'], 'acc')
      se = _mean_by(orows, lambda r: r['epochs'], 'se')
      xs = sorted(acc)
      ax.errorbar(xs, [acc[x] for x in xs], yerr=[se[x] for x in xs], marker='o',
                  color=COLORS[obj], capsize=3, label=f'{LABELS[obj]} final')
    ax.axhline(float(np.mean([r['tasks'][task]['chance'] for r in mrows])), color='gray',
               ls='--', lw=1, label='chance')
    c = cross.get(model, {})
    if c.get('epochs'):
      ax.axvline(c['epochs'], color='gray', lw=1, ls=':',
                 label=f'crossover (accuracy): {c["epochs"]:.3g} ep')
    if _spans_decades([r['epochs'] for r in mrows]):
      _log_scale(ax, 'x', lambda v: f'{v:g}')
    ax.set_title(f'model {model}')
    ax.set_xlabel('epochs (passes over the unique tokens)')
    ax.set_ylabel(f'{task} accuracy')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
  _finish(plt, fig, f'{task}: final accuracy vs epochs, AR vs MDM (bars: 1 standard error)', path)


def plot_loss_and_accuracy(rows, task: str, path) -> None:
  """Many-epoch runs over training: validation bits/byte, accuracy and delta NLL vs epoch."""
  import matplotlib.pyplot as plt
  runs = many_epoch_runs(rows, task)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4), squeeze=False)
  labelled = set()
  for r in runs:
    curve = _task_curve(r, task)
    label = f'{LABELS.get(r["objective"], r["objective"])} {r["model"]}, {r["epochs"]:.4g} ep'
    style = dict(color=COLORS.get(r['objective'], 'gray'), lw=1.2, marker='.',
                 label=None if label in labelled else label)
    labelled.add(label)
    val = [(p['epoch'], p['val_bits_per_byte']) for p in r['curve']
           if p.get('epoch') is not None and p.get('val_bits_per_byte') is not None]
    if val:
      axes[0][0].plot(*zip(*val), **style)
    axes[0][1].plot([p['epoch'] for p in curve], [p['acc'] for p in curve], **style)
    axes[0][2].plot([p['epoch'] for p in curve], [p['delta_nll'] for p in curve], **style)
  if runs:
    axes[0][1].axhline(runs[0]['tasks'].get(task, {}).get('chance', 0.25), color='gray', ls='--',
                       lw=1, label='chance')
  for ax, ylabel in zip(axes[0], ('validation bits/byte', f'{task} accuracy',
                                  f'{task} delta NLL (alternatives - true, nats)')):
    ax.set_xlabel('epoch')
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  _finish(plt, fig, f'Many-epoch runs over training: validation loss, {task} accuracy and '
          'delta NLL', path)


def accuracy_plots(rows) -> list[tuple]:
  plots = []
  for task in task_names(rows):
    cross = accuracy_crossovers(rows, task)
    plots.append((f'{task}_acc_vs_epochs.png', plot_accuracy, (rows, task, cross)))
    if many_epoch_runs(rows, task):
      plots.append((f'{task}_loss_and_acc_over_training.png', plot_loss_and_accuracy,
                    (rows, task)))
  return plots


def _accuracy_sentence(model, c) -> str:
  if c['status'] == 'crossed':
    side = ('MDM more accurate below it, AR above' if c['direction'] == 'mdm_better_below'
            else 'AR more accurate below it, MDM above')
    ep = f' = {c["epochs"]:.3g} epochs' if c.get('epochs') else ''
    return (f'- **{model}**: crossover on accuracy at U = {_fmt_tokens(c["unique_tokens"])} '
            f'unique tokens{ep}; {side}.')
  what = {'mdm_better_everywhere': 'MDM more accurate at every U',
          'ar_better_everywhere': 'AR more accurate at every U',
          'tie': 'AR and MDM tie at every U'}.get(c['status'])
  if what is None:
    return f'- **{model}**: no unique budget has task results for both objectives.'
  span = (f' over U = {_fmt_tokens(c["range"][0])} .. {_fmt_tokens(c["range"][1])}'
          if c.get('range') else '')
  return f'- **{model}**: no crossover on accuracy{span}: {what}{_ties(c)}.'


def _ties(c) -> str:
  ties = c.get('ties') if c['status'] != 'tie' else None
  return f' but a tie at U = {", ".join(_fmt_tokens(u) for u in ties)}' if ties else ''


def _accuracy_markdown(rows) -> list[str]:
  lines = []
  for task in task_names(rows):
    trows = [r for r in rows if task in r['tasks']]
    chance = float(np.mean([r['tasks'][task]['chance'] for r in trows]))
    lines += ['', f'## Downstream accuracy: `{task}`', '',
              f'Final multiple-choice accuracy (chance {chance:.0%}; +- one standard error over '
              'items), and delta NLL = mean NLL of the wrong choices - NLL of the right one '
              '(nats; larger: the right choice stands out more). MDM scores use the estimator '
              'named, with K samples per choice.', '',
              '| run | objective | unique tokens | epochs | acc | acc_norm | delta NLL | items '
              '| estimator |', '|---|---|---:|---:|---:|---:|---:|---:|---|']
    for r in trows:
      m = r['tasks'][task]
      z = (m['acc'] - m['chance']) / m['acc_stderr'] if m.get('acc_stderr') else float('nan')
      lines.append(f'| `{r["name"]}` | {r["objective"]} | {_fmt_tokens(r["unique_tokens"])} '
                   f'| {r["epochs"]:.4g} | {m["acc"]:.3f} +- {m.get("acc_stderr", 0):.3f} '
                   f'({z:+.1f} SE vs chance) | {m["acc_norm"]:.3f} | {_fmt_opt(m.get("delta_nll"))} '
                   f'| {m["items"]} | {m.get("estimator", "-")} (K={m.get("samples", "-")}) |')
    lines += ['', 'Crossover on accuracy (d(U) = acc_MDM - acc_AR, seed-averaged, linear in '
              'log U; compare with the bits/byte crossover above):', '']
    lines += [_accuracy_sentence(model, c) for model, c in accuracy_crossovers(rows, task).items()]
    checks = [c for c in (rising_loss_check(r, task) for r in many_epoch_runs(rows, task)) if c]
    if checks:
      lines += ['', '"Rising validation loss, improving accuracy" on the many-epoch runs, from '
                'the task evaluation nearest the best validation loss to the last one:', '',
                '| run | val bits/byte best -> last | acc best -> last (change in SE) '
                '| delta NLL best -> last |', '|---|---|---|---|']
      for c in checks:
        z = f'{c["acc_change_se"]:+.1f}' if c['acc_change_se'] is not None else '-'
        lines.append(f'| `{c["run"]}` | {c["bpb_best"]:.3f} -> {c["bpb_last"]:.3f} '
                     f'| {c["acc_best"]:.3f} -> {c["acc_last"]:.3f} ({z}) '
                     f'| {_fmt_opt(c["delta_nll_best"])} -> {_fmt_opt(c["delta_nll_last"])} |')
      both = [c['run'] for c in checks if c['loss_rose'] and c['acc_improved']]
      rose = [c['run'] for c in checks if c['loss_rose']]
      lines += ['', f'- Validation loss rose after its best point in {len(rose)}/{len(checks)} '
                f'many-epoch runs; accuracy still improved in {len(both)} of those'
                + (f' ({", ".join(f"`{b}`" for b in both)}).' if both else '.')]
  return lines
