"""Expert parallelism changes where the experts run, not what is computed: a few training
steps on 8 forced host devices give one device's losses and parameters, for AR and MDM.

The runs happen in one subprocess per group (tests/mesh_parity.py), because the host device
count must be set before jax is imported. Tolerance: float32 sums in another order (the
sharded step adds per-device partial sums), rtol 1e-5 on the loss, atol 1e-5 on parameters
after 3 AdamW steps at lr 1e-2.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOE = ['model.num_experts=8', 'model.experts_per_token=2']


def run_cases(tmp_path, cases: list[dict]) -> dict:
  out = tmp_path / 'parity.npz'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, str(ROOT / 'tests/mesh_parity.py'), str(out),
                         *map(json.dumps, cases)], env=env, capture_output=True, text=True,
                        timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(out))


def assert_same_training(runs: dict, reference: str, other: str) -> None:
  np.testing.assert_allclose(runs[f'{other}/loss'], runs[f'{reference}/loss'], rtol=1e-5)
  np.testing.assert_allclose(runs[f'{other}/params'], runs[f'{reference}/params'], atol=1e-5)
  assert np.all(np.isfinite(runs[f'{other}/loss']))


def case(name, objective, mesh, *extra):
  return {'name': name, 'overrides': [*MOE, f'objective={objective}', *extra], 'mesh': mesh}


@pytest.fixture(scope='module')
def parity_runs(tmp_path_factory):
  return run_cases(tmp_path_factory.mktemp('parity'), [
      case('ar-1', 'ar', {}),
      case('ar-dp2-ep4', 'ar', {'data': 2, 'expert': 4}),
      case('mdm-1', 'mdm', {}),
      case('mdm-ep8', 'mdm', {'data': 1, 'expert': 8}),
  ])


# Slow (45 s of set-up): the dense mesh parity (test_multidevice.py) stays in make test.
@pytest.mark.slow
@pytest.mark.parametrize('objective, mesh', [('ar', 'dp2-ep4'), ('mdm', 'ep8')])
def test_expert_parallel_training_matches_one_device(parity_runs, objective, mesh):
  assert_same_training(parity_runs, f'{objective}-1', f'{objective}-{mesh}')


@pytest.mark.slow
def test_capacity_dispatch_fsdp_and_data_parallel_moe_match_one_device(tmp_path):
  capacity = 'model.moe_dispatch=capacity'
  runs = run_cases(tmp_path, [
      case('ar-cap-1', 'ar', {}, capacity),
      case('ar-cap-dp2-ep4', 'ar', {'data': 2, 'expert': 4}, capacity),
      case('mdm-1', 'mdm', {}),
      case('mdm-fsdp2-ep4', 'mdm', {'data': 1, 'fsdp': 2, 'expert': 4}),
      case('mdm-dp8', 'mdm', {'data': 8}),
  ])
  assert_same_training(runs, 'ar-cap-1', 'ar-cap-dp2-ep4')
  assert_same_training(runs, 'mdm-1', 'mdm-fsdp2-ep4')
  assert_same_training(runs, 'mdm-1', 'mdm-dp8')
