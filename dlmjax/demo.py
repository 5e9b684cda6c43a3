"""`make demo`: the `crossover-tiny` grid, its report, and a short table of who wins where.

    python -m dlmjax.demo [--out DIR] [--workers N] [key=value ...]

Exactly `python -m experiments.grid run crossover-tiny --workers N` (N: one training per CPU
core, at most one per run) followed by `report`
(one code path: the grid runner trains, the report analyses), then a table read back from the
report's summary.json: per unique-token budget, its epochs, AR's and the MDM's final and best
validation bits/byte and which objective is better. Re-running resumes: complete runs are
skipped, partial ones continue from their checkpoint.

The results go to runs/grids/crossover-tiny (so `python -m experiments.grid status
crossover-tiny` sees them); with `key=value` overrides and no --out, to a directory named
after the overrides, so a `seed=1` demo never collides with the default one.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

from dlmjax.errors import UserError, exit_on_user_error
from experiments import registry

GRID = 'crossover-tiny'


def default_workers() -> int:
  # One training per core: at this size two trainings side by side on 2 cores beat one
  # training using XLA's threads on both (the prototype's measurement, docs/study-notes.md).
  return max(1, min(len(registry.get(GRID).runs), os.cpu_count() or 1))

# Columns of the table: the summary.json run keys compared between AR and the MDM (lower is
# better). Any other numeric per-run key (e.g. a task accuracy added by the evaluation) is
# shown as extra columns, without a winner, since its direction is not known here.
COMPARED = (('val_bits_per_byte', 'final'), ('best_val_bits_per_byte', 'best'))
NOT_METRICS = {'name', 'objective', 'model', 'params', 'unique_tokens', 'epochs', 'train_tokens',
               'flops', 'val_loss', 'best_step', 'seed', *(k for k, _ in COMPARED)}


def demo_out(out: str | None, overrides: list[str]) -> str:
  """The grid's default directory, or one named after the overrides."""
  if out:
    return out
  base = f'runs/grids/{GRID}'
  if not overrides:
    return base
  return base + '-' + re.sub(r'[^A-Za-z0-9_.=,-]+', '_', ','.join(overrides))


def _mean(values: list[float]) -> float | None:
  return sum(values) / len(values) if values else None


def table_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
  """The demo table from a report summary: (header, rows), one row per unique-token budget,
  smallest budget (most epochs) first; values are means over seeds."""
  runs = summary['runs']
  extras = sorted({k for r in runs for k, v in r.items()
                   if k not in NOT_METRICS and isinstance(v, (int, float))
                   and not isinstance(v, bool)})
  header = ['unique tokens', 'epochs']
  for _, label in COMPARED:
    header += [f'AR {label}', f'MDM {label}', f'better ({label})']
  header.append('MDM curve below AR')
  for key in extras:
    header += [f'AR {key}', f'MDM {key}']
  timing = {c['unique_tokens']: c for c in summary.get('training_crossover', [])
            if c.get('main_budget', True)}
  rows = []
  for u in sorted({r['unique_tokens'] for r in runs}):
    at_u = [r for r in runs if r['unique_tokens'] == u]
    value = lambda obj, key: _mean([float(r[key]) for r in at_u
                                    if r['objective'] == obj and r.get(key) is not None])
    row = _budget_cells(u, at_u)
    for key, _ in COMPARED:
      ar, mdm = value('ar', key), value('mdm', key)
      row += [_num(ar), _num(mdm), _winner(ar, mdm)]
    row.append(_timing(timing.get(u)))
    for key in extras:
      row += [_num(value('ar', key)), _num(value('mdm', key))]
    rows.append(row)
  return header, rows


def _budget_cells(unique_tokens: float, runs: list[dict]) -> list[str]:
  """The first two cells of a table row: the budget and its epochs (mean over the runs)."""
  return [_count(unique_tokens), f'{_mean([float(r["epochs"]) for r in runs]):.4g}']


def _count(n: float) -> str:
  for scale, suffix in ((1e9, 'B'), (1e6, 'M'), (1e3, 'K')):
    if n >= scale:
      return f'{n / scale:.4g}{suffix}'
  return f'{n:g}'


def _num(x: float | None) -> str:
  return '-' if x is None else f'{x:.3f}'


def _winner(ar: float | None, mdm: float | None) -> str:
  if ar is None or mdm is None:
    return '-'
  if ar == mdm:
    return 'tie'
  return f'{"MDM" if mdm < ar else "AR"} by {abs(ar - mdm):.2f}'


def _timing(c: dict | None) -> str:
  """When the MDM's validation curve went below the AR's, in epochs of training."""
  if c is None:
    return '-'
  if c['status'] == 'crossed':
    return f'after {c["epochs"]:.3g} ep'
  if c['status'] == 'mdm_ahead_from_start':
    return 'from the first eval'
  return 'never' if c['status'] == 'not_reached' else '-'


def task_rows(summary: dict, task: str) -> list[list[str]]:
  """Rows of the task table: unique tokens, epochs, then AR's and the MDM's final accuracy
  (+- one standard error over items, seed-averaged) and its distance from chance in standard
  errors; budgets in table_rows' order."""
  runs = [r for r in summary['runs'] if task in r.get('tasks', {})]
  rows = []
  for u in sorted({r['unique_tokens'] for r in runs}):
    at_u = [r for r in runs if r['unique_tokens'] == u]
    row = _budget_cells(u, at_u)
    for obj in ('ar', 'mdm'):
      scores = [r['tasks'][task] for r in at_u if r['objective'] == obj]
      if not scores:
        row += ['-', '-']
        continue
      acc = _mean([s['acc'] for s in scores])
      se = _mean([s['acc_stderr'] for s in scores]) / len(scores) ** 0.5
      chance = scores[0]['chance']
      row += [f'{acc:.3f} +- {se:.3f}', f'{(acc - chance) / se:+.1f}' if se > 0 else '-']
    rows.append(row)
  return rows


def conclusion(summary: dict) -> list[str]:
  """The sentences under the table: where the crossover in unique tokens lies."""
  lines = []
  for model, entry in summary.get('crossover', {}).items():
    for metric, what in (('final', 'final values'), ('best', 'early-stopped (best) values')):
      c = entry[metric]
      if c['status'] == 'crossed' and c['direction'] == 'mdm_better_below':
        lines.append(f'{what}: MDM beats AR below U = {_count(c["unique_tokens"])} unique tokens '
                     f'(above {c["epochs"]:.3g} epochs), AR wins above it.')
      elif c['status'] == 'crossed':
        lines.append(f'{what}: AR beats MDM below U = {_count(c["unique_tokens"])}, '
                     f'MDM above it (the reverse of the papers).')
      else:
        lines.append(f'{what}: no crossover in range ({c["status"].replace("_", " ")}).')
  return lines


def print_summary(summary: dict) -> None:
  import rich.console
  import rich.table
  header, rows = table_rows(summary)
  table = rich.table.Table(title=f'{summary["grid"]}: validation bits/byte (lower is better)',
                           title_justify='left')
  for i, h in enumerate(header):
    table.add_column(h, justify='left' if i == 0 else 'right')
  for row in rows:
    table.add_row(*row)
  console = rich.console.Console(width=None if sys.stdout.isatty() else 160)
  console.print(table)
  for line in conclusion(summary):
    console.print('- ' + line, highlight=False)
  console.print('(MDM values are Monte Carlo ELBO bounds; AR values are exact.)', highlight=False)
  for task in sorted({t for r in summary['runs'] for t in r.get('tasks', {})}):
    scored = [r for r in summary['runs'] if task in r.get('tasks', {})]
    first = scored[0]['tasks'][task]
    mdm = next((r['tasks'][task] for r in scored if r['objective'] == 'mdm'), {})
    how = f'; MDM: {mdm["estimator"]}, K={mdm["samples"]}' if 'estimator' in mdm else ''
    table = rich.table.Table(
        title=f'{task}: final accuracy (chance {first["chance"]:.0%}; {first["items"]} items'
              f'{how})', title_justify='left')
    for i, h in enumerate(['unique tokens', 'epochs', 'AR acc', 'SE above chance', 'MDM acc',
                           'SE above chance']):
      table.add_column(h, justify='left' if i == 0 else 'right')
    for row in task_rows(summary, task):
      table.add_row(*row)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
  from experiments import grid as grid_lib
  from experiments import report

  argv = sys.argv[1:] if argv is None else argv
  with exit_on_user_error():
    # The demo's default first: a --workers in argv comes later and wins.
    args = grid_lib.parse(['run', GRID, '--workers', str(default_workers()), *argv])
    if args.dry_run or args.only or args.grid != GRID:
      raise UserError(f'the demo runs the whole grid; for --only or --dry-run use '
                      f'python -m experiments.grid run {GRID}')
    out = demo_out(args.out, args.overrides)
  rc = grid_lib.main(['run', GRID, '--out', out, '--workers', str(args.workers),
                      *args.overrides])
  if grid_lib.stopped():
    print('stopped: run the same command again to resume')
    return rc
  out_path = grid_lib.out_dir(registry.get(GRID), out)
  summary = report.write_report(registry.get(GRID), out_path)
  print()
  print_summary(summary)
  print()
  grid_lib.print_report_files(out_path)
  return rc


if __name__ == '__main__':
  sys.exit(main())
