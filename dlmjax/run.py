"""`dlmjax.load_run(run_dir) -> Run`: a trained run, ready to score and inspect (notebooks).

    run = dlmjax.load_run('runs/tiny-mdm-u200000-e20-s0')
    ids = [run.tokenizer.bos_id] + run.tokenizer.encode('def f(x):\\n    return x\\n')
    run.nll(np.array([ids]), num_samples=64, seed=0)   # summed nats; an ELBO bound for a DLM
    run.logits(np.array([ids]))                         # [1, L, V]; bidirectional for a DLM

Rows are single sequences; `PAD_ID` tokens are padding. As in training, the first token of a
row is context and is not scored, so prepend `bos_id` to score a whole text.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlmjax import config as config_lib
from dlmjax import export, objectives, sharding
from dlmjax.checkpoint import Checkpointer
from dlmjax.config import Config, MeshConfig
from dlmjax.data.tokenizer import PAD_ID, Tokenizer, load_tokenizer
from dlmjax.errors import UserError
from dlmjax.eval.likelihood import merge_params
from dlmjax.rundir import RunDir, read_jsonl


def rows_to_batch(tokens_BxL: np.ndarray) -> dict[str, jax.Array]:
  """One segment per row; PAD_ID tokens become padding (segment 0)."""
  tokens_BxL = np.asarray(tokens_BxL, np.int32)
  if tokens_BxL.ndim != 2:
    raise UserError(f'tokens must be a [B, L] array, got shape {tokens_BxL.shape}')
  segment_ids_BxL = (tokens_BxL != PAD_ID).astype(np.int32)
  positions_BxL = np.broadcast_to(np.arange(tokens_BxL.shape[1], dtype=np.int32), tokens_BxL.shape)
  return {'tokens': jnp.asarray(tokens_BxL), 'segment_ids': jnp.asarray(segment_ids_BxL),
          'positions': jnp.asarray(positions_BxL)}


class Run:
  """A run directory opened for inference at its latest (or a given) checkpoint."""

  def __init__(self, run_dir: str | pathlib.Path, step: int | None = None):
    from dlmjax.train import abstract_params  # the parameters' layout lives there

    self.dir = RunDir(run_dir)
    if not self.dir.config.is_file():
      raise UserError(f'{self.dir.path} is not a run directory (no config.yaml)')
    self.config: Config = config_lib.read_config_file(self.dir.config)
    self.tokenizer: Tokenizer = load_tokenizer(self.dir.tokenizer)
    self.objective = objectives.get(self.config.objective)
    # Inference on one device, whatever mesh the run was trained on (orbax reshards).
    mesh = sharding.make_mesh(MeshConfig(1, 1, 1, 1), devices=jax.devices()[:1])
    if export.is_export(self.dir.path) and not self.dir.checkpoints.is_dir():
      # A Hugging Face export (`python -m dlmjax.export`): the same parameters, bit for bit.
      self.step = json.loads((self.dir.path / 'export.json').read_text())['step']
      if step is not None and step != self.step:
        raise UserError(f'{self.dir.path} is an export of step {self.step}; it holds no '
                        f'step {step}')
      graphdef, abstract_state, abstract = abstract_params(self.config, mesh)
      loaded = export.load_params(self.dir.path, self.config)
      if jax.tree.structure(loaded) != jax.tree.structure(abstract):
        raise UserError(f'{self.dir.path / export.WEIGHTS} does not hold the parameters its '
                        f'config.yaml describes')
      self.params = jax.tree.map(lambda x, a: jax.device_put(x.astype(a.dtype), a.sharding),
                                 loaded, abstract)
    else:
      ckpt = Checkpointer(self.dir.checkpoints, read_only=True)
      self.step = step if step is not None else ckpt.latest_step()
      if self.step is None:
        raise UserError(f'{self.dir.path} has no checkpoint yet')
      # The parameters alone: no optimizer is built and its state is not read.
      graphdef, abstract_state, abstract = abstract_params(self.config, mesh)
      self.params = ckpt.restore_params(self.step, abstract)
      ckpt.close()
    self._graphdef = graphdef
    self._abstract = abstract_state

  @property
  def causal(self) -> bool:
    return self.objective.causal

  def model(self) -> nnx.Module:
    """The NNX module with this checkpoint's parameters."""
    return self.model_fn(self.params)

  def model_fn(self, params: dict) -> nnx.Module:
    """The NNX module with `params` (a pure dict shaped like `.params`), in or out of jit."""
    return merge_params(self._graphdef, self._abstract, params)

  @functools.cached_property
  def _logits_fn(self):
    @jax.jit
    def fn(params, batch):
      model = merge_params(self._graphdef, self._abstract, params)
      return model(batch['tokens'], batch['segment_ids'], batch['positions'], causal=self.causal)
    return fn

  @functools.cached_property
  def _nll_fn(self):
    @jax.jit
    def fn(params, batch, rng):
      model = merge_params(self._graphdef, self._abstract, params)
      return self.objective.nll(model, batch, rng, self.config)
    return fn

  def logits(self, tokens_BxL: np.ndarray) -> np.ndarray:
    """float32 [B, L, V]: causal for AR, bidirectional for a DLM; mask ids allowed."""
    return np.asarray(self._logits_fn(self.params, rows_to_batch(tokens_BxL)), np.float32)

  def nll(self, tokens_BxL: np.ndarray, num_samples: int | None = None, seed: int = 0) -> np.ndarray:
    """float64 [B] summed nats per row: exact for AR, the K-sample Monte Carlo ELBO for a DLM."""
    batch = rows_to_batch(tokens_BxL)
    k = 1 if self.causal else (num_samples or self.config.eval.mdm_samples)
    total = np.zeros(batch['tokens'].shape[0], np.float64)
    for i in range(k):
      nll_B, _ = self._nll_fn(self.params, batch, jax.random.fold_in(jax.random.key(seed), i))
      total += np.asarray(nll_B, np.float64)
    return total / k

  def result(self) -> dict | None:
    return self.dir.read_result()

  def metrics(self) -> list[dict]:
    return read_jsonl(self.dir.metrics)

  def evals(self) -> list[dict]:
    return read_jsonl(self.dir.evals)

  def __repr__(self) -> str:
    return f'Run({str(self.dir.path)!r}, objective={self.config.objective!r}, step={self.step})'


def load_run(run_dir: str | pathlib.Path, step: int | None = None) -> Run:
  return Run(run_dir, step)
