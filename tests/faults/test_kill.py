"""SIGKILL at random moments of a tiny run: re-running the same command always finishes,
logs every step once, and ends with the parameters of an uninterrupted run."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np

from dlmjax.rundir import read_jsonl
from faults.common import assert_finished_like

ROOT = pathlib.Path(__file__).resolve().parents[2]
KILLS = 20

# The train tests' micro model, with a checkpoint every 2 steps and 6 evaluations, so that
# a random moment falls in a step, a checkpoint write, an evaluation, the MDM's rescoring of
# its best checkpoint or the write of result.json.
RUN = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
       'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=20000', 'data.epochs=4',
       'eval.val_tokens=1024', 'eval.num_evals=6', 'eval.batch_size=8', 'eval.mdm_samples=2',
       'train.log_every=1', 'train.progress=false', 'eval.tasks=', 'checkpoint.every=2',
       'objective=mdm']


def train(run_dir: pathlib.Path) -> subprocess.Popen:
  cmd = [sys.executable, '-m', 'dlmjax.train', 'configs/tiny.yaml', *RUN, f'run_dir={run_dir}']
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True)


def phase(run_dir: pathlib.Path, steps: int) -> str:
  """Where the run stood when it was killed, from what it had written."""
  if (run_dir / 'result.json').exists():
    return 'done'
  if any('tmp' in p.name for p in (run_dir / 'checkpoints').glob('*')):
    return 'checkpoint write'
  metrics = read_jsonl(run_dir / 'metrics.jsonl')
  if not metrics:
    return 'start-up'
  if metrics[-1]['step'] == steps:
    return 'after the last step (final eval, rescoring, result.json)'
  return 'training or eval'


def last_step(run_dir: pathlib.Path) -> int:
  metrics = read_jsonl(run_dir / 'metrics.jsonl')
  return metrics[-1]['step'] if metrics else 0


def wait_for(proc, cond, timeout=600.0) -> bool:
  """Polls until `cond()` or the process ends; True if the condition came first."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      return False
    if cond():
      return True
    time.sleep(0.005)
  raise TimeoutError('the training neither progressed nor ended')


def test_sigkill_at_random_moments_never_loses_or_repeats_work(tmp_path, counts):
  # The uninterrupted run, timed: start-up until its first step, and what follows its last
  # logged step (the final eval, the rescoring, result.json) until it exits.
  t0 = time.time()
  ref = train(tmp_path / 'whole')
  wait_for(ref, lambda: last_step(tmp_path / 'whole') > 0)
  startup = time.time() - t0
  seen, changed = 0, time.time()
  while ref.poll() is None:
    if (s := last_step(tmp_path / 'whole')) != seen:
      seen, changed = s, time.time()
    time.sleep(0.005)
  final = time.time() - changed
  out, _ = ref.communicate()
  assert ref.returncode == 0, out
  whole_metrics = read_jsonl(tmp_path / 'whole' / 'metrics.jsonl')
  whole_evals = read_jsonl(tmp_path / 'whole' / 'eval.jsonl')
  whole_result = json.loads((tmp_path / 'whole' / 'result.json').read_text())
  steps = whole_result['steps']

  rng = np.random.default_rng(0)
  # Where each kill aims: during start-up, a few steps past where the last process got (a
  # step, an eval or a checkpoint write, by a random delay), or after the last step.
  aims = rng.choice(['start-up', 'training', 'end'], size=KILLS, p=[0.15, 0.65, 0.2])
  kills, episodes, runs, phases = 0, 0, 0, {}
  while kills < KILLS:
    episodes += 1
    run_dir = tmp_path / f'cut{episodes}'
    while True:
      before = last_step(run_dir)
      proc = train(run_dir)
      runs += 1
      aim = aims[kills] if kills < KILLS else None
      if aim == 'start-up':
        hit = wait_for(proc, lambda d=time.time() + rng.uniform(0.1, startup): time.time() > d)
      elif aim == 'training':
        target = before + int(rng.integers(1, 12))
        hit = wait_for(proc, lambda: last_step(run_dir) >= min(target, steps))
        if hit:
          time.sleep(rng.uniform(0, 0.3))
      elif aim == 'end':
        hit = wait_for(proc, lambda: last_step(run_dir) >= steps)
        if hit:
          time.sleep(rng.uniform(0, final))
      else:
        hit = False
      if hit and proc.poll() is None:
        where = phase(run_dir, steps)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        kills += 1
        phases[where] = phases.get(where, 0) + 1
        continue
      out, _ = proc.communicate(timeout=600)
      assert proc.returncode == 0, out
      if (run_dir / 'result.json').exists():
        break

    # Finished, every step logged once, the same numbers and parameters as the whole run.
    result = json.loads((run_dir / 'result.json').read_text())
    assert result['val_loss'] == whole_result['val_loss']
    metrics = read_jsonl(run_dir / 'metrics.jsonl')
    assert [m['step'] for m in metrics] == list(range(1, steps + 1))
    assert [m['loss'] for m in metrics] == [m['loss'] for m in whole_metrics]
    evals = read_jsonl(run_dir / 'eval.jsonl')
    assert [(e['step'], e['val_loss']) for e in evals] == [
        (e['step'], e['val_loss']) for e in whole_evals]
    assert_finished_like(tmp_path / 'whole', run_dir)
    # No orbax temporary directory or half-written file left behind.
    leftovers = [p for p in run_dir.rglob('*') if 'tmp' in p.name or p.name.startswith('.')]
    assert not leftovers, leftovers

  counts['sigkill_kills_survived'] += kills
  counts['sigkill_runs_lost'] += 0
  counts['sigkill_episodes'] += episodes
  print(f'{kills} kills over {episodes} runs ({runs} processes): {phases}')
