"""Validation likelihood: exact NLL for AR, the Monte Carlo ELBO bound for a diffusion model.

Both score the same target tokens (docs/architecture.md, "What is predicted"). The AR
number is exact. The MDM number averages K independent samples of (t, mask) per row: each
sample is an unbiased estimate of the ELBO (an upper bound on the NLL), and the standard
error reported is that of the K-sample mean of the whole validation total, so it shrinks as
1/sqrt(K). The samples use a fixed seed, so one checkpoint always gives one number.

Legend: B batch rows, L sequence length.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlmjax import objectives
from dlmjax.config import Config
from dlmjax.objectives.targets import prediction_mask

NllFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, jax.Array]]


def make_nll_fn(graphdef: nnx.GraphDef, abstract_state: nnx.State, cfg: Config) -> NllFn:
  """Jitted `(params, batch, rng) -> (nll_B, n_targets_B)` for the run's objective."""
  objective = objectives.get(cfg.objective)

  @jax.jit
  def nll_fn(params, batch, rng):
    model = merge_params(graphdef, abstract_state, params)
    return objective.nll(model, batch, rng, cfg)

  return nll_fn


def merge_params(graphdef: nnx.GraphDef, abstract_state: nnx.State, params: dict) -> nnx.Module:
  """Rebuilds the NNX module from a pure dict of parameter arrays (inside or outside jit)."""
  state = jax.tree.map(lambda x: x, abstract_state)  # a fresh copy to fill in
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def target_bytes(batches: list[dict[str, np.ndarray]], token_bytes: np.ndarray) -> int:
  """UTF-8 bytes of all target tokens in `batches` (special tokens count 0)."""
  total = 0
  for b in batches:
    mask_BxL = np.asarray(prediction_mask(jnp.asarray(b['segment_ids'])))
    total += int(token_bytes[np.asarray(b['tokens'])][mask_BxL].sum())
  return total


def evaluate(nll_fn: NllFn, params: Any, batches: list[dict], *, causal: bool,
             num_samples: int, seed: int, num_bytes: int) -> dict[str, float]:
  """Validation loss (nats/token), its standard error and bits per byte."""
  samples = 1 if causal else num_samples  # the AR likelihood is exact: one pass
  totals = np.zeros(samples, np.float64)
  n_targets = 0
  base = jax.random.key(seed)
  for k in range(samples):
    for i, batch in enumerate(batches):
      rng = jax.random.fold_in(jax.random.fold_in(base, k), i)
      nll_B, n_B = nll_fn(params, batch, rng)
      totals[k] += float(jnp.sum(nll_B, dtype=jnp.float32))
      if k == 0:
        n_targets += int(jnp.sum(n_B))
  mean_total = float(totals.mean())
  stderr = float(totals.std(ddof=1) / math.sqrt(samples)) if samples > 1 else 0.0
  return {
      'val_loss': mean_total / max(n_targets, 1),
      'val_loss_stderr': stderr / max(n_targets, 1),
      'val_bits_per_byte': mean_total / (math.log(2) * max(num_bytes, 1)),
      'val_tokens': n_targets,
      'val_samples': samples,
  }
