"""Runs a named grid: `python -m experiments.grid COMMAND [GRID] [options] [key=value ...]`.

Commands:
  list                 the grids, with their run counts and hardware
  show GRID            every run: name, unique tokens, epochs, tokens, FLOPs, overrides
  run GRID             trains every run not yet complete, each as `python -m dlmjax.train`
  status GRID          done / running / failed / pending, with progress and totals
  report GRID          report.md, PNG plots and summary.json in the output directory
  tensorboard GRID     TensorBoard on every run's curves, one chart per tag with all runs
                       (filter runs by name in its UI, e.g. `u16K` for one budget's AR and MDM)

Options:
  --out DIR            output directory (default runs/grids/GRID); run dirs are DIR/runs/NAME
  --only PATTERN       only runs whose names match this fnmatch pattern (e.g. 'mdm-*-e64-*')
  --dry-run            run: resolve and print each run's config (params, tokens, FLOPs,
                       memory per device, run dir) without training; a config error is
                       shown per run
  --devices N          --dry-run: size memory for N devices (default: this machine's)
  --device KIND        --dry-run: of this kind, e.g. h100, v5p (default: this machine's)
  --workers N          run: N local trainings at once (default 1)
  --port N             tensorboard: the port to serve on (default 6006); with --dry-run it
                       prints the command instead of starting it
  key=value            overrides applied to every run, after the run's own

`run` is resumable and may be started several times on one --out (on one machine or on many
sharing a file system): each run is claimed with an atomic lock file, complete runs (result.json)
are skipped, partial ones resume, and a failed run leaves failed.json and does not stop the rest.
Each run's output goes to DIR/runs/NAME/train.log.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import fnmatch
import json
import os
import pathlib
import shlex
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, Iterable

from dlmjax import config as config_lib
from dlmjax import flops as flops_lib
from dlmjax.data import pipeline
from dlmjax.errors import ConfigError, UserError, exit_on_user_error
from dlmjax.rundir import RunDir, write_json_atomic
from experiments import registry
from experiments.registry import Grid, RunSpec

LOCK = 'lock'
FAILED = 'failed.json'
LOG = 'train.log'
LOG_TAIL_LINES = 30


# ---------------------------------------------------------------------------------------
# Paths and selections.

def out_dir(grid: Grid, out: str | None) -> pathlib.Path:
  return pathlib.Path(out or f'runs/grids/{grid.name}').absolute()


def run_dir(out: pathlib.Path, run: RunSpec) -> pathlib.Path:
  return out / 'runs' / run.name


def select(grid: Grid, only: str | None) -> list[RunSpec]:
  runs = [r for r in grid.runs if only is None or fnmatch.fnmatchcase(r.name, only)]
  if not runs:
    raise UserError(f'--only {only!r} matches no run of grid {grid.name!r}')
  return runs


def check_overrides(overrides: list[str]) -> None:
  """Unknown keys and wrong types in the command line's overrides fail before any run starts."""
  cfg = config_lib.Config()
  for arg in overrides:
    config_lib.set_key(cfg, *config_lib.parse_override(arg))


def run_overrides(run: RunSpec, extra: list[str], rdir: pathlib.Path) -> list[str]:
  # run_dir last: the grid owns where each run lives, or `run`, `status` and `report` disagree.
  return [*run.overrides, *extra, f'run_dir={rdir}']


def resolve(grid: Grid, run: RunSpec, extra: list[str], rdir: pathlib.Path) -> config_lib.Config:
  return config_lib.load_config(grid.config_paths(), run_overrides(run, extra, rdir))


# ---------------------------------------------------------------------------------------
# Locks: one file per run, created with O_EXCL, holding who trains it.

def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def read_lock(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return None
  except (json.JSONDecodeError, OSError):
    # Being written this very moment (create, then write): treat as held.
    return {'pid': -1, 'host': '?'}


def lock_is_stale(lock: dict) -> bool:
  # Only a lock from this host can be checked; another host's lock is trusted until removed.
  return lock.get('host') == socket.gethostname() and lock.get('pid', -1) > 0 \
      and not _pid_alive(lock['pid'])


def _create_exclusive(path: pathlib.Path, content: dict) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, 'w') as f:
    json.dump(content, f)
  return True


def claim(rdir: pathlib.Path) -> bool:
  """Takes the run's lock; reclaims a stale one (this host, pid dead). False if held."""
  rdir.mkdir(parents=True, exist_ok=True)
  path = rdir / LOCK
  me = {'pid': os.getpid(), 'host': socket.gethostname(),
        'since': datetime.datetime.now().isoformat(timespec='seconds')}
  for _ in range(3):
    if _create_exclusive(path, me):
      return True
    held = read_lock(path)
    if held is None:
      continue  # released between our two looks
    if not lock_is_stale(held):
      return False
    # Two runners may find the same stale lock; a second, short-lived lock serialises the
    # removal, so neither deletes the fresh lock the other has just taken.
    guard = rdir / (LOCK + '.reclaim')
    if not _create_exclusive(guard, me):
      g = read_lock(guard)
      if g is not None and lock_is_stale(g):
        guard.unlink(missing_ok=True)
      return False
    try:
      if read_lock(path) == held:
        path.unlink(missing_ok=True)
    finally:
      guard.unlink(missing_ok=True)
  return False


def release(rdir: pathlib.Path) -> None:
  held = read_lock(rdir / LOCK)
  if held and held.get('pid') == os.getpid() and held.get('host') == socket.gethostname():
    (rdir / LOCK).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# Running.

def _tail(path: pathlib.Path, lines: int) -> list[str]:
  try:
    with open(path, 'rb') as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 64 * 1024))
      return f.read().decode('utf-8', 'replace').splitlines()[-lines:]
  except FileNotFoundError:
    return []


# Trainings in flight, so that a SIGTERM (preemption, scancel) or Ctrl-C of the runner reaches
# them: each saves a checkpoint and exits, and no new run starts.
_stop = threading.Event()
_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


def stopped() -> bool:
  """Whether the last `run` was stopped by SIGTERM or Ctrl-C."""
  return _stop.is_set()


def _on_signal(signum, _frame) -> None:
  _stop.set()
  with _children_lock:
    for child in _children:
      try:
        child.send_signal(signum)
      except ProcessLookupError:
        pass


def train_one(grid: Grid, run: RunSpec, out: pathlib.Path, extra: list[str],
              say=print) -> str:
  """Trains one run if nobody else does; returns 'done', 'skipped', 'busy' or 'failed'."""
  rdir = run_dir(out, run)
  # A directory holding another grid's run (or this run with other overrides) is neither
  # counted as this run nor trained over: the runner names the key and leaves it alone.
  config_yaml = RunDir(rdir).config
  conflict = config_yaml.is_file() and config_lib.run_dir_conflict(
      config_yaml, resolve(grid, run, extra, rdir))
  if conflict:
    say(f'{run.name}: FAILED: {conflict}')
    return 'failed'
  if RunDir(rdir).is_complete():
    return 'skipped'
  if _stop.is_set():
    return 'stopped'
  if not claim(rdir):
    return 'busy'
  try:
    # Another runner may have finished it between our first look and the claim.
    if RunDir(rdir).is_complete():
      return 'skipped'
    cmd = [sys.executable, '-m', 'dlmjax.train', *grid.config_paths(),
           *run_overrides(run, extra, rdir), 'train.progress=false']
    say(f'{run.name}: training ({rdir})')
    # A new attempt supersedes an old failure (the log keeps its history).
    (rdir / FAILED).unlink(missing_ok=True)
    with open(rdir / LOG, 'a') as log:
      log.write(f'# {datetime.datetime.now().isoformat(timespec="seconds")} '
                f'{" ".join(cmd)}\n')
      log.flush()
      with _children_lock:
        if _stop.is_set():
          return 'stopped'
        child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        _children.add(child)
      try:
        rc = child.wait()
      finally:
        with _children_lock:
          _children.discard(child)
    if rc == 0 and RunDir(rdir).is_complete():
      say(f'{run.name}: done')
      return 'done'
    if rc == 0:
      # The trainer saved a checkpoint on SIGTERM / Ctrl-C and exited cleanly: not a failure.
      say(f'{run.name}: stopped; the next `run` resumes it')
      return 'stopped'
    tail = _tail(rdir / LOG, LOG_TAIL_LINES)
    write_json_atomic(rdir / FAILED, {
        'exit_code': rc, 'host': socket.gethostname(),
        'time': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': cmd, 'log_tail': tail})
    last = next((l for l in reversed(tail) if l.strip()), '')
    say(f'{run.name}: FAILED (exit {rc}): {last}')
    return 'failed'
  finally:
    release(rdir)


class GridProgress:
  """On a terminal, a bar over the steps of all selected runs with an ETA, read every few
  seconds from the runs' metrics.jsonl (the trainings are subprocesses writing their logs).
  Elsewhere (logs, CI) it does nothing and messages are plain lines."""

  POLL_S = 2.0

  def __init__(self, grid: Grid, runs: list[RunSpec], out: pathlib.Path, extra: list[str]):
    self.enabled = sys.stdout.isatty()
    self._lock = threading.Lock()
    self._done = threading.Event()
    if not self.enabled:
      return
    import rich.progress
    self.rdirs = [run_dir(out, r) for r in runs]
    self.planned = [_planned_steps(grid, r, d, extra) or 0 for r, d in zip(runs, self.rdirs)]
    # A slow window: evals pause the step count every few seconds, and runs start and end.
    self.bar = rich.progress.Progress(
        rich.progress.TextColumn('[bold]{task.description}'), rich.progress.BarColumn(),
        rich.progress.MofNCompleteColumn(), rich.progress.TextColumn('steps'),
        rich.progress.TimeElapsedColumn(), rich.progress.TextColumn('eta'),
        rich.progress.TimeRemainingColumn(), rich.progress.TextColumn('{task.fields[info]}'),
        speed_estimate_period=120.0)
    self.task = self.bar.add_task(grid.name, total=sum(self.planned),
                                  completed=self._steps_done()[0], info='')
    self._thread = threading.Thread(target=self._poll, daemon=True)

  def _steps_done(self) -> tuple[int, int]:
    steps, complete = 0, 0
    for rdir, planned in zip(self.rdirs, self.planned):
      if RunDir(rdir).is_complete():
        steps, complete = steps + planned, complete + 1
      else:
        steps += min(_last_step(RunDir(rdir).metrics), planned)
    return steps, complete

  def _poll(self) -> None:
    while not self._done.wait(self.POLL_S):
      steps, complete = self._steps_done()
      self.bar.update(self.task, completed=steps,
                      info=f'{complete}/{len(self.rdirs)} runs complete')

  def say(self, msg: str) -> None:
    with self._lock:
      if self.enabled:
        self.bar.console.print(msg, highlight=False)
      else:
        print(msg, flush=True)

  def __enter__(self) -> 'GridProgress':
    if self.enabled:
      self.bar.start()
      self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._done.set()
    if self.enabled:
      self._thread.join()
      self.bar.stop()


def cmd_run(grid: Grid, runs: list[RunSpec], out: pathlib.Path, extra: list[str],
            workers: int) -> int:
  out.mkdir(parents=True, exist_ok=True)
  with GridProgress(grid, runs, out, extra) as progress:
    return _run_all(grid, runs, out, extra, workers, progress.say)


def _run_all(grid: Grid, runs: list[RunSpec], out: pathlib.Path, extra: list[str],
             workers: int, say) -> int:
  _stop.clear()
  handlers = {}
  if threading.current_thread() is threading.main_thread():
    for sig in (signal.SIGTERM, signal.SIGINT):
      handlers[sig] = signal.signal(sig, _on_signal)
  outcomes: dict[str, str] = {}
  try:
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
      futures = {pool.submit(train_one, grid, r, out, extra, say): r for r in runs}
      for fut in concurrent.futures.as_completed(futures):
        outcomes[futures[fut].name] = fut.result()
  finally:
    for sig, handler in handlers.items():
      signal.signal(sig, handler)
  counts = collections.Counter(outcomes.values())
  say(f'{grid.name}: {counts["done"]} trained, {counts["skipped"]} already complete, '
      f'{counts["busy"]} taken by another runner, {counts["failed"]} failed'
      + (f', {counts["stopped"]} stopped' if counts['stopped'] else '') + f' ({out})')
  return 1 if counts['failed'] or counts['stopped'] else 0


def cmd_dry_run(grid: Grid, runs: list[RunSpec], out: pathlib.Path, extra: list[str],
                devices: int | None = None, device: str | None = None) -> int:
  import jax  # only this command needs it

  from dlmjax import memory

  budget = memory.device_bytes(device)
  devices = devices or jax.device_count()
  where = f'{devices} x {device or jax.devices()[0].device_kind} ({memory.gb(budget)} each)'
  rows, errors, cfgs = [], 0, []
  for run in runs:
    rdir = run_dir(out, run)
    try:
      cfg = resolve(grid, run, extra, rdir)
    except ConfigError as e:
      rows.append((run.name, 'error: ' + str(e), '', '', '', ''))
      errors += 1
      continue
    cfgs.append(cfg)
    vocab = registry.vocab_size(cfg)
    tokens = round(cfg.data.unique_tokens * cfg.data.epochs)
    params = flops_lib.num_params(cfg.model, vocab)
    total = flops_lib.train_flops_per_token(cfg.model, vocab, cfg.data.seq_len) * tokens
    rows.append((run.name, f'{params / 1e6:,.2f}M', f'{tokens:,}', f'{total:.3g}',
                 memory.verdict(cfg, vocab, devices, device, short=True), str(rdir)))
  _table(f'{grid.name}: dry run (nothing is trained); memory per device on {where}',
         ('run', 'params', 'tokens', 'FLOPs', 'memory/device', 'run dir'), rows)
  print(f'{len(runs) - errors} of {len(runs)} runs resolve'
        + (f'; {errors} rejected at start-up (see error:)' if errors else ''))
  for line in data_sources(cfgs):
    print(line)
  return 0


def data_sources(cfgs: list) -> list[str]:
  """Where the runs' tokens come from, one line per corpus: a sharded store with its size
  and whether the largest unique budget fits, or a corpus each host tokenizes on first use."""
  from dlmjax.data import budget, shards

  lines = []
  for corpus in sorted({c.data.corpus for c in cfgs}):
    largest = max(c.data.unique_tokens for c in cfgs if c.data.corpus == corpus)
    if not corpus.startswith('store:'):
      lines.append(f'data: data.corpus={corpus}: tokenized by each host into a flat store on '
                   f'first use (dlmjax/data/store.py); the runs need up to {largest:,} unique '
                   f'tokens. For data at scale write shards once with `python -m dlmjax.data '
                   f'tokenize SOURCE --out DIR` and set data.corpus=store:DIR.')
      continue
    directory = corpus.removeprefix('store:')
    if not shards.is_sharded_store(directory):
      lines.append(f'data: data.corpus={corpus}: no sharded store there yet; write it with '
                   f'`python -m dlmjax.data tokenize SOURCE --out {directory}`')
      continue
    store = shards.ShardedStore(directory)
    available = budget.train_split(store, 0, 0).num_tokens  # a mixture: at its weights
    fits = ('every budget fits' if largest <= available else
            f'too small for the largest budget ({largest:,} unique tokens)')
    lines.append(f'data: data.corpus={corpus}: sharded store of {store.index["source"]!r}, '
                 f'{store.num_docs:,} documents, {store.num_tokens:,} tokens in '
                 f'{len(store.index["shards"])} shards, tokenizer {store.index["tokenizer"]} '
                 f'({store.vocab_size} ids); {available:,} training tokens: {fits}')
  return lines


# ---------------------------------------------------------------------------------------
# Status.

def _last_step(path: pathlib.Path) -> int:
  for line in reversed(_tail(path, 5)):
    try:
      return int(json.loads(line)['step'])
    except (ValueError, KeyError, TypeError):
      continue
  return 0


def _planned_steps(grid: Grid, run: RunSpec, rdir: pathlib.Path, extra: list[str]) -> int | None:
  try:
    # The run's own config.yaml is the truth once it started (it had the overrides it ran with).
    if RunDir(rdir).config.is_file():
      cfg = config_lib.read_config_file(RunDir(rdir).config)
    else:
      cfg = resolve(grid, run, extra, rdir)
  except UserError:
    return None
  return pipeline.planned_steps(cfg.data.unique_tokens, cfg.data.epochs,
                               cfg.train.batch_size * cfg.data.seq_len, cfg.train.steps)


def run_state(rdir: pathlib.Path) -> tuple[str, str]:
  """('done' | 'running' | 'failed' | 'pending', detail)."""
  if RunDir(rdir).is_complete():
    return 'done', ''
  damaged = 'damaged result.json; the next run finishes it again' \
      if RunDir(rdir).result.is_file() else ''  # there, but not complete
  held = read_lock(rdir / LOCK)
  if held is not None:
    if lock_is_stale(held):
      return ('failed' if (rdir / FAILED).exists() else 'pending'), damaged or 'stale lock'
    return 'running', f'{held.get("host")}:{held.get("pid")}'
  if (rdir / FAILED).exists():
    try:
      return 'failed', f'exit {json.loads((rdir / FAILED).read_text()).get("exit_code")}'
    except (json.JSONDecodeError, OSError):
      return 'failed', ''
  return 'pending', damaged


def cmd_status(grid: Grid, runs: list[RunSpec], out: pathlib.Path, extra: list[str]) -> int:
  rows, counts, flops_done, flops_all = [], collections.Counter(), 0.0, 0.0
  for run in runs:
    rdir = run_dir(out, run)
    state, detail = run_state(rdir)
    counts[state] += 1
    steps = _planned_steps(grid, run, rdir, extra)
    step = _last_step(RunDir(rdir).metrics)
    if state == 'done':
      step = RunDir(rdir).read_result().get('steps', step)
    frac = min(step / steps, 1.0) if steps else 0.0
    flops_all += run.flops
    flops_done += run.flops * frac
    progress = f'{step}/{steps} ({100 * frac:.0f}%)' if steps else f'{step}/?'
    rows.append((run.name, state, progress, f'{run.flops:.3g}', detail))
  _table(f'{grid.name}: {out}', ('run', 'state', 'steps', 'FLOPs', 'detail'), rows,
         styles={'done': 'green', 'running': 'cyan', 'failed': 'red', 'pending': 'dim'})
  print(f'{len(runs)} runs: {counts["done"]} done, {counts["running"]} running, '
        f'{counts["failed"]} failed, {counts["pending"]} pending; '
        f'{flops_done:.3g} of {flops_all:.3g} FLOPs '
        f'({100 * flops_done / flops_all if flops_all else 0:.0f}%)')
  return 0


# ---------------------------------------------------------------------------------------
# Listing, showing, reporting.

def _table(title: str, columns: Iterable[str], rows: list[tuple], styles: dict | None = None):
  import rich.console
  import rich.table
  table = rich.table.Table(title=title, title_justify='left')
  for c in columns:
    table.add_column(c, overflow='fold')
  for row in rows:
    style = (styles or {}).get(row[1])
    table.add_row(*row, style=style)
  # A wide console when piped: run names and dirs are long, and logs should not wrap them.
  console = rich.console.Console(width=None if sys.stdout.isatty() else 200)
  console.print(table)


def cmd_list() -> int:
  rows = []
  for g in registry.GRIDS.values():
    rows.append((g.name, str(len(g.runs)), f'{sum(r.flops for r in g.runs):.3g}', g.hardware,
                 g.description))
  _table('grids', ('grid', 'runs', 'FLOPs', 'hardware', 'description'), rows)
  return 0


def cmd_show(grid: Grid, runs: list[RunSpec]) -> int:
  print(f'{grid.name}: {grid.description}\nhardware: {grid.hardware}\n'
        f'configs: {" ".join(grid.configs)}')
  rows = [(r.name, registry.count_label(r.unique_tokens), f'{r.epochs:g}',
           registry.count_label(r.tokens), f'{r.flops:.3g}', ' '.join(r.overrides))
          for r in runs]
  _table(f'{len(runs)} runs', ('run', 'U', 'epochs', 'tokens', 'FLOPs', 'overrides'), rows)
  return 0


def print_report_files(out: pathlib.Path) -> None:
  print(f'report:  {out / "report.md"}')
  pngs = sorted(out.glob('*.png')) or sorted(out.glob('**/*.png'))
  for p in pngs:
    print(f'plot:    {p}')
  print(f'summary: {out / "summary.json"}')


def cmd_report(grid: Grid, out: pathlib.Path) -> int:
  from experiments import report  # matplotlib and scipy load only for this command
  result: Any = report.write_report(grid, out)
  print_report_files(out)
  if isinstance(result, dict):
    for key, value in result.items():
      if isinstance(value, (str, int, float)):
        print(f'{key}: {value}')
  return 0


def tensorboard_command(runs: list[RunSpec], out: pathlib.Path, port: int) -> list[str]:
  """The `tensorboard` command showing these runs' event files, each named as its run."""
  from dlmjax import summaries
  spec = summaries.grid_logdir_spec({r.name: run_dir(out, r) for r in runs})
  if not spec:
    raise UserError(f'no run under {out / "runs"} has TensorBoard events yet; start the grid '
                    f'with `python -m experiments.grid run` first')
  return [sys.executable, '-m', 'tensorboard.main', '--logdir_spec', spec, '--port', str(port)]


def cmd_tensorboard(runs: list[RunSpec], out: pathlib.Path, port: int, dry_run: bool) -> int:
  argv = tensorboard_command(runs, out, port)
  print(' '.join(shlex.quote(a) for a in argv), flush=True)
  if dry_run:
    return 0
  os.execv(argv[0], argv)  # TensorBoard's own server, in this process, until Ctrl-C


# ---------------------------------------------------------------------------------------
# Command line.

COMMANDS = ('list', 'show', 'run', 'status', 'report', 'tensorboard')


def parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog='python -m experiments.grid', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('command', choices=COMMANDS)
  p.add_argument('grid', nargs='?')
  p.add_argument('--out')
  p.add_argument('--only')
  p.add_argument('--dry-run', action='store_true')
  p.add_argument('--workers', type=int, default=1)
  p.add_argument('--devices', type=int)
  p.add_argument('--device')
  p.add_argument('--port', type=int, default=6006)
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if '=' not in a or a.startswith('-')]
  if bad:
    raise UserError(f'unexpected argument {bad[0]!r}; overrides are key=value')
  args.overrides = rest
  if args.command != 'list' and not args.grid:
    raise UserError(f'{args.command} needs a grid name; known grids: '
                    f'{", ".join(registry.names())}')
  if args.workers < 1:
    raise UserError('--workers must be at least 1')
  if (args.devices or args.device) and not (args.dry_run and args.command == 'run'):
    raise UserError('--devices and --device go with run --dry-run')
  if args.device:
    from dlmjax.memory import DEVICES
    if args.device not in DEVICES:
      raise UserError(f'--device {args.device!r} is not one of {", ".join(sorted(DEVICES))}')
  return args


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  with exit_on_user_error():
    args = parse(argv)
    if args.command == 'list':
      return cmd_list()
    grid = registry.get(args.grid)
    check_overrides(args.overrides)
    runs = select(grid, args.only)
    out = out_dir(grid, args.out)
    if args.command == 'show':
      return cmd_show(grid, runs)
    if args.command == 'status':
      return cmd_status(grid, runs, out, args.overrides)
    if args.command == 'report':
      return cmd_report(grid, out)
    if args.command == 'tensorboard':
      return cmd_tensorboard(runs, out, args.port, args.dry_run)
    if args.dry_run:
      return cmd_dry_run(grid, runs, out, args.overrides, args.devices, args.device)
    return cmd_run(grid, runs, out, args.overrides, args.workers)


if __name__ == '__main__':
  sys.exit(main())
