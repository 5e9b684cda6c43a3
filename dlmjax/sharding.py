"""Device mesh from the config and the table from logical axis names to mesh axes.

Model parameters carry logical axis names (`('embed', 'mlp')`); `LOGICAL_RULES` maps each
name to a mesh axis, MaxText style, so model code never names a mesh axis. Mesh axes are
`AxisType.Auto`: the train step gets in/out shardings from these rules and XLA propagates
the rest (explicit sharding-in-types would make every model op carry sharding rules).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from dlmjax.config import MeshConfig
from dlmjax.errors import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor', 'expert')

# logical name -> mesh axis (or a tuple of axes, or None: replicated)
# Rows are split over the expert axis too: outside the MoE layers it is one more
# data-parallel axis (as in MaxText and DeepSpeed-MoE), inside them tokens travel to experts.
LOGICAL_RULES: dict[str, Any] = {
    'batch': ('data', 'fsdp', 'expert'),
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
    'length': None,
}


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, ...]:
  """Resolves -1 and checks that the axis sizes multiply to the device count."""
  sizes = [getattr(cfg, a) for a in MESH_AXES]
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f'mesh: {num_devices} devices are not divisible by the fixed axes '
                        f'({dict(zip(MESH_AXES, sizes))})')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f'mesh: sizes {dict(zip(MESH_AXES, sizes))} multiply to '
                      f'{math.prod(sizes)}, but there are {num_devices} devices')
  return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: list | None = None) -> Mesh:
  devices = devices if devices is not None else jax.devices()
  shape = mesh_shape(cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def model_mesh(mesh: Mesh):
  """Context in which model code may read the mesh (`current_model_mesh`), e.g. for expert
  parallelism. Abstract, so NNX never takes it for a context to shard parameters in."""
  return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def current_model_mesh() -> jax.sharding.AbstractMesh | None:
  """The mesh of the enclosing `model_mesh`, or None."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def logical_to_spec(logical: tuple | None, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Maps logical names to a PartitionSpec; an axis that does not divide is replicated."""
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


def tree_shardings(logical_tree: Any, abstract_tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for `abstract_tree` from a same-structured tree of logical-name tuples."""
  is_names = lambda x: x is None or (isinstance(x, tuple) and all(
      isinstance(n, (str, type(None))) for n in x))
  return jax.tree.map(
      lambda names, a: NamedSharding(mesh, logical_to_spec(names, a.shape, mesh)),
      logical_tree, abstract_tree, is_leaf=is_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows of a [B, L] batch split over the data-parallel axes."""
  return NamedSharding(mesh, P(LOGICAL_RULES['batch'], None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded by `batch_sharding`."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return {k: jax.device_put(v, sharding) for k, v in local_batch.items()}
  return {k: jax.make_array_from_process_local_data(sharding, v)
          for k, v in local_batch.items()}
