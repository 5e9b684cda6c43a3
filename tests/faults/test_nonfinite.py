"""A loss that turns NaN or inf stops the run at that step with one line naming the step and
the last good checkpoint; no non-finite parameters are ever checkpointed, and the same
command resumes from the good checkpoint."""

import math
import re
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlmjax

from dlmjax import config as config_lib
from dlmjax import train
from dlmjax.checkpoint import Checkpointer
from dlmjax.rundir import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
       'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=20000', 'data.epochs=1',
       'eval.val_tokens=1024', 'eval.num_evals=2', 'eval.batch_size=8', 'train.log_every=4',
       'train.progress=false', 'eval.tasks=', 'checkpoint.every=5', 'objective=ar']
POISON_AT = 23  # inside a logging window (21-24) and after the checkpoint of step 20


def cfg(run_dir):
  return config_lib.load_config([str(ROOT / 'configs/tiny.yaml')], [*RUN, f'run_dir={run_dir}'])


def test_a_real_divergence_exits_3_with_one_line(tmp_path, counts):
  cmd = [sys.executable, '-m', 'dlmjax.train', 'configs/tiny.yaml', *RUN,
         f'run_dir={tmp_path / "nan"}', 'optimizer.lr=1e35', 'optimizer.grad_clip=0',
         'optimizer.warmup_steps=1']
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == train.EXIT_NONFINITE, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and re.search(r'non-finite loss at step \d+ ', errors[0]), proc.stderr
  assert 'last good checkpoint: none yet' in errors[0]
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'nan' / 'result.json').exists()
  counts['nonfinite_runs_stopped'] += 1


def test_nan_mid_run_stops_at_its_step_and_never_checkpoints_it(tmp_path, monkeypatch, capsys,
                                                               counts):
  whole = train.run(cfg(tmp_path / 'whole'))
  original = train.Trainer.step

  def poisoned(self, state, batch):
    state, metrics = original(self, state, batch)
    if int(state['step']) >= POISON_AT:  # the update of this step went non-finite
      state = dict(state, params=jax.tree.map(lambda x: x * jnp.nan, state['params']))
      metrics = dict(metrics, loss=jnp.float32(jnp.nan), grad_norm=jnp.float32(jnp.inf))
    return state, metrics

  monkeypatch.setattr(train.Trainer, 'step', poisoned)
  run_dir = tmp_path / 'run'
  with pytest.raises(SystemExit) as e:
    train.run(cfg(run_dir))
  assert e.value.code == train.EXIT_NONFINITE
  err = [l for l in capsys.readouterr().err.splitlines() if l.startswith('error:')]
  assert len(err) == 1, err
  assert f'non-finite loss at step {POISON_AT} ' in err[0]
  assert 'last good checkpoint: step 20.' in err[0]
  ckpt = Checkpointer(run_dir / 'checkpoints', read_only=True)
  steps = ckpt.all_steps()
  ckpt.close()
  assert max(steps) == 20
  for step in steps:
    params = dlmjax.load_run(run_dir, step=step).params
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
  assert all(math.isfinite(m['loss']) for m in read_jsonl(run_dir / 'metrics.jsonl')
             if m['step'] < POISON_AT - 3)

  # Fixed (here: the poison removed), the same command resumes at step 20 and ends like a
  # run that never diverged.
  monkeypatch.setattr(train.Trainer, 'step', original)
  again = train.run(cfg(run_dir))
  assert again['val_loss'] == whole['val_loss']
  assert [m['step'] for m in read_jsonl(run_dir / 'metrics.jsonl')] == [
      m['step'] for m in read_jsonl(tmp_path / 'whole' / 'metrics.jsonl')]
  counts['nonfinite_runs_stopped'] += 1
