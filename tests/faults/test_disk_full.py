"""A disk that fills up mid-run (a small tmpfs, mounted in a user namespace): the run stops
with one line naming the last good checkpoint (exit 4), that checkpoint stays valid, and
with space again the same command resumes and ends like a run that never stopped."""

import json
import pathlib
import shlex
import subprocess
import sys

import pytest

from dlmjax import train
from dlmjax.checkpoint import Checkpointer
from faults.common import assert_finished_like

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
       'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=20000', 'data.epochs=2',
       'eval.val_tokens=1024', 'eval.num_evals=3', 'eval.batch_size=8', 'train.log_every=1',
       'train.progress=false', 'eval.tasks=', 'checkpoint.every=5', 'objective=ar']
FILL_AT = 40  # the step after which the disk is filled


def namespaces_available() -> bool:
  try:
    proc = subprocess.run(['unshare', '-rm', 'true'], capture_output=True, timeout=30)
  except (OSError, subprocess.TimeoutExpired):
    return False
  return proc.returncode == 0


@pytest.mark.skipif(not namespaces_available(),
                    reason='needs `unshare -rm` (user and mount namespaces) for a small tmpfs')
def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, counts):
  whole = tmp_path / 'whole'
  ref = subprocess.run([sys.executable, '-m', 'dlmjax.train', 'configs/tiny.yaml', *RUN,
                        f'run_dir={whole}'], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert ref.returncode == 0, ref.stderr

  mnt, copy = tmp_path / 'mnt', tmp_path / 'copy'
  mnt.mkdir()
  run_dir = mnt / 'run'
  train_cmd = shlex.join([sys.executable, '-m', 'dlmjax.train', 'configs/tiny.yaml', *RUN,
                          f'run_dir={run_dir}'])
  metrics = shlex.quote(str(run_dir / 'metrics.jsonl'))
  # In a private mount namespace: a 64 MiB tmpfs, the training in the background, and once
  # it has logged FILL_AT steps a file that takes every byte left. Then the run dir is copied
  # out (the tmpfs goes with the namespace) and the training's exit code reported.
  script = f'''
    set -u
    mount -t tmpfs -o size=64m tmpfs {shlex.quote(str(mnt))} || exit 90
    {train_cmd} > {shlex.quote(str(tmp_path / 'log'))} 2>&1 &
    pid=$!
    until [ "$(wc -l < {metrics} 2>/dev/null || echo 0)" -ge {FILL_AT} ]; do
      kill -0 $pid 2>/dev/null || break
      sleep 0.01
    done
    dd if=/dev/zero of={shlex.quote(str(mnt / 'filler'))} bs=1M 2>/dev/null
    wait $pid
    echo "exit=$?"
    cp -a {shlex.quote(str(run_dir))} {shlex.quote(str(copy))}
  '''
  proc = subprocess.run(['unshare', '-rm', 'bash', '-c', script], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  log = (tmp_path / 'log').read_text()
  assert 'exit=4' in proc.stdout, proc.stdout + proc.stderr + log
  errors = [l for l in log.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'no space left on the device' in errors[0], log
  # orbax logs the failures of its own writer threads with their tracebacks; none passes
  # through dlmjax, whose one line is the error above.
  assert f'{ROOT}/dlmjax/' not in log, log
  ckpt = Checkpointer(copy / 'checkpoints', read_only=True)
  last = ckpt.latest_step()
  ckpt.close()
  assert f'the last good checkpoint is step {last}.' in errors[0]
  steps = json.loads((whole / 'result.json').read_text())['steps']
  # A checkpoint from before the disk filled: filling it takes a few steps' time, and a save
  # still being written then is lost, so it is the last one finished, not always step 40.
  assert last is not None and 0 < last < steps
  assert not (copy / 'result.json').exists()

  # With space again (here: the copy on the real disk) the same command resumes from it.
  again = train.run(train.config_lib.load_config(
      [str(ROOT / 'configs/tiny.yaml')], [*RUN, f'run_dir={copy}']))
  assert again['steps'] == steps
  assert_finished_like(whole, copy)
  counts['disk_full_runs_stopped_and_resumed'] += 1
