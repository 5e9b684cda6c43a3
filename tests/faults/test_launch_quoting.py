"""Every user string that reaches a shell through the launchers (paths, run names, overrides,
bucket and job names) arrives as one inert word. The scripts the TPU workers and the SLURM
job run are executed here by bash, with every external command replaced by a recorder, and
hostile strings that would write a file if a shell ever interpreted them."""

import pathlib
import shlex
import subprocess

import pytest

from launch import slurm, tpu

RUN = 'mdm-tiny-u250K-e8-s0'
# A bash function that stands in for every command not found (PATH is an empty directory;
# an empty PATH would mean the current one): it records its arguments, NUL-separated, reads
# its input (a pipe into it must not fail) and succeeds; `mountpoint` fails so that the
# mount branch runs.
RECORDER = ('command_not_found_handle() { printf "%s\\0" "$@" >> "$RECORD"; printf "\\n\\0" '
            '>> "$RECORD"; while read -r _; do :; done; [ "$1" != mountpoint ]; }\n')


def hostile(pw: pathlib.Path) -> list[str]:
  """Strings that create a file under `pw` if a shell interprets them as code."""
  return [f'a b;echo HIT>{pw}/semicolon;', f'$(echo HIT>{pw}/subst)', f'`echo HIT>{pw}/tick`',
          f"q'uote;echo HIT>{pw}/squote'", f'd"q;echo HIT>{pw}/dquote"',
          f'&& echo HIT>{pw}/and', f'| echo HIT>{pw}/pipe']


def run_bash(script: str, tmp_path: pathlib.Path) -> list[list[str]]:
  """Runs `script` with the recorder; returns the argv of every command it called."""
  record = tmp_path / 'record'
  record.write_bytes(b'')
  home, empty = tmp_path / 'home', tmp_path / 'empty'
  (home / 'dlmjax').mkdir(parents=True, exist_ok=True)  # the stubbed tar's checkout
  empty.mkdir(exist_ok=True)
  env = {'PATH': str(empty), 'HOME': str(home), 'RECORD': str(record)}
  subprocess.run(['/bin/bash', '-c', RECORDER + script], env=env, cwd=home,
                 stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
  calls, cur = [], []
  for word in record.read_bytes().decode().split('\0')[:-1]:
    if word == '\n':
      calls.append(cur)
      cur = []
    else:
      cur.append(word)
  return calls


def assert_inert(pw: pathlib.Path):
  assert not list(pw.iterdir()), f'a string was run as code: {sorted(pw.iterdir())}'


@pytest.mark.parametrize('where', range(7))
def test_tpu_scripts_keep_hostile_strings_inert(tmp_path, capsys, where, counts):
  pw = tmp_path / 'pw'
  pw.mkdir()
  bad = hostile(pw)[where]
  out = f'/mnt/dlmjax/{bad}'
  assert tpu.main(['--zone', 'us-east5-a', '--accelerator', 'v5p-64', '--name', 'qr-test',
                   '--out', out, '--gcs-bucket', bad, '--grid', 'crossover-tiny', '--run', RUN,
                   f'name={bad}', '--dry-run']) == 0
  text = capsys.readouterr().out
  job = '\n'.join(line[4:] for line in text.splitlines() if line.startswith('#   '))
  remote = [a[len('--command='):] for line in text.splitlines() if line.startswith('gcloud ')
            for a in shlex.split(line) if a.startswith('--command=')]
  assert len(remote) >= 3
  calls = []
  for script in [job, *remote]:
    calls += run_bash(script, tmp_path)
  assert_inert(pw)
  # ... and each reached its command as one argument, unchanged.
  train = next(c for c in calls if c[:3] == ['python', '-m', 'dlmjax.train'])
  assert f'name={bad}' in train and f'run_dir={out}/runs/{RUN}' in train
  assert any(bad in c for c in calls if c and c[0] == 'gcsfuse')
  assert any(out in c for c in calls if c[:2] == ['mkdir', '-p'])
  counts['launch_hostile_strings_inert'] += 1


@pytest.mark.parametrize('where', range(7))
def test_slurm_script_keeps_hostile_strings_inert(tmp_path, capsys, where, counts):
  pw = tmp_path / 'pw'
  pw.mkdir()
  bad = hostile(pw)[where]
  out = str(tmp_path / bad)
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'activate').write_text('')
  assert slurm.main(['--dry-run', '--out', out, '--venv', str(venv), '--name', 'job',
                     '--partition', 'gpu', '--grid', 'crossover-tiny', '--run', RUN,
                     f'name={bad}']) == 0
  script = capsys.readouterr().out
  calls = run_bash(f'SLURM_ARRAY_TASK_ID=0 SLURM_JOB_NUM_NODES=1 SLURM_NTASKS=1\n{script}',
                   tmp_path)
  assert_inert(pw)
  srun = next(c for c in calls if c and c[0] == 'srun')
  assert f'name={bad}' in srun and f'run_dir={out}/runs/{RUN}' in srun
  counts['launch_hostile_strings_inert'] += 1


@pytest.mark.parametrize('flag, value', [
    ('--out', '\necho HIT'), ('--partition', '\necho HIT'), ('--account', '\recho HIT'),
    ('--name', '$(echo HIT)'), ('--name', '\necho HIT')])
def test_slurm_refuses_a_newline_in_an_sbatch_line_and_a_job_name_beyond_its_characters(
    tmp_path, capsys, flag, value):
  venv = tmp_path / 'venv'
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'activate').write_text('')
  args = {'--out': str(tmp_path / 'out'), '--name': 'job', '--partition': 'gpu',
          '--account': 'lab'}
  args[flag] += value
  with pytest.raises(SystemExit) as e:
    slurm.main(['--dry-run', '--venv', str(venv), '--grid', 'crossover-tiny', '--run', RUN,
                *[x for kv in args.items() for x in kv]])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and flag in err[0], err
