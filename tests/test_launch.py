"""The launchers: their dry runs give the real gcloud commands / sbatch script, the hosts run
exactly the command a user runs locally, the job scripts behave (run in bash here), the TPU
launch deletes its slice on every path, and user mistakes are one line with exit code 2.
No gcloud, sbatch or network: the gcloud runner is a fake and srun is a stub script."""

import os
import pathlib
import shlex
import subprocess
import sys
import time

import pytest

from dlmjax import config as config_lib
from experiments import grid as grid_lib
from experiments import registry
from launch import plan, slurm, tpu

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = '/mnt/dlmjax/out'
RUN = 'mdm-tiny-u250K-e8-s0'
TPU_ARGS = ['--zone', 'us-east5-a', '--accelerator', 'v5p-64', '--out', OUT, '--name', 'qr-test']


def expected_argv(run_name: str, out: str, extra=()) -> list[str]:
  """What a host runs for a grid run, built from the registry alone."""
  grid = registry.get('crossover-tiny')
  run = next(r for r in grid.runs if r.name == run_name)
  return ['python', '-m', 'dlmjax.train', *grid.configs, *run.overrides, *extra,
          f'run_dir={out}/runs/{run_name}']


def local_grid_command(run_name, out, extra, monkeypatch) -> list[str]:
  """The command `python -m experiments.grid run` executes for the run (Popen intercepted)."""
  seen = []

  class Child:
    def __init__(self, cmd, **kw):
      seen.append(list(cmd))

    def wait(self):
      return 0

  monkeypatch.setattr(grid_lib.subprocess, 'Popen', Child)
  grid = registry.get('crossover-tiny')
  run = next(r for r in grid.runs if r.name == run_name)
  grid_lib.train_one(grid, run, pathlib.Path(out), list(extra), say=lambda _: None)
  return seen[0]


def as_host_command(local: list[str]) -> list[str]:
  """The local command in the hosts' terms: `python`, presets relative to the repository,
  and without the progress bar switch (a display setting)."""
  rel = [os.path.relpath(a, ROOT) if a.endswith('.yaml') else a for a in local[1:]]
  return ['python', *[a for a in rel if a != 'train.progress=false']]


def gcloud_lines(text: str) -> list[list[str]]:
  return [shlex.split(line) for line in text.splitlines() if line.startswith('gcloud ')]


def one_error_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith('error: ')
  return err[0]


# ---------------------------------------------------------------------------------------
# What the hosts run.

def test_a_grid_runs_host_command_equals_the_grid_runners_local_command(tmp_path, monkeypatch):
  out = str(tmp_path / 'out')
  extra = ('train.log_every=7',)
  jobs = plan.grid_jobs('crossover-tiny', RUN, list(extra), out)
  assert [j.name for j in jobs] == [RUN]
  local = local_grid_command(RUN, out, extra, monkeypatch)
  assert list(jobs[0].argv) == as_host_command(local) == expected_argv(RUN, out, extra)


def test_a_training_command_runs_as_given_with_its_run_dir_under_out(monkeypatch):
  monkeypatch.chdir(ROOT / 'configs')  # presets are found from the cwd, shipped repo-relative
  job = plan.command_job(['python', '-m', 'dlmjax.train', 'tiny.yaml', 'objective=ar'], OUT)
  local = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')], ['objective=ar'])
  assert config_lib.default_run_dir(local).startswith('runs/tiny-ar-')
  assert job.argv == ('python', '-m', 'dlmjax.train', 'configs/tiny.yaml', 'objective=ar',
                      f'run_dir={OUT}/{config_lib.default_run_dir(local)}')
  given = plan.command_job(['python', '-m', 'dlmjax.train', 'tiny.yaml', 'run_dir=/shared/r1'],
                           OUT)
  assert given.argv[-1] == 'run_dir=/shared/r1' and given.name == 'r1'


# ---------------------------------------------------------------------------------------
# TPU: the dry run.

def test_tpu_dry_run_gives_the_gcloud_commands_and_the_hosts_run_the_local_command(capsys):
  assert tpu.main([*TPU_ARGS, '--spot', '--gcs-bucket', 'bkt', '--mount-point', '/mnt/dlmjax',
                   '--grid', 'crossover-tiny', '--run', RUN, 'train.log_every=7',
                   '--dry-run']) == 0
  text = capsys.readouterr().out
  cmds = gcloud_lines(text)
  verbs = [tuple(c[3:5]) for c in cmds]
  assert verbs[:4] == [('queued-resources', 'create'), ('queued-resources', 'describe'),
                       ('tpu-vm', 'scp'), ('tpu-vm', 'ssh')]
  assert verbs[-1] == ('queued-resources', 'delete')
  create = cmds[0]
  assert create[5] == 'qr-test'
  for flag in ('--zone=us-east5-a', '--accelerator-type=v5p-64', '--node-id=qr-test',
               '--runtime-version=v2-alpha-tpuv5', '--spot'):
    assert flag in create
  assert not any(a.startswith('--node-count') for a in create)
  scp = cmds[2]
  assert scp[5].endswith(tpu.ARCHIVE) and scp[6] == 'qr-test:' and '--worker=all' in scp
  ssh = [c for c in cmds if c[4] == 'ssh']
  commands = [next(a for a in c if a.startswith('--command=')) for c in ssh]
  setup = commands[0]
  assert '--worker=all' in ssh[0]
  assert 'gcsfuse' in setup and ' bkt /mnt/dlmjax' in setup and "-e '.[tpu]'" in setup
  assert all('--worker=0' in c for c in ssh if 'tail -n' in ' '.join(c))
  assert cmds[-1][-2:] == ['--force', '--quiet']
  # The job script every worker runs: one `run NAME COMMAND` line, the local command.
  runs = [shlex.split(line.strip('# ')) for line in text.splitlines()
          if line.startswith('#   run ')]
  assert runs == [['run', RUN, *expected_argv(RUN, OUT, ('train.log_every=7',))]]


def test_tpu_multislice_asks_for_n_slices_and_reaches_every_node():
  args, overrides, command = tpu.parse([*TPU_ARGS, '--num-slices', '2', '--reserved',
                                        '--grid', 'crossover-tiny', '--run', RUN])
  qr, *_ = tpu.build(args, overrides, command)
  create = qr.create()
  assert '--node-count=2' in create and '--node-prefix=qr-test' in create
  assert '--reserved' in create and not any(a.startswith('--node-id') for a in create)
  assert qr.ssh_all('true')[3:6] == ['queued-resources', 'ssh', 'qr-test']
  assert {'--node=all', '--worker=all'} <= set(qr.ssh_all('true'))
  assert {'--node=0', '--worker=0'} <= set(qr.ssh_first('true'))
  assert qr.copy('/tmp/a.tar.gz')[3:7] == ['queued-resources', 'scp', '/tmp/a.tar.gz', 'qr-test:']


# ---------------------------------------------------------------------------------------
# TPU: the steps, with a fake gcloud.

class FakeGcloud:
  """Answers gcloud like a slice would; records each command by its step."""

  def __init__(self, states=('WAITING_FOR_RESOURCES', 'ACTIVE'), exit_codes=('0',),
               interrupt_tail=False, lose_on_tail=0, drop_stream=False):
    self.states, self.exit_codes = list(states), list(exit_codes)
    self.drop_stream, self.tails = drop_stream, []
    self.interrupt_tail, self.lose_on_tail = interrupt_tail, lose_on_tail
    self.lost, self.steps = False, []

  def step(self, argv) -> str:
    if argv[4] in ('create', 'describe', 'delete', 'scp'):
      return argv[4]
    command = next(a for a in argv if a.startswith('--command='))[len('--command='):]
    names = {tpu.start_script(): 'start', tpu.status_script(): 'status',
             tpu.stop_script(): 'stop', tpu.wait_script(tpu.STOP_GRACE_S): 'wait'}
    if command in names:
      return names[command]
    return 'tail' if command.startswith('tail -n') else 'setup'

  def __call__(self, argv, *, capture=False, on_line=None):
    step = self.step(argv)
    self.steps.append(step)
    if step == 'describe':
      return 0, (self.states.pop(0) if len(self.states) > 1 else self.states[0]) + '\n'
    if step == 'create' and self.steps.count('create') > 1:
      self.states, self.lost = ['ACTIVE'], False  # the recreated slice
    if self.lost and step not in ('create', 'describe', 'delete'):
      return 255, ''  # ssh to a preempted slice fails
    if step == 'tail':
      self.tails.append(next(a for a in argv if a.startswith('--command=')))
      if self.drop_stream:  # the connection breaks after one line; the job goes on
        self.drop_stream = False
        self.exit_codes.insert(0, 'running')
        on_line('step 5 loss 6.0\n')
        return 255, ''
      if self.interrupt_tail and 'stop' not in self.steps:
        raise KeyboardInterrupt
      if self.lose_on_tail and self.steps.count('create') == 1:
        self.lose_on_tail -= 1
        self.states, self.lost = ['SUSPENDED'], True
        return 255, ''
      on_line('step 10 loss 5.0\n')
      return 0, ''
    if step == 'status':
      return 0, self.exit_codes.pop(0) + '\n'
    return 0, ''


def launch(fake, **kw) -> tuple[int, list[str]]:
  qr = tpu.Slice('qr-test', 'us-east5-a', '', 'v5p-8', 'v2-alpha-tpuv5')
  said = []
  rc = tpu.Launch(qr, setup='true', archive='/tmp/a.tar.gz', shell=fake, say=said.append,
                  sleep=lambda s: None, **kw).run()
  return rc, said


def test_tpu_launch_creates_waits_copies_sets_up_starts_streams_and_deletes():
  fake = FakeGcloud()
  rc, said = launch(fake)
  assert rc == 0
  assert fake.steps == ['create', 'describe', 'describe', 'scp', 'setup', 'start', 'tail',
                        'status', 'wait', 'delete']
  assert 'step 10 loss 5.0' in said


def test_tpu_a_broken_log_stream_resumes_at_the_next_line_and_keeps_the_slice():
  fake = FakeGcloud(drop_stream=True)
  rc, said = launch(fake)
  assert rc == 0
  assert fake.steps[6:] == ['tail', 'status', 'tail', 'status', 'wait', 'delete']
  assert 'tail -n +1 ' in fake.tails[0] and 'tail -n +2 ' in fake.tails[1]
  assert said.count('step 5 loss 6.0') == 1 and 'step 10 loss 5.0' in said


def test_tpu_launch_deletes_the_slice_after_a_failed_run_but_not_with_keep():
  fake = FakeGcloud(exit_codes=('1',))
  assert launch(fake)[0] == 1 and fake.steps[-1] == 'delete'
  kept = FakeGcloud()
  rc, said = launch(kept, keep=True)
  assert rc == 0 and 'delete' not in kept.steps
  assert any('queued-resources delete qr-test' in s for s in said)


def test_tpu_ctrl_c_stops_every_training_then_deletes_the_slice():
  fake = FakeGcloud(interrupt_tail=True)
  rc, _ = launch(fake)
  assert rc == 130
  # The stop reaches every worker; the log is followed until the job ends, then deletion.
  assert fake.steps[fake.steps.index('stop'):] == ['stop', 'tail', 'status', 'wait', 'delete']


def test_tpu_lost_slice_is_recreated_when_retries_allow_and_deleted_when_not():
  fake = FakeGcloud(lose_on_tail=1)
  rc, _ = launch(fake, retries=1)
  assert rc == 0
  assert fake.steps.count('create') == 2 and fake.steps.count('delete') == 2
  assert fake.steps[-1] == 'delete'
  lost = FakeGcloud(lose_on_tail=1)
  assert launch(lost)[0] == 1 and lost.steps.count('create') == 1 and lost.steps[-1] == 'delete'


def test_tpu_a_refused_request_is_not_deleted():
  # create fails (quota, a name in use): the resource is not ours, so it is left alone.
  steps = []

  def shell(argv, **kw):
    steps.append(argv[4])
    return (1, '') if argv[4] == 'create' else (0, '')

  qr = tpu.Slice('qr-test', 'us-east5-a', '', 'v5p-8', 'v2-alpha-tpuv5')
  assert tpu.Launch(qr, setup='true', archive='a', shell=shell, say=lambda s: None).run() == 1
  assert steps == ['create']


# ---------------------------------------------------------------------------------------
# TPU: the scripts that run on a worker, run here in bash with HOME standing in for its home.

@pytest.fixture
def worker_home(tmp_path, monkeypatch):
  home = tmp_path / 'home'
  bin_dir = home / tpu.HOME_DIR / '.venv' / 'bin'
  bin_dir.mkdir(parents=True)
  (home / tpu.HOME_DIR / '.launch').mkdir()
  (bin_dir / 'python').symlink_to(sys.executable)
  (bin_dir / 'activate').write_text(f'export PATH={bin_dir}:$PATH\n')
  monkeypatch.setenv('HOME', str(home))
  return home / tpu.HOME_DIR


def on_worker(script: str) -> str:
  return subprocess.run(['bash', '-c', script], capture_output=True, text=True,
                        timeout=60).stdout.strip()


def start_job(checkout, jobs, out, env=None):
  (checkout / tpu.JOB).write_text(tpu.job_script('t', jobs, str(out), env or {}))
  assert subprocess.run(['bash', '-c', tpu.start_script()], timeout=60).returncode == 0


def test_worker_job_runs_each_command_in_turn_and_reports_a_failure(worker_home, tmp_path):
  marker = tmp_path / 'order'
  jobs = [plan.Job('a', ('python', '-c', f"open({str(marker)!r}, 'a').write('a')")),
          plan.Job('b', ('python', '-c', 'import sys; sys.exit(3)')),
          plan.Job('c', ('python', '-c',
                         f"import os; open({str(marker)!r}, 'a').write(os.environ['X'])"))]
  start_job(worker_home, jobs, tmp_path / 'out', {'X': 'c d'})
  on_worker(tpu.wait_script(60))
  assert on_worker(tpu.status_script()) == '1'  # b failed; c still ran
  assert marker.read_text() == 'ac d'
  log = on_worker(tpu.tail_script(1))
  assert 'b: exit 3' in log and 'done: 2 ok, 1 failed' in log
  # Each worker's log is kept on the shared output, named by host.
  assert (tmp_path / 'out' / 'launch' / 't').glob('*.log')


def test_worker_job_sigterm_lets_the_training_checkpoint_and_starts_no_further_run(
    worker_home, tmp_path):
  started = tmp_path / 'started'
  trains = ('import pathlib, signal, sys, time\n'
            "signal.signal(signal.SIGTERM, lambda *a: (print('saved', flush=True), sys.exit(0)))\n"
            f'pathlib.Path({str(started)!r}).touch()\n'
            'time.sleep(60)\n')
  jobs = [plan.Job('a', ('python', '-c', trains)),
          plan.Job('b', ('python', '-c', 'print("b ran")'))]
  start_job(worker_home, jobs, tmp_path / 'out')
  deadline = time.time() + 30
  while not started.exists() and time.time() < deadline:
    time.sleep(0.05)
  assert on_worker(tpu.status_script()) == 'running'
  on_worker(tpu.stop_script())
  on_worker(tpu.wait_script(60))
  assert on_worker(tpu.status_script()) == '0'
  log = on_worker(tpu.tail_script(1))
  assert 'saved' in log and 'a: exit 0' in log and 'b: not started (stopped)' in log
  assert 'b ran' not in log


# ---------------------------------------------------------------------------------------
# SLURM.

def sbatch_flags(script: str) -> dict[str, str]:
  flags = {}
  for line in script.splitlines():
    if line.startswith('#SBATCH --'):
      key, _, value = line[len('#SBATCH --'):].partition('=')
      flags[key] = value
  return flags


@pytest.fixture
def venv(tmp_path):
  (tmp_path / 'venv' / 'bin').mkdir(parents=True)
  (tmp_path / 'venv' / 'bin' / 'activate').write_text('export FROM_VENV=1\n')
  return str(tmp_path / 'venv')


def slurm_script(capsys, *args) -> str:
  assert slurm.main(['--dry-run', *args]) == 0
  text = capsys.readouterr().out
  assert text.startswith('#!/bin/bash\n')  # stdout is the script, ready for sbatch
  return text


def test_slurm_dry_run_script_asks_for_the_resources_and_runs_the_local_command(
    tmp_path, venv, capsys):
  out = str(tmp_path / 'out')
  text = slurm_script(capsys, '--out', out, '--venv', venv, '--nodes', '2',
                      '--gpus-per-node', '4', '--partition', 'gpu', '--account', 'lab',
                      '--time', '1-00:00:00', '--grid', 'crossover-tiny', '--run', RUN)
  flags = sbatch_flags(text)
  assert flags['nodes'] == '2' and flags['gpus-per-node'] == '4'
  assert flags['ntasks-per-node'] == '4'  # one process per GPU
  assert flags['partition'] == 'gpu' and flags['account'] == 'lab'
  assert flags['time'] == '1-00:00:00' and flags['signal'] == 'TERM@600'
  assert flags['output'].startswith(f'{out}/slurm/') and 'array' not in flags
  cmd = next(line for line in text.splitlines() if 'cmd=(' in line)
  argv = shlex.split(cmd[cmd.index('cmd=(') + 5:cmd.rindex(')')])
  assert argv == expected_argv(RUN, out)


def run_batch_script(script: str, tmp_path, task: int) -> list[str]:
  """Runs the batch script with a stub srun that records its arguments and environment."""
  stub = tmp_path / 'bin'
  stub.mkdir(exist_ok=True)
  (stub / 'srun').write_text('#!/bin/bash\n'
                             'printf "%s\\n" "$@" > "$RECORD"\n'
                             'echo "ENV $FROM_VENV ${JAX_LOCAL_DEVICE_IDS:-unset}" >> "$RECORD"\n')
  (stub / 'srun').chmod(0o755)
  record = tmp_path / f'srun-{task}'
  env = {**os.environ, 'PATH': f'{stub}:{os.environ["PATH"]}', 'RECORD': str(record),
         'SLURM_ARRAY_TASK_ID': str(task), 'SLURM_JOB_NUM_NODES': '1', 'SLURM_NTASKS': '1'}
  proc = subprocess.run(['bash', '-c', script], env=env, capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 0, proc.stderr
  return record.read_text().splitlines()


def test_slurm_array_task_i_runs_the_ith_run_under_srun(tmp_path, venv, capsys):
  out = str(tmp_path / 'out')
  text = slurm_script(capsys, '--out', out, '--venv', venv, '--grid', 'crossover-tiny',
                      '--run', 'mdm-*', '--max-parallel', '2', 'train.log_every=7')
  names = [r.name for r in registry.get('crossover-tiny').runs if r.objective == 'mdm']
  assert sbatch_flags(text)['array'] == f'0-{len(names) - 1}%2'
  recorded = run_batch_script(text, tmp_path, 1)
  assert recorded[0] == '--kill-on-bad-exit=1'
  assert recorded[1:-1] == expected_argv(names[1], out, ('train.log_every=7',))
  assert recorded[-1] == 'ENV 1 unset'  # the venv was activated; JAX's SLURM defaults apply


def test_slurm_one_process_per_node_gives_it_every_gpu(tmp_path, venv, capsys):
  text = slurm_script(capsys, '--out', str(tmp_path / 'out'), '--venv', venv,
                      '--process-per', 'node', '--gpus-per-node', '4', '--',
                      'python', '-m', 'dlmjax.train', 'configs/tiny.yaml')
  assert sbatch_flags(text)['ntasks-per-node'] == '1'
  assert run_batch_script(text, tmp_path, 0)[-1] == 'ENV 1 0,1,2,3'


def test_slurm_submit_writes_the_script_and_reports_the_job(tmp_path, venv, capsys):
  calls = []

  def sbatch(argv, **kw):
    calls.append(argv)
    return subprocess.CompletedProcess(argv, 0, '4242;cluster\n', '')

  out = tmp_path / 'out'
  assert slurm.main(['--out', str(out), '--venv', venv, '--name', 'j1', '--grid',
                     'crossover-tiny'], run=sbatch) == 0
  assert calls == [['sbatch', '--parsable', str(out / 'slurm' / 'j1.sbatch')]]
  assert sbatch_flags((out / 'slurm' / 'j1.sbatch').read_text())['array'] == '0-5'
  printed = capsys.readouterr().out
  assert 'job 4242' in printed and 'scancel --signal=TERM 4242' in printed


# ---------------------------------------------------------------------------------------
# Mistakes.

@pytest.mark.parametrize('argv, message', [
    (['--grid', 'nope'], 'unknown grid'),
    (['--grid', 'crossover-tiny', '--run', 'zzz*'], "--run 'zzz*' matches no run"),
    (['--grid', 'crossover-tiny', 'model.nope=1'], "unknown config key 'model.nope'"),
    (['--grid', 'crossover-tiny', 'model.remat=everything'], 'model.remat'),
    ([], 'either --grid NAME or a command'),
    (['--', 'python', '-m', 'dlmjax.train', 'configs/nope.yaml'], 'does not exist'),
    (['--', 'python', '-m', 'dlmjax.train', 'run_dir=rel'], 'run_dir=rel is relative'),
])
def test_user_errors_are_one_line_and_exit_2_for_both_launchers(argv, message, venv, capsys,
                                                                 monkeypatch):
  monkeypatch.chdir(ROOT)
  for main, own in ((tpu.main, TPU_ARGS), (slurm.main, ['--out', OUT, '--venv', venv])):
    with pytest.raises(SystemExit) as e:
      main([*own, '--dry-run', *argv])
    assert e.value.code == 2
    assert message in one_error_line(capsys)


@pytest.mark.parametrize('argv, message', [
    (['--accelerator', 'v5p-8', '--out', OUT], 'the following arguments are required: --zone'),
    (['--zone', 'z', '--accelerator', 'h100', '--out', OUT], 'is not a TPU type'),
    (['--zone', 'z', '--accelerator', 'v5p-8', '--out', 'rel'], 'must be an absolute path'),
    (['--zone', 'z', '--accelerator', 'v5p-8', '--out', 'gs://b/x'], 'mount the bucket'),
    (['--zone', 'z', '--accelerator', 'v5p-8', '--out', '/data/x', '--nfs', 'h:/e'],
     'is not below --mount-point'),
    (['--zone', 'z', '--accelerator', 'v5p-8', '--out', OUT, '--nfs', 'h:/e',
      '--gcs-bucket', 'b'], 'not allowed with argument'),
])
def test_tpu_flag_mistakes_are_one_line_and_exit_2(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    tpu.main([*argv, '--dry-run', '--grid', 'crossover-tiny'])
  assert e.value.code == 2
  assert message in one_error_line(capsys)


def test_slurm_flag_mistakes_are_one_line_and_exit_2(tmp_path, venv, capsys):
  for argv, message in ((['--grid', 'crossover-tiny'], 'required: --out'),
                        (['--out', OUT, '--time', '2 days'], 'is not a SLURM time'),
                        (['--out', 'gs://b/x'], 'need a POSIX file system'),
                        (['--out', OUT, '--venv', str(tmp_path / 'none')], 'no virtual env')):
    with pytest.raises(SystemExit) as e:
      slurm.main([*argv, '--dry-run', '--grid', 'crossover-tiny'])
    assert e.value.code == 2
    assert message in one_error_line(capsys)


# ---------------------------------------------------------------------------------------
# End to end on this machine: a real training through each launcher's host-side scripts.

MICRO = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
         'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=5000', 'data.epochs=1',
         'eval.val_tokens=1024', 'eval.num_evals=1', 'eval.batch_size=8', 'eval.mdm_samples=2',
         'eval.tasks=']


@pytest.mark.slow
def test_tpu_packed_checkout_trains_a_grid_run_through_the_worker_scripts(worker_home, tmp_path):
  out = tmp_path / 'out'
  args, overrides, command = tpu.parse([*TPU_ARGS[:4], '--out', str(out), '--name', 'e2e',
                                        '--grid', 'crossover-tiny', '--run', RUN, *MICRO])
  _, setup, job, _ = tpu.build(args, overrides, command)
  home = worker_home.parent
  tpu.pack(str(home / tpu.ARCHIVE), job)
  # The worker's setup as written, except the install (no network here): this venv instead.
  venv = pathlib.Path(sys.executable).parents[1]
  assert tpu.DEFAULT_INSTALL in setup
  for script in (setup.replace(tpu.DEFAULT_INSTALL, f'rm -rf .venv && ln -s {venv} .venv'),
                 tpu.start_script()):
    assert subprocess.run(['bash', '-c', script], timeout=120).returncode == 0
  log = on_worker(tpu.tail_script(1))  # follows the job to its end
  assert on_worker(tpu.status_script()) == '0', log
  assert (out / 'runs' / RUN / 'result.json').is_file()
  assert f'{RUN}: exit 0' in log
  assert list((out / 'launch' / 'e2e').glob('*.log'))


@pytest.mark.slow
def test_slurm_batch_script_trains_a_grid_run_that_grid_status_reads(tmp_path, capsys):
  out = tmp_path / 'out'
  text = slurm_script(capsys, '--out', str(out), '--grid', 'crossover-tiny', '--run', RUN,
                      *MICRO)
  stub = tmp_path / 'bin'
  stub.mkdir()
  # srun on one machine: its own options dropped, the command run once.
  (stub / 'srun').write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
  (stub / 'srun').chmod(0o755)
  env = {**os.environ, 'PATH': f'{stub}:{os.environ["PATH"]}', 'SLURM_JOB_NUM_NODES': '1',
         'SLURM_NTASKS': '1'}
  proc = subprocess.run(['bash', '-c', text], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert grid_lib.main(['status', 'crossover-tiny', '--out', str(out), '--only', RUN]) == 0
  assert '1 runs: 1 done' in capsys.readouterr().out
