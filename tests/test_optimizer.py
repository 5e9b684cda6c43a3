"""Learning-rate schedules, weight-decay mask and evaluation points of the trainer."""

import jax.numpy as jnp
import numpy as np
import pytest

from dlmjax import config as config_lib
from dlmjax import train


def cfg_with(*overrides):
  return config_lib.load_config([], list(overrides))


def lrs(cfg, n):
  schedule = train.lr_schedule(cfg, n)
  return np.array([float(schedule(s)) for s in range(n + 1)])


def test_cosine_warms_up_to_the_peak_then_decays_to_min_ratio():
  x = lrs(cfg_with('optimizer.lr=1.0', 'optimizer.warmup_steps=10', 'optimizer.min_lr_ratio=0.1'), 100)
  assert x[0] == 0.0 and x[10] == pytest.approx(1.0)
  assert np.all(np.diff(x[:11]) > 0) and np.all(np.diff(x[10:]) <= 1e-9)
  assert x[100] == pytest.approx(0.1)


def test_wsd_holds_the_peak_then_decays_over_the_last_fraction():
  x = lrs(cfg_with('optimizer.lr=1.0', 'optimizer.schedule=wsd', 'optimizer.warmup_steps=10',
                   'optimizer.decay_frac=0.2', 'optimizer.min_lr_ratio=0.0'), 100)
  assert x[10] == pytest.approx(1.0) and x[80] == pytest.approx(1.0)
  assert x[90] == pytest.approx(0.5) and x[100] == pytest.approx(0.0)


def test_constant_schedule_after_warmup():
  x = lrs(cfg_with('optimizer.lr=0.5', 'optimizer.schedule=constant', 'optimizer.warmup_steps=4'), 20)
  assert x[2] == pytest.approx(0.25) and np.allclose(x[4:], 0.5)


def test_weight_decay_skips_vectors():
  cfg = cfg_with('optimizer.lr=1.0', 'optimizer.weight_decay=0.5', 'optimizer.grad_clip=0',
                 'optimizer.warmup_steps=1', 'optimizer.schedule=constant')
  tx, _ = train.make_optimizer(cfg, 10)
  params = {'w': jnp.ones((2, 2)), 'scale': jnp.ones((2,))}
  zero = {'w': jnp.zeros((2, 2)), 'scale': jnp.zeros((2,))}
  state = tx.init(params)
  _, state = tx.update(zero, state, params)  # step 0 of warmup: lr 0
  updates, _ = tx.update(zero, state, params)  # zero gradients: only weight decay moves
  assert np.allclose(updates['w'], -0.5) and np.allclose(updates['scale'], 0.0)


@pytest.mark.parametrize('n, k', [(100, 24), (10, 24), (977, 20)])
def test_eval_points_spread_over_the_run_and_include_the_last_step(n, k):
  points = sorted(train.eval_steps(cfg_with(f'eval.num_evals={k}'), n))
  assert points[-1] == n and points[0] >= 1
  assert len(points) == min(n, k)
  gaps = np.diff([0] + points)
  assert gaps.max() - gaps.min() <= 1


def test_eval_every_n_steps():
  assert train.eval_steps(cfg_with('eval.every=30'), 100) == {30, 60, 90, 100}
