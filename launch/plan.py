"""What the hosts run: one `python -m dlmjax.train` command per run, the same as on a workstation.

Both launchers take either a grid of `experiments/registry.py`

    --grid crossover-tiny [--run 'mdm-*'] [key=value ...]

or a command line after `--`

    -- python -m dlmjax.train configs/paper.yaml configs/models/1b.yaml objective=mdm

and turn it into `Job`s: a name and the argv that every host runs from the repository root.
A grid run's argv is the one `python -m experiments.grid run` executes for it (the grid's
presets, the run's overrides, the command line's overrides, `run_dir=OUT/runs/NAME`), so
`python -m experiments.grid status NAME --out OUT` and `report` read what the hosts wrote.
Every config is resolved here, on the launching machine: a typo fails in a second instead of
after a TPU slice or a SLURM allocation has been granted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import posixpath
import re
import shlex
import subprocess

from dlmjax import config as config_lib
from dlmjax.errors import ConfigError, UserError
from experiments import grid as grid_lib
from experiments import registry

ROOT = registry.ROOT
TRAIN = ('python', '-m', 'dlmjax.train')
_ENV_KEY = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')


@dataclasses.dataclass(frozen=True)
class Job:
  name: str  # the grid run's name, or the run directory's base name
  argv: tuple[str, ...]  # run from the repository root on every host

  def shell(self) -> str:
    return shlex.join(self.argv)


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose mistakes are a `UserError`: one line and exit code 2, no usage dump."""

  def error(self, message: str):
    raise UserError(message)


def add_job_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument('--grid', help='a grid of python -m experiments.grid list')
  p.add_argument('--run', metavar='PATTERN',
                 help="only the grid's runs whose names match (fnmatch), e.g. 'mdm-1b-*'")
  p.add_argument('--out', required=True,
                 help='output directory on the file system every host mounts; a grid run '
                      'trains in OUT/runs/NAME')
  p.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                 help='environment variable set on every host (repeatable)')


def parse_args(p: argparse.ArgumentParser,
               argv: list[str]) -> tuple[argparse.Namespace, list[str], list[str]]:
  """A launcher's options (with the job arguments added), its key=value overrides, and the
  command after `--` (empty if none)."""
  add_job_arguments(p)
  command = []
  if '--' in argv:
    i = argv.index('--')
    argv, command = argv[:i], argv[i + 1:]
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if '=' not in a or a.startswith('-')]
  if bad:
    raise UserError(f'unexpected argument {bad[0]!r}; overrides are key=value, and a command '
                    f'goes after --')
  return args, rest, command


def parse_env(pairs: list[str]) -> dict[str, str]:
  env = {}
  for pair in pairs:
    key, sep, value = pair.partition('=')
    if not sep or not _ENV_KEY.fullmatch(key):
      raise UserError(f'--env expects KEY=VALUE with a shell variable name, got {pair!r}')
    env[key] = value
  return env


def jobs(args: argparse.Namespace, overrides: list[str], command: list[str],
         out: str) -> list[Job]:
  """The jobs of `--grid` (with `overrides`) or of the command after `--`; `out` is absolute."""
  if bool(args.grid) == bool(command):
    raise UserError('give either --grid NAME or a command after -- '
                    '(e.g. -- python -m dlmjax.train configs/tiny.yaml)')
  if args.grid:
    return grid_jobs(args.grid, args.run, overrides, out)
  if args.run or overrides:
    raise UserError('--run and key=value overrides go with --grid; put a command\'s '
                    'overrides after -- in the command itself')
  return [command_job(command, out)]


def grid_jobs(name: str, pattern: str | None, overrides: list[str], out: str) -> list[Job]:
  grid = registry.get(name)
  grid_lib.check_overrides(overrides)
  try:
    runs = grid_lib.select(grid, pattern)
  except UserError:
    raise UserError(f'--run {pattern!r} matches no run of grid {name!r}; '
                    f'python -m experiments.grid show {name} lists them') from None
  result = []
  for run in runs:
    rdir = grid_lib.run_dir(pathlib.PurePosixPath(out), run)
    try:
      grid_lib.resolve(grid, run, overrides, rdir)
    except ConfigError as e:
      raise UserError(f'run {run.name}: {e}') from None
    # The presets as the grid names them, relative to the repository root: the hosts run
    # from their own copy of the repository.
    argv = (*TRAIN, *grid.configs, *grid_lib.run_overrides(run, overrides, rdir))
    result.append(Job(run.name, argv))
  return result


def command_job(command: list[str], out: str) -> Job:
  """A `python -m dlmjax.train ...` command, checked and given a run_dir under `out`.

  Any other command (a benchmark, an evaluation) runs as given.
  """
  if command[:3] != list(TRAIN) and command[:3] != ['python3', '-m', 'dlmjax.train']:
    return Job(posixpath.basename(command[0]), tuple(command))
  args = command[3:]
  files, overrides = config_lib.split_args(args)
  host_files = [_repo_relative(f) for f in files]
  cfg = config_lib.load_config([str(ROOT / f) for f in host_files], overrides)
  given = [o for o in overrides if o.split('=', 1)[0].strip() == 'run_dir']
  if given and not posixpath.isabs(cfg.run_dir):
    raise UserError(f'run_dir={cfg.run_dir} is relative, so each host would write its own '
                    f'copy; give an absolute path on the shared file system, or leave it out '
                    f'to train in {out}/runs/...')
  if not given:
    cfg.run_dir = posixpath.join(out, config_lib.default_run_dir(cfg))
    overrides = [*overrides, f'run_dir={cfg.run_dir}']
  return Job(posixpath.basename(cfg.run_dir), (*TRAIN, *host_files, *overrides))


def _repo_relative(path: str) -> str:
  """A preset's path relative to the repository root, where the hosts run the command."""
  p = pathlib.Path(path).absolute()
  if not p.is_file():
    raise UserError(f'config file {path!r} does not exist')
  try:
    return p.resolve().relative_to(ROOT).as_posix()
  except ValueError:
    raise UserError(f'config file {path!r} is outside the repository ({ROOT}), so the hosts '
                    f'would not have it; put it under configs/') from None


def repo_files() -> list[str]:
  """The checkout as it is: tracked and untracked-but-not-ignored files (no runs/, no .venv)."""
  try:
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                         cwd=ROOT, capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    raise UserError(f'{ROOT} is not a git checkout; the launcher ships the files git lists') \
        from None
  return sorted(f for f in out.decode().split('\0') if f and (ROOT / f).is_file())


def code_version() -> str:
  proc = subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=ROOT,
                        capture_output=True, text=True)
  return proc.stdout.strip() or 'unknown'


def check_absolute(out: str, flag: str = '--out', *, base: str = '') -> str:
  """`out` as a normalised absolute path; a relative one is joined to `base` if given."""
  if re.match(r'[a-z0-9]+://', out):
    raise UserError(f'{flag} {out!r}: run directories need a POSIX file system that every '
                    f'host mounts (on TPU, mount the bucket with --gcs-bucket and give the '
                    f'mounted path)')
  if base:
    out = posixpath.join(base, out)
  if not posixpath.isabs(out):
    raise UserError(f'{flag} {out!r} must be an absolute path on the file system every host '
                    f'mounts')
  return posixpath.normpath(out)


def env_lines(env: dict[str, str]) -> list[str]:
  return [f'export {k}={shlex.quote(v)}' for k, v in env.items()]


def default_name(label: str) -> str:
  """`dlmjax-USER-LABEL-MMDD-HHMMSS`: a valid Cloud TPU / SLURM name, unique per launch."""
  label = re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')[:20].strip('-') or 'run'
  user = re.sub(r'[^a-z0-9]+', '', os.environ.get('USER', '').lower())[:8]
  stamp = datetime.datetime.now().strftime('%m%d-%H%M%S')
  return '-'.join(x for x in ('dlmjax', user, label, stamp) if x)
