"""Two local processes joined by `jax.distributed.initialize` (CPU collectives: gloo), each
with 4 forced host devices, train on an 8-device mesh from the command line, and give the
same run as one process on one device: same losses, same validation, same parameters.

Each process reads only its rows of every batch; only process 0 logs and writes files; the
checkpoint is written by both (orbax) and restored here on one device. Tolerance: float32
rounding of sums in another order (rtol 1e-5 on losses, 1e-5 absolute on parameters;
measured ~3e-7 and ~4e-7 after 12 steps).
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import dlmjax
from dlmjax import config as config_lib
from dlmjax import train
from dlmjax.rundir import read_jsonl

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
       'data.seq_len=32', 'train.batch_size=8', 'data.unique_tokens=20000', 'eval.val_tokens=1024',
       'eval.num_evals=2', 'eval.batch_size=8', 'eval.mdm_samples=2', 'train.log_every=1',
       'train.progress=false', 'objective=mdm', 'eval.tasks=']
MESH = ['mesh.data=2', 'mesh.fsdp=4']  # 8 devices: 2 processes x 4


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(run_dir, *overrides) -> list[subprocess.Popen]:
  """The same train command on two processes, as a launcher would start it."""
  port = free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             PYTHONUNBUFFERED='1')
  return [subprocess.Popen(
      [sys.executable, '-m', 'dlmjax.train', 'configs/tiny.yaml', *RUN, *MESH, *overrides,
       f'distributed.coordinator=localhost:{port}', 'distributed.num_processes=2',
       f'distributed.process_id={i}', f'run_dir={run_dir}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]


def finish(procs, timeout=600) -> list[str]:
  outs = [p.communicate(timeout=timeout)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def one_process(run_dir, *overrides) -> dict:
  return train.run(config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                                          [*RUN, *overrides, f'run_dir={run_dir}']))


def assert_same_run(one_dir, two_dir):
  losses = lambda d: [m['loss'] for m in read_jsonl(d / 'metrics.jsonl')]
  a, b = losses(one_dir), losses(two_dir)
  assert len(a) == len(b)  # one line per step: only process 0 writes
  np.testing.assert_allclose(b, a, rtol=1e-5)
  ra, rb = (json.loads((d / 'result.json').read_text()) for d in (one_dir, two_dir))
  assert ra['steps'] == rb['steps'] and ra['train_tokens'] == rb['train_tokens']
  assert rb['val_loss'] == pytest.approx(ra['val_loss'], rel=1e-5)
  # Restored on this process's single device from the 8-device, 2-process checkpoint.
  pa, pb = dlmjax.load_run(one_dir).params, dlmjax.load_run(two_dir).params
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-5)


def test_two_processes_train_like_one(tmp_path):
  procs = launch(tmp_path / 'two', 'train.steps=12')
  one_process(tmp_path / 'one', 'train.steps=12')
  outs = finish(procs)
  assert 'done.' in outs[0] and 'done.' not in outs[1]  # process 0 alone reports
  assert 'mesh data=2 fsdp=4 tensor=1 expert=1 on 8 cpu devices, 2 process(es)' in outs[0]
  assert_same_run(tmp_path / 'one', tmp_path / 'two')


@pytest.mark.slow
def test_sigterm_on_one_host_stops_both_at_one_checkpoint_and_resumes(tmp_path):
  extra = ['train.steps=300', 'checkpoint.every=1000']
  procs = launch(tmp_path / 'two', *extra)
  metrics = tmp_path / 'two' / 'metrics.jsonl'
  deadline = time.time() + 300
  while time.time() < deadline and len(read_jsonl(metrics)) < 20:
    assert all(p.poll() is None for p in procs), 'a process ended early'
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # the preempted host
  outs = finish(procs)
  assert 'SIGTERM' in outs[0], outs[0][-2000:]
  stopped = read_jsonl(metrics)[-1]['step']
  assert stopped < 300 and not (tmp_path / 'two' / 'result.json').exists()
  steps = sorted(int(p.name) for p in (tmp_path / 'two' / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert steps[-1] == stopped  # one checkpoint, at the step both processes agreed on

  finish(launch(tmp_path / 'two', *extra))
  # The same two-process run without the interruption: bit for bit the same run.
  finish(launch(tmp_path / 'whole', *extra))
  losses = lambda d: [m['loss'] for m in read_jsonl(d / 'metrics.jsonl')]
  assert losses(tmp_path / 'two') == losses(tmp_path / 'whole')
  pa, pb = dlmjax.load_run(tmp_path / 'whole').params, dlmjax.load_run(tmp_path / 'two').params
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
