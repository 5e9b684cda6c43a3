"""Mesh sizes from the config, the logical-axis rules, activation constraints, batch rows per
process, validation padding, and how a process decides to join a multi-process job.

(Training on several devices and processes: tests/test_multidevice.py, test_multiprocess.py.)
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from dlmjax import config as config_lib
from dlmjax import objectives, sharding
from dlmjax.config import DistributedConfig, MeshConfig, TrainConfig
from dlmjax.data import pipeline
from dlmjax.errors import ConfigError, UserError
from dlmjax.model.transformer import Transformer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def abstract(data=1, fsdp=1, tensor=1, expert=1) -> AbstractMesh:
  return AbstractMesh((data, fsdp, tensor, expert), sharding.MESH_AXES,
                      axis_types=(AxisType.Auto,) * 4)


@pytest.mark.parametrize('cfg, devices, shape', [
    (MeshConfig(), 8, (1, 8, 1, 1)),  # default: FSDP over every device
    (MeshConfig(data=-1, fsdp=1), 8, (8, 1, 1, 1)),
    (MeshConfig(data=2, fsdp=-1, tensor=2), 16, (2, 4, 2, 1)),
    (MeshConfig(data=1, fsdp=-1, dcn_data=4), 32, (4, 8, 1, 1)),  # 4 slices of 8
    (MeshConfig(data=2, fsdp=4, tensor=1, expert=1, dcn_data=2), 16, (4, 4, 1, 1)),
])
def test_mesh_shape_resolves_the_rest_and_puts_slices_in_the_data_axis(cfg, devices, shape):
  assert sharding.mesh_shape(cfg, devices) == shape


@pytest.mark.parametrize('cfg, devices, key', [
    (MeshConfig(data=3, fsdp=-1), 8, 'mesh'),
    (MeshConfig(data=2, fsdp=2), 8, 'mesh'),
    (MeshConfig(dcn_data=3), 8, 'mesh.dcn_data'),
])
def test_impossible_mesh_names_the_key(cfg, devices, key):
  with pytest.raises(ConfigError, match=key):
    sharding.mesh_shape(cfg, devices)


def test_parameters_and_activations_map_through_one_table():
  mesh = abstract(data=2, fsdp=4, tensor=2)
  # FSDP splits the model dimension of weights, tensor parallelism their heads / columns.
  assert sharding.logical_to_spec(('embed', 'mlp'), (64, 128), mesh) == P('fsdp', 'tensor')
  assert sharding.logical_to_spec(('vocab', 'embed'), (64, 32), mesh) == P('tensor', 'fsdp')
  # Activations: rows over data x fsdp, the residual stream whole, logits split by vocab.
  assert sharding.logical_to_spec(('batch', 'length', 'act_embed'), (16, 8, 32), mesh) == P(
      ('data', 'fsdp'), None, None)
  assert sharding.logical_to_spec(('batch', 'length', 'act_vocab'), (16, 8, 64), mesh) == P(
      ('data', 'fsdp'), None, 'tensor')
  # A dimension the axes do not divide stays whole.
  assert sharding.logical_to_spec(('embed', 'mlp'), (6, 3), mesh) == P(None, None)


def test_every_parameter_name_of_the_model_has_a_rule():
  from flax import nnx
  model = nnx.eval_shape(lambda: Transformer(config_lib.ModelConfig(), 64, rngs=nnx.Rngs(0)))
  names = {n for spec in jax.tree.leaves(nnx.get_partition_spec(nnx.state(model, nnx.Param)),
                                         is_leaf=lambda x: isinstance(x, tuple))
           for n in spec if n is not None}
  assert names and names <= set(sharding.LOGICAL_RULES)


def test_constrain_is_a_no_op_without_a_mesh_and_on_one_device():
  x = jnp.ones((4, 8, 16))
  f = lambda x: sharding.constrain(x * 2, ('batch', 'length', 'act_embed'))
  assert 'sharding_constraint' not in str(jax.make_jaxpr(f)(x))
  mesh = sharding.make_mesh(MeshConfig(1, 1, 1, 1), devices=jax.devices()[:1])
  with sharding.activation_mesh(mesh):
    assert 'sharding_constraint' not in str(jax.make_jaxpr(f)(x))


def test_rows_per_microbatch_must_split_over_the_data_parallel_devices():
  sharding.check_batch_divides(TrainConfig(batch_size=32, microbatches=4), abstract(fsdp=8))
  with pytest.raises(UserError, match='train.batch_size=32 in train.microbatches=8'):
    sharding.check_batch_divides(TrainConfig(batch_size=32, microbatches=8), abstract(fsdp=8))


def test_one_process_reads_every_row():
  mesh = sharding.make_mesh(MeshConfig(), devices=jax.devices()[:1])
  assert sharding.process_rows(mesh, 32) == (0, 1)


def test_validation_padding_rows_change_no_likelihood():
  # The eval pads its batches to a multiple of the data-parallel devices; the real rows must
  # keep their numbers: for the MDM, the same random draws (jax's random bits of a longer
  # array start with those of the shorter one). AR's likelihood draws nothing.
  from flax import nnx
  objective = 'mdm'
  cfg = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')],
                               ['model.d_model=32', 'model.n_layers=1', f'objective={objective}'])
  model = Transformer(cfg.model, 64, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batch = {'tokens': rng.integers(4, 64, (3, 16)).astype(np.int32),
           'segment_ids': np.ones((3, 16), np.int32),
           'positions': np.tile(np.arange(16, dtype=np.int32), (3, 1))}
  padded = pipeline.pad_rows(batch, 8)
  assert padded['tokens'].shape == (8, 16) and not padded['segment_ids'][3:].any()
  nll = nnx.jit(lambda m, b, key: objectives.get(objective).nll(m, b, key, cfg))  # eager: 30 s
  a, n_a = nll(model, batch, jax.random.key(3))
  b, n_b = nll(model, padded, jax.random.key(3))
  np.testing.assert_allclose(np.asarray(b[:3]), np.asarray(a), rtol=1e-6)
  assert np.asarray(b[3:]).sum() == 0 and np.asarray(n_b[3:]).sum() == 0


# ---------------------------------------------------------------------------------------
# Joining a multi-process job.

SLURM = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'node[001-002]', 'SLURM_NTASKS': '2',
         'SLURM_PROCID': '1', 'SLURM_LOCALID': '0'}


@pytest.fixture
def clean_env(monkeypatch):
  for key in [*SLURM, 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID']:
    monkeypatch.delenv(key, raising=False)
  monkeypatch.setattr(sharding, '_on_cloud_tpu_vm', lambda: False)
  return monkeypatch


def test_a_lone_process_stays_single(clean_env):
  assert sharding.distributed_mode(DistributedConfig()) == 'single'
  assert sharding.initialize_distributed(DistributedConfig()) == 'single'


def test_slurm_job_steps_with_several_tasks_are_detected(clean_env):
  for key, value in SLURM.items():
    clean_env.setenv(key, value)
  assert sharding.distributed_mode(DistributedConfig()) == 'slurm'
  clean_env.setenv('SLURM_NTASKS', '1')  # one task: nothing to join
  assert sharding.distributed_mode(DistributedConfig()) == 'single'


def test_tpu_vms_and_explicit_keys_are_detected(clean_env):
  explicit = DistributedConfig(coordinator='host:1234', num_processes=2, process_id=0)
  assert sharding.distributed_mode(explicit) == 'explicit'
  clean_env.setattr(sharding, '_on_cloud_tpu_vm', lambda: True)
  assert sharding.distributed_mode(DistributedConfig()) == 'tpu'
  assert sharding.distributed_mode(explicit) == 'explicit'  # keys win over detection


def test_jax_coordinator_variable_needs_its_companions(clean_env):
  clean_env.setenv('JAX_COORDINATOR_ADDRESS', 'host:1234')
  assert sharding.distributed_mode(DistributedConfig()) == 'env'
  with pytest.raises(UserError, match='JAX_NUM_PROCESSES and JAX_PROCESS_ID'):
    sharding.initialize_distributed(DistributedConfig())


@pytest.mark.parametrize('args', [['distributed.coordinator=h:1'],
                                  ['distributed.num_processes=2', 'distributed.process_id=0'],
                                  ['distributed.coordinator=h:1', 'distributed.num_processes=2',
                                   'distributed.process_id=2']])
def test_distributed_keys_go_together(args):
  with pytest.raises(ConfigError, match='distributed'):
    config_lib.load_config([], args)


def test_mesh_and_process_keys_may_change_when_a_run_resumes():
  a = config_lib.load_config([], [])
  b = config_lib.load_config([], ['mesh.fsdp=2', 'mesh.data=-1', 'distributed.coordinator=h:1',
                                  'distributed.num_processes=2', 'distributed.process_id=1'])
  assert config_lib.diff_keys(a, b) == []
  c = config_lib.load_config([], ['train.microbatches=2'])  # changes the MDM's draws
  assert config_lib.diff_keys(a, c) == ['train.microbatches']
