"""Measurements on 8 forced host devices, run as a script by tests/test_multidevice.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice.py OUT.json

The device count must be fixed before jax starts, so these checks run in one subprocess and
write what they measure as JSON; the tests assert on it. One process for every mesh keeps
the cost to one jax start-up. To add a mesh or a model (e.g. an expert-parallel mesh with a
mixture-of-experts config), extend CASES: each case trains a few steps on its mesh and on
one device from the same initial state and batches.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import jax
import numpy as np

from dlmjax import config as config_lib
from dlmjax import memory, sharding
from dlmjax.checkpoint import Checkpointer
from dlmjax.train import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
VOCAB = 64
# Small enough to compile in about a second; every size divides the mesh axes it meets
# (d_model by fsdp, kv heads, d_ff and vocabulary by tensor, rows by data x fsdp).
MODEL = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=4', 'model.n_kv_heads=2',
         'model.d_ff=64', f'model.vocab_size={VOCAB}', 'data.seq_len=32', 'train.batch_size=16',
         'optimizer.lr=1e-2', 'optimizer.warmup_steps=1']


def plain(name: str, objective: str) -> tuple:
  """A case with no overrides, its mesh sizes read from its name (data x fsdp x tensor x expert)."""
  return (f'{name}-{objective}', objective, tuple(int(n) for n in name.split('x')), [], [])


# (name, objective, mesh sizes data/fsdp/tensor/expert, mesh overrides, run overrides): the
# run overrides apply to the one-device reference as well, the mesh overrides only here.
# In `make test`: every mesh shape, each objective on some (the step is the same code for both
# but for the loss); the other pairs run with --extended.
CASES = [plain('8x1x1x1', 'ar'), plain('2x2x2x1', 'ar'), plain('2x4x1x1', 'mdm'),
         plain('1x4x2x1', 'mdm')]
# Run with --extended (the slow tests): more cases, and the memory cross-check with remat.
EXTENDED_CASES = [
    plain('8x1x1x1', 'mdm'), plain('2x2x2x1', 'mdm'), plain('2x4x1x1', 'ar'),
    plain('1x4x2x1', 'ar'),
    # Gradient accumulation with rows split over 8 devices (the reference accumulates too).
    ('2x4x1x1-micro2-mdm', 'mdm', (2, 4, 1, 1), [], ['train.microbatches=2']),
    # Two DCN slices of four FSDP devices each.
    ('dcn2x1x4x1x1-mdm', 'mdm', (1, 4, 1, 1), ['mesh.dcn_data=2'], []),
    # Every block rematerialised.
    ('2x4x1x1-remat-ar', 'ar', (2, 4, 1, 1), [], ['model.remat=block']),
]
RESHARD_FROM = '2x4x1x1-mdm'  # the trained state that is saved and restored elsewhere
# The compiled steps whose memory is cross-checked against the estimate.
MEMORY_FROM = ('8x1x1x1-ar', '2x4x1x1-mdm', '1x4x2x1-mdm')


def load(*overrides: str) -> config_lib.Config:
  return config_lib.load_config([os.path.join(ROOT, 'configs/tiny.yaml')], [*MODEL, *overrides])


def mesh_overrides(sizes) -> list[str]:
  return [f'mesh.{a}={n}' for a, n in zip(sharding.MESH_AXES, sizes)]


def batches(seed: int = 0) -> list[dict[str, np.ndarray]]:
  """STEPS packed batches: two or three segments per row, padding at some rows' ends."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(STEPS):
    b, length = 16, 32
    tokens = rng.integers(4, VOCAB, (b, length)).astype(np.int32)
    cut = rng.integers(6, length - 6, b)
    seg = np.where(np.arange(length)[None] < cut[:, None], 1, 2).astype(np.int32)
    seg[::3, -5:] = 0  # padding
    pos = np.zeros_like(seg)
    for i in range(1, length):
      pos[:, i] = np.where(seg[:, i] == seg[:, i - 1], pos[:, i - 1] + 1, 0)
    tokens[seg == 0], pos[seg == 0] = 0, 0
    out.append({'tokens': tokens, 'segment_ids': seg, 'positions': pos})
  return out


_INITIAL: dict = {}


def initial_state(cfg: config_lib.Config) -> dict:
  """The initial train state of `cfg`'s model, built once on one device (host copy)."""
  if cfg.objective not in _INITIAL:
    one = load(f'objective={cfg.objective}', *mesh_overrides((1, 1, 1, 1)))
    trainer = Trainer(one, sharding.make_mesh(one.mesh, devices=jax.devices()[:1]), 10)
    _INITIAL[cfg.objective] = jax.device_get(trainer.init())
  return _INITIAL[cfg.objective]


def train(cfg: config_lib.Config, devices) -> tuple[Trainer, dict, list[float]]:
  """STEPS steps from the shared initial state, placed on `cfg`'s mesh over `devices`."""
  mesh = sharding.make_mesh(cfg.mesh, devices=devices)
  trainer = Trainer(cfg, mesh, num_steps=10)
  data = batches()
  trainer.compile({k: v.shape for k, v in data[0].items()})
  state = jax.device_put(initial_state(cfg), trainer.state_shardings)
  losses = []
  for b in data:
    state, metrics = trainer.step(state, sharding.global_batch(b, mesh))
    losses.append(float(metrics['loss']))
  return trainer, state, losses


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def compare(case, references: dict, out: dict) -> tuple[Trainer, dict]:
  name, objective, sizes, mesh_extra, run_extra = case
  key = (objective, *run_extra)
  if key not in references:
    one = load(f'objective={objective}', *mesh_overrides((1, 1, 1, 1)), *run_extra)
    references[key] = train(one, jax.devices()[:1])[1:]
  ref_state, ref_losses = references[key]
  many = load(f'objective={objective}', *mesh_overrides(sizes), *mesh_extra, *run_extra)
  trainer, state, losses = train(many, jax.devices())
  out['equivalence'][name] = {
      'loss_rel_diff': max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses)),
      'param_max_abs_diff': max(float(np.max(np.abs(a - b))) for a, b in
                                zip(leaves(state['params']), leaves(ref_state['params']))),
      'losses': losses, 'mesh': dict(trainer.mesh.shape)}
  return trainer, state


def param_bytes(state: dict) -> int:
  """Bytes of the parameter shards that live on the first device."""
  first = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(state['params'])
             for s in x.addressable_shards if s.device == first)


def fsdp_bytes(out: dict) -> None:
  for fsdp in (1, 2, 4, 8):
    cfg = load('objective=mdm', *mesh_overrides((8 // fsdp, fsdp, 1, 1)))
    trainer = Trainer(cfg, sharding.make_mesh(cfg.mesh), num_steps=10)
    state = jax.device_put(initial_state(cfg), trainer.state_shardings)
    out['fsdp_bytes'][str(fsdp)] = {
        'measured': param_bytes(state),
        'estimated': memory.param_bytes_per_device(cfg, VOCAB, trainer.mesh)}


def reshard(trainer: Trainer, state: dict, out: dict) -> None:
  """Saves the state trained on one mesh; restores it on others and on fewer devices."""
  saved = leaves(state['params'])
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = Checkpointer(tmp)
    ckpt.save(STEPS, state, {'step': STEPS}, {})
    ckpt.close()
    for name, sizes, devices in [('1x4x2x1', (1, 4, 2, 1), 8), ('1x2x1x1', (1, 2, 1, 1), 2),
                                 ('one-device', (1, 1, 1, 1), 1)]:
      cfg = load(f'objective={trainer.cfg.objective}', *mesh_overrides(sizes))
      target = Trainer(cfg, sharding.make_mesh(cfg.mesh, devices=jax.devices()[:devices]), 10)
      reader = Checkpointer(tmp, read_only=True)
      restored, _, _ = reader.restore(STEPS, target.abstract_state)
      reader.close()
      out['reshard'][name] = {
          'identical': all(np.array_equal(a, b)
                           for a, b in zip(saved, leaves(restored['params']))),
          'on_target_shardings': all(
              x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(
                  jax.tree.leaves(restored), jax.tree.leaves(target.state_shardings))),
          'devices': devices}


def memory_of(name: str, trainer: Trainer, out: dict) -> None:
  """XLA's buffer assignment of a compiled step against dlmjax.memory.estimate."""
  cfg = trainer.cfg
  ma = trainer._step.memory_analysis()
  est = memory.estimate(cfg, VOCAB, trainer.mesh.size)
  ways = sharding.data_parallel_size(trainer.mesh)
  batch_bytes = 3 * 4 * cfg.train.batch_size * cfg.data.seq_len // ways  # int32 [B, L] x 3
  out['memory'][name] = {
      'xla_state': ma.argument_size_in_bytes - batch_bytes,
      'xla_total': (ma.argument_size_in_bytes + ma.output_size_in_bytes
                    - ma.alias_size_in_bytes + ma.temp_size_in_bytes),
      'est_state': est.params + est.optimizer,
      'est_total': est.total,
      'remat': cfg.model.remat}


def remat_memory(out: dict) -> None:
  """The cross-check at two layers and L = 64, without and with block remat (FSDP mesh)."""
  for remat in ('none', 'block'):
    cfg = load(*mesh_overrides((1, 8, 1, 1)), f'model.remat={remat}', 'model.n_layers=2',
               'data.seq_len=64')
    trainer = Trainer(cfg, sharding.make_mesh(cfg.mesh), num_steps=10)
    trainer.compile({k: (cfg.train.batch_size, cfg.data.seq_len)
                     for k in ('tokens', 'segment_ids', 'positions')})
    memory_of(f'1x8x1x1-L64-{remat}', trainer, out)


def dcn_layout(out: dict) -> None:
  """Device ids along the data axis of a 2-slice mesh (slice = a block of 4 devices here)."""
  mesh = sharding.make_mesh(config_lib.MeshConfig(data=1, fsdp=4, dcn_data=2))
  out['dcn_layout'] = [[d.id for d in row.flat] for row in mesh.devices]


def main(path: str, extended: bool) -> None:
  assert jax.device_count() == 8, 'run with XLA_FLAGS=--xla_force_host_platform_device_count=8'
  out = {'equivalence': {}, 'fsdp_bytes': {}, 'reshard': {}, 'memory': {}}
  references = {}
  for case in CASES + (EXTENDED_CASES if extended else []):
    trainer, state = compare(case, references, out)
    if case[0] == RESHARD_FROM:
      reshard(trainer, state, out)
    if case[0] in MEMORY_FROM:
      memory_of(case[0], trainer, out)
  fsdp_bytes(out)
  dcn_layout(out)
  if extended:
    remat_memory(out)
  with open(path, 'w') as f:
    json.dump(out, f, indent=1)


if __name__ == '__main__':
  main(sys.argv[1], extended='--extended' in sys.argv[2:])
