"""Memory per device of a training step, estimated from the config alone (`--dry-run`).

    est = estimate(cfg, vocab_size, num_devices=64, device='h100')  # bytes per device
    est.total, est.parts(), verdict(cfg, vocab_size, 64, 'h100')

No device and no compilation is needed, so the papers' presets can be sized for a TPU pod
or a GPU cluster from any machine. Legend: B global batch rows, M microbatches, L sequence
length, dp the data-parallel ways (the mesh axes of the 'batch' rule), T = B / M / dp x L
tokens per device and microbatch, D d_model, Dh head dim, and per device (after tensor
parallelism, where the rules split them) h query heads, k kv heads, f MLP columns, v vocab.
`a` is the compute dtype's bytes (2 for bf16), `p` the master weights' (4 for f32).

  params      per-device shards of every parameter under the logical-axis rules (exact:
              the same `logical_to_spec` the train step uses)
  optimizer   AdamW's two moments, each like the params: 2 x params
  gradients   one gradient per parameter, sharded like it; with M > 1 also the f32
              accumulator: params x (1 + 4 / p)
  fsdp        with parameters sharded over fsdp: the layers in flight, two layers' weights
              gathered and one layer's whole gradient before its reduce-scatter (in p)
  activations what the backward pass holds, per device and microbatch:
                T x (n_layers x saved(remat) + working(remat) + 3 x 4 v)
              with the logits, their softmax and their gradient in f32 (3 x 4 v), and per
              token and block
                all           = a (6 D + (3h + 2k) Dh + 5 f) + 4 h L
                saved(none)   = all
                saved(dots)   = a (2 D + (h + 2k) Dh + 2 f)  (block input, w_o out, q/k/v, gate/up)
                saved(block)  = a D                          (block input)
                working(none) = 0
                working(dots) = a 2 D + 2 x 4 h L            (the block's attention recomputed)
                working(block) = all                          (the whole block recomputed)
              The 4 h L terms are attention's f32 L x L probabilities, which only the 'xla'
              backend materialises (flash-style kernels keep O(1) per row): 0 for the others,
              and for 'auto' on a GPU or TPU (it runs a kernel there; xla on CPU).

The coefficients were read off XLA's buffer assignment (`compiled.memory_analysis()`) of the
real train step on CPU, as bytes per token and layer while d_model, d_ff, heads and length
vary; tests/test_multidevice.py checks the estimate against it on 8 forced devices, and
docs/architecture.md ("Memory") has the figures. Not counted: XLA's workspace for
collectives and fusions and the allocator's fragmentation, so keep 10-20% of a device free.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from dlmjax import sharding
from dlmjax.config import Config, ModelConfig
from dlmjax.errors import UserError

# The accelerators the grids run on: memory per device (vendor data sheets, bytes) and the
# jax platform, which decides what `model.attention=auto` runs there.
DEVICES = {
    'h100': (80e9, 'gpu'),
    'h200': (141e9, 'gpu'),
    'a100': (80e9, 'gpu'),
    'b200': (180e9, 'gpu'),
    'v4': (32e9, 'tpu'),
    'v5e': (16e9, 'tpu'),
    'v5p': (95e9, 'tpu'),
    'v6e': (32e9, 'tpu'),
}


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes per device of one training step, by what holds them (module docstring)."""

  mesh: dict[str, int]
  tokens_per_device: int  # T: rows per device and microbatch x L
  params: float
  optimizer: float
  gradients: float
  fsdp: float
  activations: float

  @property
  def total(self) -> float:
    return self.params + self.optimizer + self.gradients + self.fsdp + self.activations

  def parts(self) -> dict[str, float]:
    return {'params': self.params, 'optimizer': self.optimizer, 'gradients': self.gradients,
            'fsdp': self.fsdp, 'activations': self.activations, 'total': self.total}


def abstract_mesh(cfg: Config, num_devices: int) -> AbstractMesh:
  """The config's mesh over `num_devices` devices, as axis sizes only (no device needed)."""
  shape = sharding.mesh_shape(cfg.mesh, num_devices)
  return AbstractMesh(shape, sharding.MESH_AXES,
                      axis_types=(AxisType.Auto,) * len(sharding.MESH_AXES))


@functools.lru_cache(maxsize=32)
def _abstract_params(model_key: tuple, vocab_size: int) -> tuple[dict, dict]:
  """(shapes, logical names) of the model's parameters as pure dicts; no array is made."""
  from dlmjax.model.transformer import Transformer  # the model's own shapes and names

  model_cfg = ModelConfig(*model_key)
  abstract = nnx.eval_shape(lambda: Transformer(model_cfg, vocab_size, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  return nnx.to_pure_dict(state), nnx.to_pure_dict(nnx.get_partition_spec(state))


def _param_shards(cfg: Config, vocab_size: int, mesh) -> dict:
  """Pure dict of the parameters' per-device bytes under the rules on `mesh`."""
  shapes, logical = _abstract_params(dataclasses.astuple(cfg.model), vocab_size)
  specs = sharding.tree_specs(logical, shapes, mesh)
  return jax.tree.map(lambda a, spec: float(math.prod(sharding.shard_shape(a.shape, spec, mesh))
                                            * np.dtype(a.dtype).itemsize), shapes, specs)


def param_bytes_per_device(cfg: Config, vocab_size: int, mesh) -> float:
  """Bytes of one device's parameter shards (exact, from the logical-axis rules)."""
  return sum(jax.tree.leaves(_param_shards(cfg, vocab_size, mesh)))


def _gathered_layer_bytes(cfg: Config, vocab_size: int, mesh) -> float:
  """One block's weights on a device once FSDP has gathered them (other axes still split)."""
  unsharded = AbstractMesh(tuple(1 if a == 'fsdp' else n for a, n in mesh.shape.items()),
                           tuple(mesh.shape), axis_types=mesh.axis_types)
  return sum(jax.tree.leaves(_param_shards(cfg, vocab_size, unsharded)['blocks'][0]))


def _split(n: int, ways: int) -> float:
  """n spread over `ways` devices when it divides (the rules replicate otherwise)."""
  return n / ways if ways > 1 and n % ways == 0 else n


def holds_attention_probabilities(cfg: Config, platform: str) -> bool:
  """Whether the attention backend on `platform` materialises the L x L probabilities: 'xla'
  does; the registered kernels (flash-style) do not. 'auto' stands for the platform's first
  kernel (`attention.AUTO_ORDER`: it is used once it passes its start-up check), else xla."""
  from dlmjax.model import attention

  backend = cfg.model.attention
  if backend == 'auto':
    backend = next(iter(attention.AUTO_ORDER.get(platform, [])), 'xla')
  return backend == 'xla'


def activation_bytes_per_token(cfg: Config, vocab_size: int, mesh,
                               platform: str) -> dict[str, float]:
  """The module docstring's per-token terms for `cfg.model.remat`: saved, working, logits."""
  m = cfg.model
  a = np.dtype(m.dtype).itemsize
  t = mesh.shape['tensor']
  # Heads are split with their kv group ('kv_heads' -> tensor); the MLP and vocab by columns.
  k = _split(m.kv_heads, t)
  h = m.n_heads * k / m.kv_heads
  f = _split(m.d_ff, t)
  v = _split(vocab_size, t)
  d, dh, length = m.d_model, m.dh, cfg.data.seq_len
  probs = 4 * h * length if holds_attention_probabilities(cfg, platform) else 0.0
  every = a * (6 * d + (3 * h + 2 * k) * dh + 5 * f) + probs
  saved = {'none': every, 'dots': a * (2 * d + (h + 2 * k) * dh + 2 * f), 'block': a * d}
  working = {'none': 0.0, 'dots': a * 2 * d + 2 * probs, 'block': every}
  return {'saved': saved[m.remat], 'working': working[m.remat], 'logits': 3 * 4 * v}


def platform_of(device: str | None) -> str:
  """The jax platform of a DEVICES kind, or of this machine when None."""
  return DEVICES[device][1] if device else jax.default_backend()


def estimate(cfg: Config, vocab_size: int, num_devices: int,
             device: str | None = None) -> Estimate:
  """Bytes per device of a training step of `cfg` on `num_devices` devices of kind `device`
  (a DEVICES key; None: this machine's kind), by the module docstring's formulas."""
  mesh = abstract_mesh(cfg, num_devices)
  params = param_bytes_per_device(cfg, vocab_size, mesh)
  p = np.dtype(cfg.model.param_dtype).itemsize
  micro = cfg.train.microbatches
  tokens = cfg.train.batch_size / micro / sharding.data_parallel_size(mesh) * cfg.data.seq_len
  per_token = activation_bytes_per_token(cfg, vocab_size, mesh, platform_of(device))
  activations = tokens * (cfg.model.n_layers * per_token['saved'] + per_token['working']
                          + per_token['logits'])
  fsdp = 3 * _gathered_layer_bytes(cfg, vocab_size, mesh) if mesh.shape['fsdp'] > 1 else 0.0
  return Estimate(
      mesh=dict(mesh.shape), tokens_per_device=int(tokens), params=params,
      optimizer=2 * params, gradients=params * (1 + 4 / p if micro > 1 else 1), fsdp=fsdp,
      activations=activations)


def device_bytes(device: str | None = None) -> float:
  """Memory of one device of kind `device` (a DEVICES key), else of this machine's first."""
  if device:
    return DEVICES[device][0]
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return float(stats['bytes_limit'])
  # CPU devices (forced ones included) share the host's memory.
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / jax.local_device_count()


def fewest_microbatches(cfg: Config, vocab_size: int, num_devices: int,
                        device: str | None = None) -> int | None:
  """The smallest train.microbatches whose estimate fits the device's memory, or None."""
  budget = device_bytes(device)
  rows = cfg.train.batch_size // sharding.data_parallel_size(abstract_mesh(cfg, num_devices))
  for micro in range(1, rows + 1):
    if rows % micro == 0:
      trial = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, microbatches=micro))
      if estimate(trial, vocab_size, num_devices, device).total <= budget:
        return micro
  return None


def verdict(cfg: Config, vocab_size: int, num_devices: int, device: str | None = None, *,
            short: bool = False) -> str:
  """Whether the estimate fits a device's memory and, if not, what would.

  `short` gives a table cell ('15.31 GB fits', '106.26 GB: train.microbatches=2').
  """
  try:
    sharding.check_batch_divides(cfg.train, abstract_mesh(cfg, num_devices))
  except UserError as e:
    return f'error: {e}'
  budget = device_bytes(device)
  total = estimate(cfg, vocab_size, num_devices, device).total
  if total <= budget:
    return (f'{gb(total)} fits' if short else
            f'fits: {gb(total)} of {gb(budget)} ({100 * (1 - total / budget):.0f}% free)')
  micro = fewest_microbatches(cfg, vocab_size, num_devices, device)
  hint = (f'train.microbatches={micro}' if micro else
          'no microbatch count fits: more devices, model.remat=block or mesh.tensor')
  return f'{gb(total)}: {hint}' if short else (
      f'does NOT fit: {gb(total)} of {gb(budget)}; ' + (f'{hint} fits' if micro else hint))


def gb(num_bytes: float) -> str:
  return f'{num_bytes / 1e9:.2f} GB'
