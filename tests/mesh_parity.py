"""Train a few steps of a small model on a given mesh, for sharded-vs-single-device tests.

    python tests/mesh_parity.py OUT.npz CASE_JSON [CASE_JSON ...]

Each CASE_JSON is {"name": ..., "overrides": [key=value, ...], "mesh": {"data": 2, ...}};
a case whose mesh is {} runs on one device. For each case the file gets NAME/loss (the loss
of every step) and NAME/params (the final parameters, flattened in tree order). The batches
are fixed and synthetic (packed rows of random tokens), so cases differ only in their mesh
and overrides. Run it with XLA_FLAGS=--xla_force_host_platform_device_count=N set before
Python starts (jax reads it once, at import), i.e. in a subprocess.
"""

from __future__ import annotations

import json
import sys

import numpy as np

STEPS = 3
BATCH, LENGTH, VOCAB = 8, 32, 64
BASE = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=4', 'model.d_ff=64',
        f'model.vocab_size={VOCAB}', f'data.seq_len={LENGTH}', f'train.batch_size={BATCH}',
        'optimizer.warmup_steps=1', 'optimizer.lr=1e-2']


def batches(steps: int) -> list[dict[str, np.ndarray]]:
  """Rows of two packed segments each (segment boundaries differ per row), then a batch."""
  rng = np.random.default_rng(0)
  out = []
  for _ in range(steps):
    tokens = rng.integers(4, VOCAB, (BATCH, LENGTH)).astype(np.int32)
    cut = rng.integers(4, LENGTH - 4, BATCH)[:, None]
    col = np.arange(LENGTH)[None, :]
    segment_ids = np.where(col < cut, 1, 2).astype(np.int32)
    positions = np.where(col < cut, col, col - cut).astype(np.int32)
    out.append({'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions})
  return out


def train_case(overrides: list[str], mesh_sizes: dict[str, int], steps: int = STEPS):
  """(losses [steps], flat float32 params) after `steps` steps on the mesh."""
  import jax

  from dlmjax import config as config_lib, sharding
  from dlmjax.train import Trainer

  cfg = config_lib.load_config([], [*BASE, *overrides])
  if mesh_sizes:
    for axis, size in mesh_sizes.items():
      setattr(cfg.mesh, axis, size)
    mesh = sharding.make_mesh(cfg.mesh)
  else:
    cfg.mesh = config_lib.MeshConfig(1, 1, 1, 1)
    mesh = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1])
  trainer = Trainer(cfg, mesh, num_steps=steps)
  state = trainer.init()
  losses = []
  for batch in batches(steps):
    state, metrics = trainer.step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  leaves = jax.tree.leaves(jax.device_get(state['params']))
  return np.asarray(losses), np.concatenate([np.ravel(x).astype(np.float32) for x in leaves])


def main(argv: list[str]) -> None:
  out, cases = argv[0], [json.loads(a) for a in argv[1:]]
  arrays = {}
  for case in cases:
    losses, params = train_case(case['overrides'], case['mesh'])
    arrays[f'{case["name"]}/loss'] = losses
    arrays[f'{case["name"]}/params'] = params
  np.savez(out, **arrays)


if __name__ == '__main__':
  main(sys.argv[1:])

