"""A grid directory in a bad state: a damaged result.json, a dead runner's lock, a run
directory holding another run. Each is reported by name and none is overwritten silently."""

import json
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
MICRO = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
         'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=5000', 'data.epochs=1',
         'eval.val_tokens=1024', 'eval.num_evals=1', 'eval.batch_size=8', 'eval.mdm_samples=2',
         'eval.tasks=', 'train.log_every=5']
NAME = 'ar-tiny-u2M-e1-s0'


def grid(*args):
  return subprocess.run([sys.executable, '-m', 'experiments.grid', *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def run(out, *extra):
  return grid('run', 'crossover-tiny', '--out', str(out), '--only', NAME, *MICRO, *extra)


def test_a_damaged_result_is_reported_kept_and_the_run_finished_again(tmp_path, counts):
  out = tmp_path / 'out'
  assert run(out).returncode == 0
  rdir = out / 'runs' / NAME
  good = (rdir / 'result.json').read_text()
  (rdir / 'result.json').write_text(good[:len(good) // 2])  # e.g. cut by a full disk

  status = grid('status', 'crossover-tiny', '--out', str(out), *MICRO)
  assert 'damaged result.json' in status.stdout, status.stdout
  report = grid('report', 'crossover-tiny', '--out', str(out))
  assert report.returncode == 0, report.stderr
  assert NAME in json.loads((out / 'summary.json').read_text())['incomplete']

  again = run(out)
  assert again.returncode == 0, again.stdout + again.stderr
  assert '1 trained' in again.stdout
  log = (rdir / 'train.log').read_text()
  assert f'{rdir / "result.json"} is damaged' in log
  kept = list(rdir.glob('result.json.damaged-*'))
  assert len(kept) == 1 and kept[0].read_text() == good[:len(good) // 2]
  new, old = json.loads((rdir / 'result.json').read_text()), json.loads(good)
  assert (new['val_loss'], new['steps'], new['best_val_loss']) == (
      old['val_loss'], old['steps'], old['best_val_loss'])
  counts['grid_damaged_results_recovered'] += 1


def test_a_dead_runners_lock_is_reported_and_reclaimed(tmp_path, counts):
  out = tmp_path / 'out'
  rdir = out / 'runs' / NAME
  rdir.mkdir(parents=True)
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  (rdir / 'lock').write_text(json.dumps({'pid': dead.pid, 'host': socket.gethostname()}))
  status = grid('status', 'crossover-tiny', '--out', str(out), *MICRO)
  assert 'stale lock' in status.stdout
  proc = run(out)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (rdir / 'result.json').is_file() and not (rdir / 'lock').exists()
  counts['grid_stale_locks_reclaimed'] += 1


def test_a_run_dir_holding_another_run_is_named_and_left_alone(tmp_path, counts):
  out = tmp_path / 'out'
  assert run(out).returncode == 0
  result = out / 'runs' / NAME / 'result.json'
  before = (result.read_bytes(), result.stat().st_mtime_ns)
  # The same grid and run name with another learning rate: not this run, and not to be
  # counted as complete or trained over.
  proc = run(out, 'optimizer.lr=0.01')
  assert proc.returncode == 1
  assert (f"{NAME}: FAILED: run_dir {out / 'runs' / NAME} holds a run with a different config "
          f"(key 'optimizer.lr': 0.002 there, 0.01 here)") in proc.stdout, proc.stdout
  assert 'Traceback' not in proc.stdout + proc.stderr
  assert (result.read_bytes(), result.stat().st_mtime_ns) == before
  # The same run asked for again is recognised as complete.
  assert '0 trained, 1 already complete' in run(out).stdout
  counts['grid_foreign_run_dirs_refused'] += 1
