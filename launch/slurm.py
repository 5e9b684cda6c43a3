"""Trains a grid, one of its runs, or a training command on a SLURM GPU cluster.

    python -m launch.slurm --out /shared/dlmjax/grids/paper-dense --nodes 8 --gpus-per-node 8 \\
        --partition gpu --account my-lab --time 2-00:00:00 --grid paper-dense --run 'mdm-1b-*'
    python -m launch.slurm --out /shared/dlmjax/runs --nodes 1 --gpus-per-node 8 \\
        -- python -m dlmjax.train configs/paper.yaml configs/models/1b.yaml objective=mdm
    python -m launch.slurm ... --dry-run     # prints the sbatch script; submits nothing

Writes one sbatch script, OUT/slurm/NAME.sbatch, and submits it with `sbatch`. A grid becomes
a job array with one task per run (`--max-parallel` caps how many run at once); each task
asks for `--nodes` x `--gpus-per-node` GPUs and trains its run with the same
`python -m dlmjax.train ...` command as on a workstation, started by `srun` on every node.

Processes: one per GPU by default (`--process-per gpu`), which is what JAX's SLURM detection
expects: `jax.distributed.initialize()` reads SLURM_JOB_ID, SLURM_STEP_NODELIST,
SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID, takes the first node as the coordinator (port
derived from the job id) and gives process i of a node its GPU i. `--process-per node` runs
one process per node driving all its GPUs; the script then sets JAX_LOCAL_DEVICE_IDS, since
JAX's SLURM detection would otherwise give that process one GPU only.

The repository, the venv (or container) and `--out` must be on a file system that every node
mounts at the same path. Ten minutes before the time limit every training gets SIGTERM, saves
a checkpoint and exits; submitting the same command again resumes (complete runs are skipped).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import posixpath
import re
import shlex
import shutil
import subprocess
import sys

from dlmjax.errors import UserError, exit_on_user_error
from dlmjax.rundir import write_text_atomic
from launch import plan

SIGNAL_BEFORE_END_S = 600  # SIGTERM this long before the time limit: time to save a checkpoint
# sbatch's --time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS.
_TIME = re.compile(r'\d+(:\d{1,2}){0,2}|\d+-\d{1,2}(:\d{1,2}){0,2}')


@dataclasses.dataclass(frozen=True)
class Resources:
  nodes: int
  gpus_per_node: int
  process_per: str = 'gpu'  # gpu | node
  partition: str = ''
  account: str = ''
  time: str = ''
  cpus_per_task: int = 0
  exclusive: bool = False
  sbatch_args: tuple[str, ...] = ()

  @property
  def tasks_per_node(self) -> int:
    return self.gpus_per_node if self.process_per == 'gpu' else 1


@dataclasses.dataclass(frozen=True)
class Environment:
  """How the processes get dlmjax: a venv, or a container (pyxis), plus setup lines."""

  repo: str
  venv: str = ''
  container: str = ''
  setup: tuple[str, ...] = ()
  env: tuple[tuple[str, str], ...] = ()


def sbatch_script(name: str, jobs: list[plan.Job], res: Resources, envi: Environment,
                  out: str, max_parallel: int = 0) -> str:
  """The batch script: #SBATCH resources, the environment, one case per job, srun."""
  array = len(jobs) > 1
  log = posixpath.join(out, 'slurm', '%x-%A_%a.log' if array else '%x-%j.log')
  head = [
      '#!/bin/bash',
      f'# {name}: {len(jobs)} run(s) of dlmjax, written by launch/slurm.py; submit with sbatch.',
      f'# {"Each array task" if array else "The job"} trains one run with the same command as '
      'on a workstation; srun',
      f'# starts one process per {res.process_per} on every node, and '
      'jax.distributed.initialize() finds',
      "# the others from SLURM's variables.",
      f'#SBATCH --job-name={name}',
      f'#SBATCH --nodes={res.nodes}',
      f'#SBATCH --ntasks-per-node={res.tasks_per_node}',
      f'#SBATCH --gpus-per-node={res.gpus_per_node}',
  ]
  if res.cpus_per_task:
    head.append(f'#SBATCH --cpus-per-task={res.cpus_per_task}')
  for flag in ('partition', 'account', 'time'):
    if getattr(res, flag):
      head.append(f'#SBATCH --{flag}={getattr(res, flag)}')
  if res.exclusive:
    head.append('#SBATCH --exclusive')
  head += [
      # Without a B: prefix the signal goes to the job steps (the trainings), not this shell.
      f'#SBATCH --signal=TERM@{SIGNAL_BEFORE_END_S}',
      f'#SBATCH --output={log}',
  ]
  if array:
    head.append(f'#SBATCH --array=0-{len(jobs) - 1}' + (f'%{max_parallel}' if max_parallel else ''))
  head += [f'#SBATCH {arg}' for arg in res.sbatch_args]

  body = ['', 'set -uo pipefail', f'cd {shlex.quote(envi.repo)}', *envi.setup]
  if envi.venv and not envi.container:
    body.append(f'source {shlex.quote(posixpath.join(envi.venv, "bin", "activate"))}')
  body += plan.env_lines(dict(envi.env))
  if res.process_per == 'node':
    ids = ','.join(str(i) for i in range(res.gpus_per_node))
    body.append(f'export JAX_LOCAL_DEVICE_IDS={ids}  # this node\'s GPUs, all in one process')
  body += ['', 'case "${SLURM_ARRAY_TASK_ID:-0}" in']
  for i, job in enumerate(jobs):
    body.append(f'  {i}) run={shlex.quote(job.name)}; cmd=({job.shell()}) ;;')
  body += ['  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', 'esac', '']
  srun = ['srun', '--kill-on-bad-exit=1']
  if envi.container:
    # pyxis: the checkout and the output are mounted at the same paths inside the container.
    srun += [f'--container-image={envi.container}',
             f'--container-mounts={envi.repo}:{envi.repo},{out}:{out}',
             f'--container-workdir={envi.repo}']
    body.append(f'export PYTHONPATH={shlex.quote(envi.repo)}${{PYTHONPATH:+:$PYTHONPATH}}')
  body += [
      'echo "[launch] $(date \'+%F %T\') $run on $SLURM_JOB_NUM_NODES node(s), '
      '$SLURM_NTASKS process(es): ${cmd[*]}"',
      f'{shlex.join(srun)} "${{cmd[@]}}"',
      'rc=$?',
      'echo "[launch] $(date \'+%F %T\') $run: exit $rc"',
      'exit $rc',
  ]
  return '\n'.join(head + body) + '\n'


# ---------------------------------------------------------------------------------------
# Command line.

def parse(argv: list[str]):
  p = plan.ArgumentParser(prog='python -m launch.slurm', description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--nodes', type=int, default=1, help='nodes per run')
  p.add_argument('--gpus-per-node', type=int, default=8)
  p.add_argument('--process-per', choices=('gpu', 'node'), default='gpu',
                 help='one JAX process per GPU (JAX\'s SLURM convention) or per node')
  p.add_argument('--partition', default='')
  p.add_argument('--account', default='')
  p.add_argument('--time', default='', help='time limit per run, e.g. 2-00:00:00')
  p.add_argument('--cpus-per-task', type=int, default=0)
  p.add_argument('--exclusive', action='store_true', help='whole nodes only')
  p.add_argument('--sbatch-arg', action='append', default=[], metavar='ARG',
                 help='extra #SBATCH line, e.g. --qos=high (repeatable)')
  p.add_argument('--max-parallel', type=int, default=0,
                 help='a grid\'s runs at once (job array %%N); 0: as many as SLURM allows')
  p.add_argument('--venv', default=str(plan.ROOT / '.venv'),
                 help='virtual environment with dlmjax[gpu] (default: this checkout\'s .venv)')
  p.add_argument('--container', default='',
                 help='container image with dlmjax\'s dependencies (pyxis srun --container-image); '
                      'the checkout is mounted and put on PYTHONPATH')
  p.add_argument('--setup', action='append', default=[], metavar='LINE',
                 help='shell line before srun, e.g. "module load cuda" (repeatable)')
  p.add_argument('--name', default='', help='job name (default: generated)')
  p.add_argument('--dry-run', action='store_true', help='print the sbatch script; submit nothing')
  return plan.parse_args(p, argv)


def build(args, overrides: list[str],
          command: list[str]) -> tuple[str, str, list[plan.Job], str]:
  """The job name, the script, its jobs and the output directory, all checked."""
  if args.nodes < 1 or args.gpus_per_node < 1:
    raise UserError('--nodes and --gpus-per-node must be at least 1')
  if args.max_parallel < 0 or args.cpus_per_task < 0:
    raise UserError('--max-parallel and --cpus-per-task must be >= 0')
  if args.time and not _TIME.fullmatch(args.time):
    raise UserError(f'--time {args.time!r} is not a SLURM time (minutes, HH:MM:SS or '
                    f'D-HH:MM:SS)')
  # A line break would end an #SBATCH line and run the rest as shell.
  for flag, value in (('--out', args.out), ('--partition', args.partition),
                      ('--account', args.account), ('--container', args.container),
                      *(('--sbatch-arg', a) for a in args.sbatch_arg)):
    if '\n' in value or '\r' in value:
      raise UserError(f'{flag} {value!r} holds a line break, which would end its #SBATCH line')
  # The login node's absolute path is the compute nodes' path on a shared file system.
  out = plan.check_absolute(args.out, base=os.getcwd())
  if not args.container and not os.path.isfile(os.path.join(args.venv, 'bin', 'activate')):
    raise UserError(f'no virtual environment at {args.venv}; create one with pip install -c '
                    f"constraints.txt -e '.[gpu]', or pass --venv, --container or --setup")
  jobs = plan.jobs(args, overrides, command, out)
  name = args.name or plan.default_name(args.grid or jobs[0].name)
  if not re.fullmatch(r'[\w.-]+', name):
    raise UserError(f'--name {name!r}: letters, digits, ".", "_" and "-" only')
  res = Resources(args.nodes, args.gpus_per_node, args.process_per, args.partition,
                  args.account, args.time, args.cpus_per_task, args.exclusive,
                  tuple(args.sbatch_arg))
  envi = Environment(str(plan.ROOT), os.path.abspath(args.venv), args.container,
                     tuple(args.setup), tuple(plan.parse_env(args.env).items()))
  return name, sbatch_script(name, jobs, res, envi, out, args.max_parallel), jobs, out


def submit(script_path: str, run=subprocess.run) -> str:
  """Submits the script; returns the job id."""
  proc = run(['sbatch', '--parsable', script_path], capture_output=True, text=True)
  if proc.returncode:
    raise UserError(f'sbatch refused the job: {proc.stderr.strip() or proc.stdout.strip()}')
  return proc.stdout.strip().split(';')[0]


def main(argv: list[str] | None = None, *, run=subprocess.run) -> int:
  argv = sys.argv[1:] if argv is None else argv
  with exit_on_user_error():
    args, overrides, command = parse(argv)
    name, script, jobs, out = build(args, overrides, command)
    path = posixpath.join(out, 'slurm', f'{name}.sbatch')
    if args.dry_run:
      # The script alone on stdout, so that `--dry-run > job.sbatch` is a script to submit.
      print(script, end='')
      print(f'# dry run: {len(jobs)} run(s); without --dry-run this is written to {path} and '
            f'submitted with sbatch --parsable', file=sys.stderr)
      return 0
    if run is subprocess.run and not shutil.which('sbatch'):
      raise UserError('sbatch is not on PATH; run this on a SLURM login node')
    # SLURM opens the --output file itself and does not create its directory.
    os.makedirs(posixpath.join(out, 'slurm'), exist_ok=True)
    write_text_atomic(pathlib.Path(path), script)
    job_id = submit(path, run)
    logs = posixpath.join(out, 'slurm', f'{name}-{job_id}_*.log' if len(jobs) > 1
                          else f'{name}-{job_id}.log')
    print(f'submitted {name}: job {job_id}, {len(jobs)} run(s)\n'
          f'  script:  {path}\n  logs:    {logs}\n'
          f'  queue:   squeue -j {job_id}\n'
          f'  stop:    scancel --signal=TERM {job_id}  (each training saves a checkpoint and '
          f'exits; submit again to resume)')
    if args.grid:
      print(f'  status:  python -m experiments.grid status {args.grid} --out {out}')
    return 0


if __name__ == '__main__':
  sys.exit(main())
