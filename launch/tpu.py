"""Trains a grid, one of its runs, or a training command on a Cloud TPU slice, start to finish.

    python -m launch.tpu --zone us-east5-a --accelerator v5p-64 --spot \\
        --gcs-bucket my-bucket --out /mnt/dlmjax/grids/paper-dense \\
        --grid paper-dense --run 'mdm-1b-*'
    python -m launch.tpu --zone us-east5-a --accelerator v5p-8 --nfs 10.0.0.2:/share \\
        --out /mnt/dlmjax/runs -- python -m dlmjax.train configs/paper.yaml configs/models/1b.yaml
    python -m launch.tpu ... --dry-run      # prints every gcloud command and the job script

Each step is a gcloud command, printed before it runs:
  1. create a queued resource (`--num-slices N` makes N slices joined over the data-centre
     network; JAX and libtpu read the MEGASCALE settings the queued resource puts in each
     VM's metadata) and wait until it is ACTIVE;
  2. copy this checkout (tracked and untracked-but-not-ignored files, with the job script) to
     every worker;
  3. set up every worker: unpack into ~/dlmjax, mount the shared output (an NFS export such as
     Filestore, or a bucket through Cloud Storage FUSE), a Python 3.11 venv with `.[tpu]` and
     the pinned constraints;
  4. start the job on every worker, detached, so a dropped connection does not stop it; every
     worker runs the same `python -m dlmjax.train ...` lines, one run after the other;
  5. stream worker 0's log (JAX process 0 prints the training log) until the job ends,
     reconnecting if the connection drops;
  6. delete the queued resource and its slices, also after a failure or Ctrl-C (the first
     Ctrl-C asks every training to save a checkpoint first), unless `--keep`.

Run directories need a file system that every host mounts (checkpoints are written by all
hosts, results by process 0): `--nfs SERVER:/EXPORT` or `--gcs-bucket BUCKET`, mounted at
`--mount-point`, with `--out` below it. Re-running the same command resumes: complete runs
are skipped and partial ones continue from their last checkpoint. `--retries N` recreates a
slice that was lost (spot preemption, a failed request) up to N times.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Callable

from dlmjax.errors import UserError, exit_on_user_error
from launch import plan

HOME_DIR = 'dlmjax'  # the checkout on each worker, relative to its home directory
ARCHIVE = 'dlmjax-code.tar.gz'  # copied into each worker's home directory
JOB = '.launch/job.sh'  # inside the checkout; .launch/ also holds pid, job.log, exit_code
POLL_S = 30.0  # between state checks while the request waits for capacity
STOP_GRACE_S = 300  # how long workers get to save a checkpoint and exit before deletion

# The software versions Cloud TPU documents for JAX, by TPU generation (docs: runtimes).
RUNTIME_VERSIONS = {
    'v6e': 'v2-alpha-tpuv6e',
    'v5p': 'v2-alpha-tpuv5',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v4': 'tpu-ubuntu2204-base',
    'v3': 'tpu-ubuntu2204-base',
    'v2': 'tpu-ubuntu2204-base',
}
_ACCELERATOR = re.compile(r'(v\d+[a-z]*)-(\d+)')
_NAME = re.compile(r'[a-z]([-a-z0-9]{0,48}[a-z0-9])?')
READY, LOST_STATES = 'ACTIVE', ('FAILED', 'SUSPENDING', 'SUSPENDED', 'DELETING')


# ---------------------------------------------------------------------------------------
# The gcloud commands.

@dataclasses.dataclass(frozen=True)
class Slice:
  """A queued resource of `num_slices` TPU slices, and the gcloud commands that manage it."""

  name: str
  zone: str
  project: str
  accelerator: str
  runtime_version: str
  num_slices: int = 1
  provisioning: str = 'on-demand'  # on-demand | spot | reserved
  queue_timeout: str = ''  # --valid-until-duration: give up waiting for capacity after this
  create_args: tuple[str, ...] = ()
  ssh_flags: tuple[str, ...] = ()

  def _gcloud(self, *args: str) -> list[str]:
    where = [f'--zone={self.zone}'] + ([f'--project={self.project}'] if self.project else [])
    return ['gcloud', 'compute', 'tpus', *args, *where]

  def create(self) -> list[str]:
    argv = self._gcloud('queued-resources', 'create', self.name)
    argv += [f'--accelerator-type={self.accelerator}',
             f'--runtime-version={self.runtime_version}']
    if self.num_slices == 1:
      argv.append(f'--node-id={self.name}')
    else:
      argv += [f'--node-count={self.num_slices}', f'--node-prefix={self.name}']
    if self.provisioning != 'on-demand':
      argv.append(f'--{self.provisioning}')
    if self.queue_timeout:
      argv.append(f'--valid-until-duration={self.queue_timeout}')
    return argv + list(self.create_args)

  def state(self) -> list[str]:
    return self._gcloud('queued-resources', 'describe', self.name) + ['--format=value(state.state)']

  def delete(self) -> list[str]:
    # --force deletes the slices first; --quiet answers the confirmation prompt.
    return self._gcloud('queued-resources', 'delete', self.name) + ['--force', '--quiet']

  def _hosts(self, verb: str, *, everyone: bool) -> list[str]:
    # One slice: the TPU VM commands (the node is named like the request). Several slices:
    # the queued resource's own ssh/scp, which address slices by index, not by name.
    if self.num_slices == 1:
      argv = self._gcloud('tpu-vm', verb, self.name)
      argv.append('--worker=all' if everyone else '--worker=0')
    else:
      argv = self._gcloud('queued-resources', verb, self.name)
      argv += ['--node=all', '--worker=all'] if everyone else ['--node=0', '--worker=0']
    return argv + ['--strict-host-key-checking=no', *self.ssh_flags]

  def copy(self, local_path: str) -> list[str]:
    argv = self._hosts('scp', everyone=True)
    # gcloud's scp takes the files first: SRC INSTANCE:DEST (here: the home directory).
    i = argv.index(self.name)
    return argv[:i] + [local_path, f'{self.name}:'] + argv[i + 1:]

  def ssh_all(self, command: str) -> list[str]:
    return self._hosts('ssh', everyone=True) + [f'--command={command}']

  def ssh_first(self, command: str) -> list[str]:
    """Worker 0 of slice 0: JAX process 0, the one that prints the training log."""
    return self._hosts('ssh', everyone=False) + [f'--command={command}']


# ---------------------------------------------------------------------------------------
# What runs on the workers.

@dataclasses.dataclass(frozen=True)
class Mount:
  kind: str  # nfs | gcs
  source: str  # SERVER:/EXPORT or a bucket name
  point: str

  def script(self) -> str:
    mp = shlex.quote(self.point)
    if self.kind == 'nfs':
      install = ('command -v mount.nfs >/dev/null || { sudo apt-get -qq update && '
                 'sudo DEBIAN_FRONTEND=noninteractive apt-get -qq install -y nfs-common; }')
      # Hosts may write as different users: the share is opened to all of them once.
      mount = (f'sudo mkdir -p {mp} && sudo mount -t nfs -o rw,hard '
               f'{shlex.quote(self.source)} {mp} && sudo chmod a+rwx {mp}')
    else:
      repo = ('deb [signed-by=/usr/share/keyrings/cloud.google.asc] '
              'https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main')
      install = (
          'command -v gcsfuse >/dev/null || { '
          f'echo "{repo}" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && '
          'curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg '
          '| sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && '
          'sudo apt-get -qq update && '
          'sudo DEBIAN_FRONTEND=noninteractive apt-get -qq install -y gcsfuse; }')
      # Orbax finishes a checkpoint by renaming its directory: Cloud Storage FUSE renames
      # directories only below --rename-dir-limit descendants (hierarchical buckets: always).
      mount = (f'sudo mkdir -p {mp} && sudo chown "$(id -u):$(id -g)" {mp} && '
               f'gcsfuse --implicit-dirs --rename-dir-limit=1000000 '
               f'{shlex.quote(self.source)} {mp}')
    return f'if ! mountpoint -q {mp}; then {install} && {mount}; fi'


DEFAULT_INSTALL = (
    # TPU VM images carry Python 3.10; uv brings the 3.11 that dlmjax needs.
    'python3 -m pip install --user -q --disable-pip-version-check uv && '
    'python3 -m uv venv -q --python 3.11 .venv && '
    "python3 -m uv pip install -q --python .venv/bin/python -c constraints.txt -e '.[tpu]'")


def setup_script(out: str, mount: Mount | None, install: str) -> str:
  lines = [
      'set -euo pipefail',
      f'rm -rf ~/{HOME_DIR} && mkdir -p ~/{HOME_DIR} && tar -xzf ~/{ARCHIVE} -C ~/{HOME_DIR}',
      f'cd ~/{HOME_DIR}',
  ]
  if mount:
    lines.append(mount.script())
  lines += [f'mkdir -p {shlex.quote(out)}', install]
  # One line, so that the printed gcloud command is one line to copy.
  return '; '.join(lines)


def start_script() -> str:
  d = f'~/{HOME_DIR}/.launch'
  # setsid: the job leaves the ssh session, so closing the connection does not end it.
  return (f'cd ~/{HOME_DIR} && rm -f .launch/pid .launch/exit_code && '
          f'(setsid bash {JOB} > .launch/job.log 2>&1 < /dev/null &) && '
          f'for _ in $(seq 100); do [ -s {d}/pid ] && exit 0; sleep 0.1; done; '
          f'echo "the job did not start; see {d}/job.log" >&2; exit 1')


def tail_script(from_line: int) -> str:
  d = f'~/{HOME_DIR}/.launch'
  return f'tail -n +{from_line} -s 0.5 -F {d}/job.log --pid="$(cat {d}/pid)" 2>/dev/null'


def status_script() -> str:
  """Prints the job's exit code, or `running`, or `lost` (it ended without writing one)."""
  d = f'~/{HOME_DIR}/.launch'
  return (f'cat {d}/exit_code 2>/dev/null || '
          f'{{ kill -0 "$(cat {d}/pid 2>/dev/null)" 2>/dev/null && echo running || echo lost; }}')


def stop_script() -> str:
  return f'kill -TERM "$(cat ~/{HOME_DIR}/.launch/pid)" 2>/dev/null; true'


def wait_script(seconds: int) -> str:
  """Blocks until the worker's job has ended (at most `seconds`): its log is then copied."""
  return (f'p="$(cat ~/{HOME_DIR}/.launch/pid 2>/dev/null)" && '
          f'timeout {seconds} tail -s 0.5 --pid="$p" -f /dev/null; true')


def job_script(name: str, jobs: list[plan.Job], out: str, env: dict[str, str]) -> str:
  """The script every worker runs: the jobs in turn; SIGTERM stops after the current one."""
  logs = posixpath.join(out, 'launch', name)
  lines = [
      '#!/bin/bash',
      f'# Launch {name} (launch/tpu.py). Every worker of every slice runs this script, detached;',
      '# each `run` line is one training, the same command as on a workstation, and the',
      "# workers' processes of one line form one JAX job (jax.distributed reads the TPU metadata).",
      'cd "$(dirname "$0")/.." || exit 1',
      'echo $$ > .launch/pid',
      'umask 0000  # the hosts may write to the shared file system as different users',
      'source .venv/bin/activate',
      *plan.env_lines(env),
      f'LOGS={shlex.quote(logs)}',
      'ok=0 failed=0 stop=0 child=',
      # SIGTERM goes to the training only: it saves a checkpoint and exits 0; no run starts after.
      "trap 'stop=1; [ -z \"$child\" ] || kill -TERM \"$child\" 2>/dev/null' TERM INT",
      'finish() {',
      '  mkdir -p "$LOGS" && cp .launch/job.log "$LOGS/$(hostname).log"',
      '  echo $((failed > 0)) > .launch/exit_code',
      '}',
      'trap finish EXIT',
      'run() {',
      '  local name=$1 rc; shift',
      '  if [ "$stop" = 1 ]; then echo "[launch] $name: not started (stopped)"; return; fi',
      '  echo "[launch] $(date \'+%F %T\') $name: $*"',
      '  "$@" &',
      '  child=$!',
      '  # `wait` returns early when a trapped signal arrives: wait again until the child ends.',
      '  while kill -0 "$child" 2>/dev/null; do wait "$child"; done',
      '  wait "$child"; rc=$?',
      '  child=',
      '  if [ "$rc" = 0 ]; then ok=$((ok + 1)); else failed=$((failed + 1)); fi',
      '  echo "[launch] $(date \'+%F %T\') $name: exit $rc"',
      '}',
  ]
  lines += [f'run {shlex.quote(job.name)} {job.shell()}' for job in jobs]
  lines.append('echo "[launch] done: $ok ok, $failed failed"')
  return '\n'.join(lines) + '\n'


# ---------------------------------------------------------------------------------------
# Running the steps.

# shell(argv, capture=..., on_line=...) -> (return code, captured stdout)
Shell = Callable[..., tuple[int, str]]


def system_shell(argv: list[str], *, capture: bool = False,
                 on_line: Callable[[str], None] | None = None) -> tuple[int, str]:
  """Runs a local command; gcloud's own messages (stderr) go to the terminal."""
  if on_line is None:
    proc = subprocess.run(argv, stdout=subprocess.PIPE if capture else None, text=True)
    return proc.returncode, proc.stdout or ''
  with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
    for line in proc.stdout:
      on_line(line)
  return proc.returncode, ''


class Launch:
  """The steps of one launch; `shell` runs each command (tests pass a fake one)."""

  def __init__(self, tpu: Slice, *, setup: str, archive: str, keep: bool = False,
               retries: int = 0, shell: Shell = system_shell, say=print,
               sleep: Callable[[float], None] = time.sleep):
    self.tpu, self.setup, self.archive = tpu, setup, archive
    self.keep, self.retries = keep, retries
    self.shell, self.say, self.sleep = shell, say, sleep
    self.created = self.started = False

  def _run(self, argv: list[str], **kw) -> tuple[int, str]:
    self.say('$ ' + shlex.join(argv))
    return self.shell(argv, **kw)

  def run(self) -> int:
    """0: every run trained; 1: a run failed or the slice was lost; 130: Ctrl-C."""
    outcome = 'lost'
    try:
      for attempt in range(self.retries + 1):
        if attempt:
          self.say(f'the slice was lost; recreating it (retry {attempt} of {self.retries})')
          self._delete()
        try:
          outcome = self._once()
        except KeyboardInterrupt:
          outcome = self._interrupted()
        if outcome != 'lost':
          break
    finally:
      if self.created and not self.keep:
        self._delete()
      elif self.created:
        self.say(f'--keep: the slice stays up (and is billed); delete it with\n  '
                 f'{shlex.join(self.tpu.delete())}')
    return {'ok': 0, 'failed': 1, 'lost': 1, 'interrupted': 130}[outcome]

  def _once(self) -> str:
    self.started = False
    rc, _ = self._run(self.tpu.create())
    if rc:
      self.say('creating the queued resource failed (gcloud says why above)')
      return 'failed'
    self.created = True
    if self._wait_ready() != READY:
      return 'lost'
    for argv in (self.tpu.copy(self.archive), self.tpu.ssh_all(self.setup),
                 self.tpu.ssh_all(start_script())):
      rc, _ = self._run(argv)
      if rc:
        return 'lost' if self._state() != READY else 'failed'
    self.started = True
    code = self._watch()
    if code is None:
      return 'lost' if self._state() != READY else 'failed'
    self._run(self.tpu.ssh_all(wait_script(STOP_GRACE_S)))
    self.say('all runs trained' if code == 0 else 'a run failed; its log is above')
    return 'ok' if code == 0 else 'failed'

  def _state(self) -> str:
    rc, out = self.shell(self.tpu.state(), capture=True)
    return out.strip() if rc == 0 else 'UNKNOWN'

  def _wait_ready(self) -> str:
    self.say('$ ' + shlex.join(self.tpu.state()) + f'  # every {POLL_S:g} s until {READY}')
    start, last = time.monotonic(), None
    while True:
      state = self._state()
      if state != last:
        self.say(f'[{(time.monotonic() - start) / 60:.0f} min] {self.tpu.name}: {state}')
        last = state
      if state == READY or state in LOST_STATES:
        return state
      self.sleep(POLL_S)

  def _watch(self) -> int | None:
    """Streams worker 0's log until the job ends; its exit code, or None if it was lost.

    A broken stream is resumed where it stopped, for as long as the slice is up: the job may
    still be training, and only the user (Ctrl-C) decides to stop it.
    """
    seen, pause = 0, 5.0

    def show(line: str) -> None:
      nonlocal seen
      seen += 1
      self.say(line.rstrip('\n'))

    while True:
      self._run(self.tpu.ssh_first(tail_script(seen + 1)), on_line=show)
      rc, status = self.shell(self.tpu.ssh_first(status_script()), capture=True)
      status = status.strip().splitlines()[-1] if status.strip() else ''
      if rc == 0 and status.isdigit():
        return int(status)
      if rc == 0 and status == 'lost':
        return None
      if rc and self._state() != READY:
        return None
      self.say(f'the log stream broke while the job runs; reconnecting in {pause:g} s')
      self.sleep(pause)
      pause = min(60.0, 2 * pause)

  def _interrupted(self) -> str:
    if not self.started:
      self.say('interrupted')
      return 'interrupted'
    self.say('Ctrl-C: every training saves a checkpoint and stops (re-run the same command to '
             'resume); Ctrl-C again to delete the slice without waiting')
    try:
      self._run(self.tpu.ssh_all(stop_script()))
      self._watch()
      self._run(self.tpu.ssh_all(wait_script(STOP_GRACE_S)))
    except KeyboardInterrupt:
      pass
    return 'interrupted'

  def _delete(self) -> None:
    try:
      rc, _ = self._run(self.tpu.delete())
    except KeyboardInterrupt:
      rc = 130
    if rc:
      self.say(f'deleting {self.tpu.name} failed; it may still be billed. Delete it with\n  '
               f'{shlex.join(self.tpu.delete())}')
    else:
      self.created = False


# ---------------------------------------------------------------------------------------
# The code archive.

def pack(path: str, job: str) -> int:
  """Writes the checkout and the job script to a .tar.gz; returns the number of files."""
  files = plan.repo_files()
  with tarfile.open(path, 'w:gz') as tar:
    for f in files:
      tar.add(plan.ROOT / f, arcname=f, recursive=False)
    data = job.encode()
    info = tarfile.TarInfo(JOB)
    info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
    tar.addfile(info, io.BytesIO(data))
  return len(files)


# ---------------------------------------------------------------------------------------
# Command line.

def parse(argv: list[str]):
  p = plan.ArgumentParser(prog='python -m launch.tpu', description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--zone', required=True, help='e.g. us-east5-a (where the TPU type is offered)')
  p.add_argument('--accelerator', required=True, help='TPU type per slice, e.g. v5p-64, v6e-16')
  p.add_argument('--project', default='', help="default: gcloud's configured project")
  p.add_argument('--runtime-version', default='',
                 help='TPU software version (default: the one Cloud TPU documents for JAX on '
                      'this generation)')
  p.add_argument('--num-slices', type=int, default=1,
                 help='slices joined over the data-centre network (multislice)')
  group = p.add_mutually_exclusive_group()
  group.add_argument('--spot', action='store_true', help='spot capacity (preemptible, cheaper)')
  group.add_argument('--reserved', action='store_true', help="the project's reservation")
  p.add_argument('--queue-timeout', default='',
                 help='give up if no capacity within this duration, e.g. 6h')
  p.add_argument('--name', default='', help='queued resource name (default: generated)')
  storage = p.add_mutually_exclusive_group()
  storage.add_argument('--nfs', metavar='SERVER:/EXPORT',
                       help='NFS export (e.g. Filestore) mounted on every worker')
  storage.add_argument('--gcs-bucket', metavar='BUCKET',
                       help='bucket mounted on every worker with Cloud Storage FUSE')
  p.add_argument('--mount-point', default='/mnt/dlmjax', help='where --nfs / --gcs-bucket mount')
  p.add_argument('--install', default=DEFAULT_INSTALL,
                 help='shell command that leaves a .venv with dlmjax in the checkout')
  p.add_argument('--create-arg', action='append', default=[], metavar='ARG',
                 help='extra flag for queued-resources create (e.g. --network=NET), repeatable')
  p.add_argument('--ssh-flag', action='append', default=[], metavar='ARG',
                 help='extra flag for gcloud ssh/scp (e.g. --tunnel-through-iap), repeatable')
  p.add_argument('--keep', action='store_true', help='leave the slice up at the end')
  p.add_argument('--retries', type=int, default=0,
                 help='recreate a lost slice (preemption, failed request) up to N times')
  p.add_argument('--dry-run', action='store_true',
                 help='print every gcloud command and the job script; run nothing')
  return plan.parse_args(p, argv)


def build(args, overrides: list[str], command: list[str]) -> tuple[Slice, str, str, list]:
  """The slice, the setup script, the job script and the jobs, all checked."""
  m = _ACCELERATOR.fullmatch(args.accelerator)
  if not m:
    raise UserError(f'--accelerator {args.accelerator!r} is not a TPU type like v5p-64, '
                    f'v6e-16 or v5litepod-32')
  runtime = args.runtime_version or RUNTIME_VERSIONS.get(m.group(1), '')
  if not runtime:
    raise UserError(f'no default software version for {m.group(1)}; give --runtime-version')
  if args.num_slices < 1 or args.retries < 0:
    raise UserError('--num-slices must be at least 1 and --retries at least 0')
  out = plan.check_absolute(args.out)
  mount = None
  if args.nfs or args.gcs_bucket:
    point = plan.check_absolute(args.mount_point, '--mount-point')
    if not (out + '/').startswith(point.rstrip('/') + '/'):
      raise UserError(f'--out {out} is not below --mount-point {point}, so it is not shared')
    if args.nfs and not re.fullmatch(r'[^:\s]+:/\S*', args.nfs):
      raise UserError(f'--nfs {args.nfs!r} is not SERVER:/EXPORT')
    mount = Mount('nfs', args.nfs, point) if args.nfs else Mount('gcs', args.gcs_bucket, point)
  env = plan.parse_env(args.env)
  jobs = plan.jobs(args, overrides, command, out)
  name = args.name or plan.default_name(args.grid or jobs[0].name)
  if not _NAME.fullmatch(name):
    raise UserError(f'--name {name!r}: lowercase letters, digits and hyphens, starting with a '
                    f'letter, at most 50 characters')
  provisioning = 'spot' if args.spot else 'reserved' if args.reserved else 'on-demand'
  tpu = Slice(name, args.zone, args.project, args.accelerator, runtime, args.num_slices,
              provisioning, args.queue_timeout, tuple(args.create_arg), tuple(args.ssh_flag))
  return tpu, setup_script(out, mount, args.install), job_script(name, jobs, out, env), jobs


def print_plan(tpu: Slice, setup: str, job: str, jobs: list, archive: str, out: str) -> None:
  print(f'# {tpu.name}: {len(jobs)} run(s) on {tpu.num_slices} x {tpu.accelerator} '
        f'({tpu.provisioning}) in {tpu.zone}; output in {out}')
  print(f'# the checkout ({plan.code_version()}) is packed into {archive} with {JOB}:')
  print(''.join(f'#   {line}\n' for line in job.splitlines()), end='')
  print('# 1. create the slice, then poll its state until ACTIVE')
  print(shlex.join(tpu.create()))
  print(shlex.join(tpu.state()))
  print('# 2. copy the code to every worker')
  print(shlex.join(tpu.copy(archive)))
  print('# 3. set up every worker')
  print(shlex.join(tpu.ssh_all(setup)))
  print('# 4. start the job on every worker, detached')
  print(shlex.join(tpu.ssh_all(start_script())))
  print("# 5. stream worker 0's log until the job ends, then read its exit code")
  print(shlex.join(tpu.ssh_first(tail_script(1))))
  print(shlex.join(tpu.ssh_first(status_script())))
  print(shlex.join(tpu.ssh_all(wait_script(STOP_GRACE_S))))
  print('# on Ctrl-C: every training saves a checkpoint and stops')
  print(shlex.join(tpu.ssh_all(stop_script())))
  print('# 6. delete the slice (also after a failure or Ctrl-C; not with --keep)')
  print(shlex.join(tpu.delete()))


def main(argv: list[str] | None = None, *, shell: Shell = system_shell) -> int:
  argv = sys.argv[1:] if argv is None else argv
  with exit_on_user_error():
    args, overrides, command = parse(argv)
    tpu, setup, job, jobs = build(args, overrides, command)
    if not (args.nfs or args.gcs_bucket):
      print(f'warning: no --nfs or --gcs-bucket: unless the workers already share {args.out}, '
            f'each writes to its own disk, which a pod slice cannot train on and which is '
            f'deleted with the slice (keep a one-host slice with --keep)', file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix='dlmjax-launch-') as tmp:
      archive = posixpath.join(tmp, ARCHIVE)
      if args.dry_run:
        print_plan(tpu, setup, job, jobs, archive, plan.check_absolute(args.out))
        return 0
      if shell is system_shell and not shutil.which('gcloud'):
        raise UserError('gcloud is not installed; see docs/launching.md (Google Cloud CLI)')
      files = pack(archive, job)
      print(f'{tpu.name}: {len(jobs)} run(s), {files} files of {plan.ROOT} '
            f'({plan.code_version()})', flush=True)
      return Launch(tpu, setup=setup, archive=archive, keep=args.keep, retries=args.retries,
                    shell=shell).run()


if __name__ == '__main__':
  sys.exit(main())
