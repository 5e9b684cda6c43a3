"""`make demo`: the `demo-tiny` grid, its report, and the verdicts on the papers' headline.

    python -m dlmjax.demo [--out DIR] [--workers N] [key=value ...]

Exactly `python -m experiments.grid run demo-tiny --workers N` (N: one training per CPU core,
at most one per run) followed by `report` (one code path: the grid runner trains, the report
analyses), then read back from the report's summary.json: a table of every run's final
validation bits/byte and macro accuracy on the embedded suite, and the verdicts of the
report's two crossover claims (experiments/claims.py): at the smallest unique budget (16K,
hundreds of epochs) and at one epoch of 1M, the MDM's final ELBO against AR's early-stopped
exact NLL, and the two macro accuracies (each objective at its most accurate length, chosen
on one half of the items and scored on the other), each difference with its standard error.
Re-running resumes: complete runs are skipped, partial ones continue from their checkpoint.

The results go to runs/grids/demo-tiny (so `python -m experiments.grid status demo-tiny` sees
them); with `key=value` overrides and no --out, to a directory named after the overrides, so
a `seed=1` demo never collides with the default one.
"""

from __future__ import annotations

import os
import re
import sys

from dlmjax.errors import UserError, exit_on_user_error
from experiments import registry
from experiments.claims import epochs_label

GRID = 'demo-tiny'


def default_workers() -> int:
  # One training per core: at this size two trainings side by side on 2 cores beat one
  # training using XLA's threads on both (the prototype's measurement, docs/study-notes.md).
  return max(1, min(len(registry.get(GRID).runs), os.cpu_count() or 1))

def demo_out(out: str | None, overrides: list[str]) -> str:
  """The grid's default directory, or one named after the overrides."""
  if out:
    return out
  base = f'runs/grids/{GRID}'
  if not overrides:
    return base
  return base + '-' + re.sub(r'[^A-Za-z0-9_.=,-]+', '_', ','.join(overrides))


def _count(n: float) -> str:
  for scale, suffix in ((1e9, 'B'), (1e6, 'M'), (1e3, 'K')):
    if n >= scale:
      return f'{n / scale:.4g}{suffix}'
  return f'{n:g}'


def _macro(tasks: dict) -> tuple[float, float] | None:
  """A run's macro accuracy over its multiple-choice tasks (a generation task, kind
  'generation', is left out) and that figure's standard error over items."""
  tasks = {t: m for t, m in tasks.items() if m.get('kind') != 'generation'}
  if not tasks:
    return None
  accs = [m['acc'] for m in tasks.values()]
  ses = [m.get('acc_stderr', 0.0) for m in tasks.values()]
  return sum(accs) / len(accs), sum(s * s for s in ses) ** 0.5 / len(ses)


def _as_list(epochs) -> list:
  return epochs if isinstance(epochs, list) else [epochs]


def _mean(values: list[float]) -> float | None:
  return sum(values) / len(values) if values else None


def table_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
  """One row per (unique tokens, objective, epochs), smallest budget first; values are means
  over seeds. The lengths the crossover claims compare are marked: 'val' (lowest final
  validation loss at that budget), 'acc' (most accurate, cross-fitted; experiments/claims.py)."""
  chosen: dict[tuple, set[str]] = {}
  for c in summary.get('claims', []):
    mark = {'crossover_validation': 'val', 'crossover_accuracy': 'acc'}.get(c['claim'])
    if mark is None or c['verdict'] == 'not tested':
      continue
    for end, u in zip(('small', 'large'), c['values']['unique_tokens']):
      g = c['values'][end]
      for obj in ('ar', 'mdm'):
        for ep in _as_list(g[f'{obj}_epochs']):
          chosen.setdefault((u, obj, ep), set()).add(mark)
  header = ['unique tokens', 'objective', 'epochs', 'final val bits/byte', 'macro accuracy',
            'compared']
  groups: dict[tuple, list[dict]] = {}
  for r in summary['runs']:
    groups.setdefault((r['unique_tokens'], r['objective'], r['epochs']), []).append(r)
  rows = []
  for (u, obj, ep), runs in sorted(groups.items()):
    bpb = _mean([r['val_bits_per_byte'] for r in runs if r.get('val_bits_per_byte') is not None])
    macros = [m for m in (_macro(r.get('tasks') or {}) for r in runs) if m]
    acc = '-'
    if macros:
      se = (sum(s * s for _, s in macros) ** 0.5) / len(macros)
      acc = f'{_mean([a for a, _ in macros]):.3f} +- {se:.3f}'
    rows.append([_count(u), obj.upper(), f'{ep:.4g}', '-' if bpb is None else f'{bpb:.3f}', acc,
                 ', '.join(m for m in ('val', 'acc') if m in chosen.get((u, obj, ep), ()))])
  return header, rows


def verdicts(summary: dict) -> list[str]:
  """The demo's verdicts, from the report's claims: at the smallest and the largest unique
  budget, who is better on validation (MDM ELBO vs AR's early-stopped exact NLL) and on macro
  accuracy, each with its standard error, and whether the crossover is shown."""
  lines = []
  for c in summary.get('claims', []):
    if c['claim'] not in ('crossover_validation', 'crossover_accuracy'):
      continue
    what = 'validation' if c['claim'] == 'crossover_validation' else 'downstream accuracy'
    if c['verdict'] == 'not tested':
      lines.append(f'{what}: not tested ({c["figures"]})')
      continue
    for end, u in zip(('small', 'large'), c['values']['unique_tokens']):
      g = c['values'][end]
      se = g['se'] if g['se'] is not None else float('nan')
      better = 'MDM' if g['diff'] > 0 else 'AR'
      sig = abs(g['diff']) > 2 * se
      if c['claim'] == 'crossover_validation':
        figure = (f'MDM final ELBO {g["mdm"]:.3f} ({g["mdm_epochs"]:g} ep) vs AR best exact NLL '
                  f'{g["ar"]:.3f} ({g["ar_epochs"]:g} ep), bits/byte')
      else:
        figure = (f'macro accuracy MDM {g["mdm"]:.3f} ({epochs_label(g["mdm_epochs"])} ep) vs '
                  f'AR {g["ar"]:.3f} ({epochs_label(g["ar_epochs"])} ep)')
      lines.append(f'U = {_count(u)}, {what}: {figure}: '
                   + (f'{better} better by {abs(g["diff"]):.3f} +- {se:.3f}' if sig else
                      f'no difference beyond 2 SE ({g["diff"]:+.3f} +- {se:.3f})')
                   + f' [{g["seeds"]} seed{"s" if g["seeds"] > 1 else ""}]')
    lines.append(f'crossover on {what}: {c["verdict"].upper()}')
  return lines


def print_summary(summary: dict) -> None:
  import rich.console
  import rich.table
  header, rows = table_rows(summary)
  table = rich.table.Table(
      title=f'{summary["grid"]}: final validation bits/byte (MDM: ELBO, an upper bound; AR: '
            f'exact) and macro accuracy over the embedded suite (+- 1 SE over items)',
      title_justify='left')
  for i, h in enumerate(header):
    table.add_column(h, justify='left' if i < 2 else 'right')
  for row in rows:
    table.add_row(*row)
  console = rich.console.Console(width=None if sys.stdout.isatty() else 160)
  console.print(table)
  for line in verdicts(summary):
    console.print('- ' + line, highlight=False)
  console.print('(each objective at its best length, paired by seed: on validation the '
                'lowest final loss, on accuracy the most accurate, chosen on one half of the '
                'items and scored on the other; the MDM\'s ELBO bounds its NLL from above, so '
                '"MDM better" on validation is conservative; accuracy SEs from a paired '
                'bootstrap over items and seeds. All claims: the report\'s claims table.)',
                highlight=False)


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
