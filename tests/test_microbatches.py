"""Gradient accumulation: a step in M microbatches is the step on the whole batch.

Both objectives normalise by a count that depends on the batch (target tokens; for the MDM's
`loss_norm=sequence`, rows with targets), and the rows here are padded unevenly, so a plain
mean of microbatch losses is off by more than 10 times the tolerance (asserted below). The MDM is made deterministic
by t -> 1 (`mdm.eps` = 1 - 1e-7: every target masked, weight 1/t = 1 to 1e-7), so the
microbatched step and the full batch see the same masks.
"""

import functools
import pathlib

import jax
import numpy as np
import pytest

from dlmjax import config as config_lib
from dlmjax import objectives, sharding
from dlmjax.train import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A large init scale makes per-token losses differ a lot from row to row.
MICRO = ['model.d_model=32', 'model.n_layers=1', 'model.n_heads=2', 'model.d_ff=64',
         'model.vocab_size=64', 'model.init_std=0.5', 'data.seq_len=32', 'train.batch_size=8']
# No random-length rows either: their draws differ between a microbatch and the whole batch.
DETERMINISTIC_MDM = ['objective=mdm', 'mdm.eps=0.9999999', 'mdm.random_length_frac=0']
RTOL = 1e-5  # float32 sums in another order


def uneven_batch() -> dict[str, np.ndarray]:
  """8 rows of 32: even rows are mostly padding, odd rows full, so microbatches (rows m,
  m + M, ...) hold very different numbers of targets."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 64, (8, 32)).astype(np.int32)
  seg = np.ones((8, 32), np.int32)
  seg[:, 20:] = 2
  seg[0::2, 6:] = 0
  seg[6, :] = 0  # a row of pure padding: no targets at all
  pos = np.where(seg == 2, np.arange(32) - 20, np.arange(32)).astype(np.int32)
  tokens[seg == 0], pos[seg == 0] = 0, 0
  return {'tokens': tokens, 'segment_ids': seg, 'positions': pos}


@functools.lru_cache(maxsize=None)
def loss_and_grads(*overrides):
  """The train step's (loss, metrics, gradient) at the initial parameters, on one device."""
  cfg = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')], [*MICRO, *overrides])
  trainer = Trainer(cfg, sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1]), num_steps=10)
  params = trainer.init()['params']
  loss, metrics, grads = jax.jit(trainer._loss_and_grads)(params, uneven_batch(),
                                                          jax.random.key(0))
  return trainer, params, jax.device_get((loss, metrics, grads))


def assert_same(whole, micro, rtol):
  (loss1, m1, g1), (loss2, m2, g2) = whole[2], micro[2]
  np.testing.assert_allclose(loss2, loss1, rtol=rtol)
  assert m2['n_targets'] == m1['n_targets']
  assert set(m2) == set(m1)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * np.abs(a).max())


def naive_mean_of_microbatch_losses(trainer, params, num_micro) -> float:
  """What a step that averaged microbatch losses would report: the wrong normalisation.

  From one evaluation of the per-row summed losses (`nll`; for the MDM at t -> 1 the same
  numbers as its training loss): each microbatch normalised alone, then averaged.
  """
  nll = jax.jit(lambda p, batch, key: trainer.objective.nll(trainer.model(p), batch, key,
                                                             trainer.cfg))
  nats_B, n_B = (np.asarray(x, np.float64) for x in nll(params, uneven_batch(),
                                                         jax.random.key(0)))
  per_micro = []
  for m in range(num_micro):
    nats, n = nats_B[m::num_micro], n_B[m::num_micro]
    if trainer.cfg.objective == 'mdm' and trainer.cfg.mdm.loss_norm == 'sequence':
      per_micro.append(np.mean(nats[n > 0] / n[n > 0]))
    else:
      per_micro.append(nats.sum() / n.sum())
  return float(np.mean(per_micro))


def test_ar_in_microbatches_equals_the_whole_batch():
  num_micro = 4
  whole = loss_and_grads('objective=ar')
  micro = loss_and_grads('objective=ar', f'train.microbatches={num_micro}')
  assert_same(whole, micro, rtol=RTOL)
  trainer, params, (loss, _, _) = micro
  # A plain mean of microbatch losses misses by more than 10x the tolerance: the test can tell.
  assert abs(naive_mean_of_microbatch_losses(trainer, params, num_micro) - loss) > 10 * RTOL * loss


@pytest.mark.parametrize('loss_norm', ['token', pytest.param('sequence', marks=pytest.mark.slow)])
def test_mdm_in_microbatches_equals_the_whole_batch(loss_norm):
  whole = loss_and_grads(*DETERMINISTIC_MDM, f'mdm.loss_norm={loss_norm}')
  micro = loss_and_grads(*DETERMINISTIC_MDM, f'mdm.loss_norm={loss_norm}',
                         'train.microbatches=2')
  assert_same(whole, micro, rtol=RTOL)
  assert micro[2][1]['mask_rate'] == pytest.approx(1.0)
  trainer, params, (loss, _, _) = micro
  assert abs(naive_mean_of_microbatch_losses(trainer, params, 2) - loss) > 10 * RTOL * loss


def test_every_objective_reports_its_loss_weight():
  # The train step needs it to combine microbatches; without it they would weigh the same.
  trainer, params, _ = loss_and_grads('objective=ar')
  for name in objectives.names():
    cfg = config_lib.load_config([str(ROOT / 'configs/tiny.yaml')], [*MICRO, f'objective={name}'])
    _, metrics = objectives.get(name).loss(trainer.model(params), uneven_batch(),
                                           jax.random.key(1), cfg)
    assert objectives.LOSS_WEIGHT in metrics, name
