"""Device mesh from the config, the logical-axis rule table, and multi-process start-up.

Parameters carry logical axis names (`('embed', 'mlp')`) and the model names its main
activations the same way (`constrain(x_BxLxD, ('batch', 'length', 'act_embed'))`);
`LOGICAL_RULES` maps each name to mesh axes, MaxText style, so model code never names a mesh
axis. The train step gets its in/out shardings from the same table.

Mesh axes are `AxisType.Auto`: the compiler propagates shardings from the jit's in/out
shardings and from the activation constraints. Explicit sharding-in-types (what
`jax.make_mesh` gives by default) would make every op of the model carry a sharding rule of
its own -- the einsums of the fused projections, the head-major attention reshapes -- for
no gain in what is computed; with Auto axes the few constraints below pin what matters and
XLA chooses the collectives.

Multi-slice data parallelism (TPU multislice, or GPU hosts over the data-centre network) is
an outer level of the `data` axis: `mesh.dcn_data` slices of `data x fsdp x tensor x expert`
devices each, laid out so that only the data-parallel gradient reduction crosses slices.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import glob
import importlib.util
import math
import os
import pathlib
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from dlmjax.config import DistributedConfig, MeshConfig, TrainConfig
from dlmjax.errors import ConfigError, UserError

MESH_AXES = ('data', 'fsdp', 'tensor', 'expert')

# logical name -> mesh axis (or a tuple of axes, or None: replicated). A dimension whose size
# the axes do not divide is replicated (`logical_to_spec`).
LOGICAL_RULES: dict[str, Any] = {
    # Parameters: FSDP shards the model dimension, tensor parallelism heads and MLP columns.
    'embed': 'fsdp',
    'vocab': 'tensor',
    'heads': 'tensor',
    'kv_heads': 'tensor',
    'qkv': 'tensor',
    'mlp': 'tensor',
    'expert': 'expert',
    'head_dim': None,
    'norm': None,
    'layers': None,
    # Activations: rows over every data-parallel device (FSDP is data parallel for
    # activations; so is the expert axis outside the MoE layers, as in MaxText and
    # DeepSpeed-MoE, while inside them tokens travel to experts), the residual stream whole on
    # each device (Megatron-style tensor parallelism), heads / MLP columns / vocabulary split
    # like their weights.
    'batch': ('data', 'fsdp', 'expert'),
    'length': None,
    'act_embed': None,
    'act_heads': 'tensor',
    'act_mlp': 'tensor',
    'act_vocab': 'tensor',
}


# ---------------------------------------------------------------------------------------
# The mesh.

def _ici_shape(cfg: MeshConfig, num_devices: int) -> list[int]:
  """Axis sizes within one slice, -1 resolved."""
  sizes = [getattr(cfg, a) for a in MESH_AXES]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f'mesh: {num_devices} devices per slice are not divisible by the fixed '
                        f'axes ({dict(zip(MESH_AXES, sizes))})')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f'mesh: sizes {dict(zip(MESH_AXES, sizes))} multiply to '
                      f'{math.prod(sizes)}, but there are {num_devices} devices per slice')
  return sizes


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, ...]:
  """The mesh's axis sizes (`data` includes the dcn_data slices); checks the device count."""
  if num_devices % cfg.dcn_data:
    raise ConfigError(f'mesh.dcn_data={cfg.dcn_data} does not divide the {num_devices} devices')
  sizes = _ici_shape(cfg, num_devices // cfg.dcn_data)
  sizes[0] *= cfg.dcn_data
  return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
  """The device mesh over `devices` (default: all), axes MESH_AXES, all of type Auto."""
  devices = list(devices if devices is not None else jax.devices())
  shape = mesh_shape(cfg, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if cfg.dcn_data == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  ici = (shape[0] // cfg.dcn_data,) + shape[1:]
  slices = {getattr(d, 'slice_index', None) for d in devices}
  if None not in slices and len(slices) == cfg.dcn_data:
    # TPU multislice: each slice's devices in its own block of the data axis.
    grid = mesh_utils.create_hybrid_device_mesh(ici, (cfg.dcn_data, 1, 1, 1), devices)
  else:
    # No slice ids (GPU hosts, forced CPU devices): consecutive device blocks are the groups,
    # as devices are numbered process by process and processes host by host.
    per = len(devices) // cfg.dcn_data
    grid = np.concatenate([mesh_utils.create_device_mesh(ici, devices[i * per:(i + 1) * per])
                           for i in range(cfg.dcn_data)], axis=0)
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


# ---------------------------------------------------------------------------------------
# Logical names -> shardings.

def logical_to_spec(logical: tuple | None, shape: tuple[int, ...], mesh: Any) -> P:
  """Maps logical names to a PartitionSpec; an axis that does not divide is replicated.

  `mesh` needs only `.shape` (axis name -> size): a Mesh or an AbstractMesh.
  """
  if not logical:
    return P()
  used: set[str] = set()
  out = []
  for name, dim in zip(logical, shape):
    axes = LOGICAL_RULES.get(name) if name is not None else None
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if not axes or dim % size:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  return P(*out)


def shard_shape(shape: tuple[int, ...], spec: P, mesh: Any) -> tuple[int, ...]:
  """The shape of one device's shard of an array of `shape` laid out by `spec`."""
  out = list(shape)
  for i, axes in enumerate(spec):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    out[i] //= math.prod(mesh.shape[a] for a in axes)
  return tuple(out)


def _is_names(x: Any) -> bool:
  return x is None or (isinstance(x, tuple) and all(isinstance(n, (str, type(None))) for n in x))


def tree_shardings(logical_tree: Any, abstract_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for `abstract_tree` from a same-structured tree of logical-name tuples."""
  return jax.tree.map(
      lambda names, a: NamedSharding(mesh, logical_to_spec(names, a.shape, mesh)),
      logical_tree, abstract_tree, is_leaf=_is_names)


def tree_specs(logical_tree: Any, abstract_tree: Any, mesh: Any) -> Any:
  """PartitionSpecs for `abstract_tree` (works with an AbstractMesh: no devices needed)."""
  return jax.tree.map(lambda names, a: logical_to_spec(names, a.shape, mesh),
                      logical_tree, abstract_tree, is_leaf=_is_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [B, L] batch split over the data-parallel axes."""
  return NamedSharding(mesh, P(LOGICAL_RULES['batch'], None))


def data_parallel_size(mesh: Any) -> int:
  """How many ways the batch's rows are split (the `batch` rule's mesh axes)."""
  return math.prod(mesh.shape[a] for a in LOGICAL_RULES['batch'])


def check_batch_divides(train: TrainConfig, mesh: Any) -> None:
  """Rows of every training (micro)batch split evenly over the data-parallel devices, or a
  UserError. XLA would otherwise replicate the batch: correct, but every device would
  compute all of it. (Validation batches are padded with empty rows instead.)"""
  ways = data_parallel_size(mesh)
  rows = train.batch_size // train.microbatches
  if rows % ways:
    raise UserError(f'train.batch_size={train.batch_size} in train.microbatches='
                    f'{train.microbatches} gives {rows} rows per microbatch, not divisible by '
                    f'the {ways} data-parallel devices (mesh {dict(mesh.shape)})')


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# ---------------------------------------------------------------------------------------
# Activation constraints: a no-op outside `activation_mesh`.

_ACTIVATION_MESH: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar(
    'dlmjax_activation_mesh', default=None)


@contextlib.contextmanager
def activation_mesh(mesh: Mesh):
  """Within this context (while a step is traced), `constrain` pins activations on `mesh`,
  and `mesh` is the trace's abstract mesh (`jax.sharding.get_abstract_mesh`), which
  mesh-aware kernels read (splash attention then runs in a shard_map over rows and heads).

  A one-device mesh sets nothing, so the single-device program is the one without
  constraints.
  """
  if mesh.size == 1:
    yield
    return
  token = _ACTIVATION_MESH.set(mesh)
  try:
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      yield
  finally:
    _ACTIVATION_MESH.reset(token)


def current_model_mesh() -> jax.sharding.AbstractMesh | None:
  """The abstract mesh of the enclosing `activation_mesh` (a step being traced on more than
  one device), or None; model code that shards by hand over the mesh (MoE) reads it."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def constrain(x: jax.Array, logical: tuple[str | None, ...]) -> jax.Array:
  """`x` with its layout pinned to the mesh axes of its logical names (one per dimension).

  Model code calls this at the points where propagation alone may choose badly (e.g. the
  residual stream next to FSDP-sharded weights, which XLA would otherwise shard along the
  model dimension and re-gather). Outside `activation_mesh` it returns `x` unchanged.
  """
  mesh = _ACTIVATION_MESH.get()
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, logical_to_spec(logical, x.shape, mesh)))


# ---------------------------------------------------------------------------------------
# Input batches across processes.

def process_rows(mesh: Mesh, global_rows: int) -> tuple[int, int]:
  """(i, n): this process's devices hold rows [i R, (i + 1) R) of a batch, R = global_rows / n.

  The data pipeline then reads exactly those rows (shard i of n). n is the process count
  when the batch is split over every process, fewer when processes hold replicas (e.g. a
  tensor-parallel axis across hosts).
  """
  index_map = batch_sharding(mesh).addressable_devices_indices_map((global_rows, 1))
  spans = sorted({(s[0].start or 0, global_rows if s[0].stop is None else s[0].stop)
                  for s in index_map.values()})
  lo, hi = spans[0][0], spans[-1][1]
  rows = hi - lo
  contiguous = all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
  if not contiguous or global_rows % rows or lo % rows:
    raise UserError(f'this process\'s devices hold rows {spans} of the {global_rows}-row batch, '
                    f'not one contiguous block; use a mesh whose data axes follow the hosts')
  return lo // rows, global_rows // rows


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows (`process_rows`) into global arrays (`batch_sharding`)."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return {k: jax.device_put(v, sharding) for k, v in local_batch.items()}
  shards = _process_shards(mesh)
  return {k: jax.make_array_from_process_local_data(
              sharding, v, (v.shape[0] * shards,) + v.shape[1:])
          for k, v in local_batch.items()}


@functools.lru_cache(maxsize=8)
def _process_shards(mesh: Mesh) -> int:
  """How many row blocks a batch has across processes (`process_rows`' n), once per mesh."""
  return process_rows(mesh, data_parallel_size(mesh))[1]  # one row per data shard will do


def batch_from_full(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays (`batch_sharding`) from a batch that every process holds in full."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
          for k, v in batch.items()}


# ---------------------------------------------------------------------------------------
# Multi-process start-up.

def _in_slurm_job_step() -> bool:
  """Inside `srun` with several tasks: jax reads the coordinator and ranks from SLURM_*."""
  keys = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID', 'SLURM_LOCALID')
  return all(k in os.environ for k in keys) and int(os.environ['SLURM_NTASKS']) > 1


def _on_cloud_tpu_vm() -> bool:
  """libtpu installed and a Google TPU (PCI vendor 0x1ae0) on the bus: jax's own test."""
  if importlib.util.find_spec('libtpu') is None:
    return False
  for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
    try:
      if pathlib.Path(vendor).read_text().strip() == '0x1ae0':
        return True
    except OSError:
      continue
  return False


def distributed_mode(cfg: DistributedConfig) -> str:
  """How this process joins a job: 'explicit', 'slurm', 'tpu', 'env' or 'single'."""
  if cfg.coordinator:
    return 'explicit'
  if _in_slurm_job_step():
    return 'slurm'
  if _on_cloud_tpu_vm():
    return 'tpu'  # the metadata server names the workers (one host or a pod slice)
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'env'  # jax's own variables: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, ...
  return 'single'


def initialize_distributed(cfg: DistributedConfig) -> str:
  """Calls `jax.distributed.initialize` as the environment asks; returns the mode.

  Must run before anything touches a jax device. TPU VMs and SLURM job steps are detected
  (jax reads their variables); `distributed.*` keys name the coordinator explicitly; a lone
  process is left alone. On CPU the cross-process collectives are gloo (jax's default).
  """
  mode = distributed_mode(cfg)
  if mode == 'explicit':
    jax.distributed.initialize(cfg.coordinator, cfg.num_processes, cfg.process_id)
  elif mode == 'env':
    missing = [k for k in ('JAX_NUM_PROCESSES', 'JAX_PROCESS_ID') if k not in os.environ]
    if missing:
      raise UserError(f'JAX_COORDINATOR_ADDRESS is set but {" and ".join(missing)} not; set '
                      f'all three, or distributed.coordinator/num_processes/process_id')
    jax.distributed.initialize(num_processes=int(os.environ['JAX_NUM_PROCESSES']),
                               process_id=int(os.environ['JAX_PROCESS_ID']))
  elif mode in ('slurm', 'tpu'):
    jax.distributed.initialize()
  return mode
