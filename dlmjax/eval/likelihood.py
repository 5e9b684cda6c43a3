"""Likelihoods: validation NLL / ELBO, and log p(continuation | context) for scoring tasks.

Validation (`evaluate`): both objectives score the same target tokens (docs/architecture.md,
"What is predicted"). The AR number is exact. The MDM number averages K independent samples
of (t, mask) per row (t stratified over the rows of each batch, `mdm.nll`): each sample is an
unbiased estimate of the ELBO (an upper bound on the NLL), and the standard error reported is
that of the K-sample mean of the whole validation total, so it shrinks as 1/sqrt(K). The samples use a fixed seed, so one checkpoint always
gives one number.

Scoring (`ContinuationScorer`): log p(continuation | context) for many (context ids,
continuation ids) pairs, the quantity multiple-choice tasks compare. Each pair is one row
`context + continuation`; the context is always visible and only continuation tokens are
scored (and, for a diffusion model, masked). AR is exact. A diffusion model has four
estimators, all unbiased for their target with exact conditionals:
  llada        mask count l ~ U{1..n}, exactly l of the n continuation tokens masked,
               weight n / l (LLaDA, arXiv 2502.09992, eq. 6): unbiased for the any-order
               NLL, no time cut-off
  llada_ld     as llada, with the K counts of a pair stratified, l_k from (u + k) / K for one
               uniform u (as LLaDA's reference code draws them): lower variance
  mc_elbo      t ~ U(eps, 1), each continuation token masked with probability 1 - alpha_t,
               weight -alpha'_t / (1 - alpha_t) (1 / t for the linear schedule; SMDM): the
               ELBO the model was trained on (cfg.mdm.schedule), with t from
               U(mdm.EVAL_EPS, 1) whatever the training eps
  mc_elbo_ld   as mc_elbo, with the K times of a pair stratified, t_k = eps + (1 - eps)(u + k)
               / K (low-discrepancy t, MDLM's sampler)
  chain_rule   left to right, one token at a time: token j scored with tokens < j visible
               and tokens >= j masked; deterministic, n passes per pair
K samples are averaged per pair. A pair's samples are keyed by the seed and a hash of its
continuation's ids, and its masks are drawn relative to where the continuation starts, so a
pair gets the same estimate in any batch, order or run (the lm-eval adapter and the native
harness agree exactly), and choices that share a continuation under different contexts
(WinoGrande, the code cloze) are scored on the same masks: common random numbers, so
their difference is estimated with far less noise than either term.

One-token continuations are scored exactly in one pass, whatever K: AR reads the next-token
distribution after the context, a diffusion model the distribution at the one masked
position, which is what llada, llada_ld and chain_rule estimate for n = 1 with no variance
(mc_elbo's 1/t weight is not exact there, so it keeps its samples). Choices that share a
context then share that one row: a next-character task costs one row per item, not one per
choice and sample.

Rows are padded to a few length buckets (powers of two up to `max_len`), and each bucket's
batches hold the same number of tokens, so a handful of shapes compile whatever the task.

Legend: B batch rows, L sequence length, V vocabulary.
"""

from __future__ import annotations

import hashlib
import math
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlmjax import objectives
from dlmjax.config import Config
from dlmjax.objectives import mdm
from dlmjax.objectives.targets import MASK_ID, PAD_ID, prediction_mask, token_ce
from dlmjax.progress import StepProgress

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


# ---------------------------------------------------------------------------------------
# Scoring continuations: log p(continuation | context).

ESTIMATORS = ('llada', 'llada_ld', 'mc_elbo', 'mc_elbo_ld', 'chain_rule')
ONE_TOKEN_EXACT = ('llada', 'llada_ld', 'chain_rule')  # exact, with no variance, for n = 1
Pair = tuple[Sequence[int], Sequence[int]]  # (context ids, continuation ids)


def ar_continuation_logp(model, batch: dict) -> tuple[jax.Array, jax.Array]:
  """Exact log p(continuation | context) per row, and whether greedy decoding yields it.

  batch: `tokens`, `segment_ids`, `positions` and `is_cont` (bool BxL, the continuation).
  Returns (float32 B log-likelihood, bool B greedy).
  """
  logits_BxLxV = model(batch['tokens'], batch['segment_ids'], batch['positions'], causal=True)
  # Position i predicts token i + 1: shift the targets, not the BxLxV logits.
  next_BxL = jnp.roll(batch['tokens'], -1, axis=1)
  scored_BxL = jnp.roll(batch['is_cont'], -1, axis=1).at[:, -1].set(False)
  ce_BxL = jnp.where(scored_BxL, token_ce(logits_BxLxV, next_BxL), 0.0)
  hit_BxL = jnp.argmax(logits_BxLxV, axis=-1) == next_BxL
  return -ce_BxL.sum(axis=1), jnp.all(hit_BxL | ~scored_BxL, axis=1)


def _uniform_B(keys_B: jax.Array, tag: int) -> jax.Array:
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, tag)))(keys_B)


def _uniform_BxL(keys_B: jax.Array, tag: int, start_B: jax.Array, length: int) -> jax.Array:
  """Row b's draw for position i is its (i - start_b)-th uniform: aligned on the continuation."""
  u_BxL = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, tag), (length,)))(keys_B)
  rel_BxL = (jnp.arange(length)[None, :] - start_B[:, None]) % length
  return jnp.take_along_axis(u_BxL, rel_BxL, axis=1)


def dlm_masks(batch: dict, base_key: jax.Array, cfg: Config, *, estimator: str,
              num_samples: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The masks of one sample per row: (masked_BxL, scored_BxL, weight_B).

  Row b is sample `batch['sample'][b]` (0..K-1) of a pair whose continuation hashes to
  `batch['cont_hash'][b]`; its randomness depends on nothing else, and per-token draws are
  indexed from the continuation's first position.
  """
  is_cont_BxL = batch['is_cont']
  length = is_cont_BxL.shape[1]
  pair_keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(base_key, batch['cont_hash'])
  # Sample k draws from fold_in(pair key, k + 1); the pair's shared uniform from tag 0.
  sample_keys_B = jax.vmap(jax.random.fold_in)(pair_keys_B, batch['sample'] + 1)
  n_B = is_cont_BxL.sum(axis=1)
  start_B = jnp.argmax(is_cont_BxL, axis=1)
  if estimator == 'chain_rule':
    # The host laid out one row per continuation token j, with tokens >= j marked: mask
    # them all and score the first.
    first_BxL = is_cont_BxL & (jnp.cumsum(is_cont_BxL, axis=1) == 1)
    return is_cont_BxL, first_BxL, jnp.ones(n_B.shape, jnp.float32)
  if estimator.endswith('_ld'):
    # One uniform per pair, shifted by k / K for its k-th sample: one draw per stratum.
    u_B = (_uniform_B(pair_keys_B, 0) + batch['sample'] / num_samples) % 1.0
  else:
    u_B = _uniform_B(sample_keys_B, 0)
  if estimator in ('llada', 'llada_ld'):
    l_B = jnp.clip(1 + jnp.floor(u_B * n_B).astype(jnp.int32), 1, None)
    # Exactly l of the n continuation tokens: the l smallest of n uniform draws (the other
    # positions draw 2, above every continuation draw).
    draws_BxL = jnp.where(is_cont_BxL, _uniform_BxL(sample_keys_B, 1, start_B, length), 2.0)
    rank_BxL = jnp.argsort(jnp.argsort(draws_BxL, axis=1), axis=1)
    masked_BxL = is_cont_BxL & (rank_BxL < l_B[:, None])
    return masked_BxL, masked_BxL, n_B / l_B
  if estimator not in ('mc_elbo', 'mc_elbo_ld'):
    raise ValueError(f'unknown estimator {estimator!r}; known: {", ".join(ESTIMATORS)}')
  t_B = mdm.EVAL_EPS + (1.0 - mdm.EVAL_EPS) * u_B
  mask_prob_B, weight_B = mdm.schedule(t_B, cfg.mdm.schedule)
  masked_BxL = is_cont_BxL & (_uniform_BxL(sample_keys_B, 1, start_B, length)
                              < mask_prob_B[:, None])
  return masked_BxL, masked_BxL, weight_B


def dlm_continuation_logp(model, batch: dict, base_key: jax.Array, cfg: Config, *,
                          estimator: str, num_samples: int) -> jax.Array:
  """One sample per row of the estimate of log p(continuation | context) (float32 B)."""
  masked_BxL, scored_BxL, weight_B = dlm_masks(batch, base_key, cfg, estimator=estimator,
                                               num_samples=num_samples)
  inputs_BxL = jnp.where(masked_BxL, MASK_ID, batch['tokens'])
  logits_BxLxV = model(inputs_BxL, batch['segment_ids'], batch['positions'], causal=False)
  ce_BxL = jnp.where(scored_BxL, token_ce(logits_BxLxV, batch['tokens']), 0.0)
  return -weight_B * ce_BxL.sum(axis=1)


def dlm_greedy(model, batch: dict) -> jax.Array:
  """bool B: with the whole continuation masked, is every token its position's argmax?"""
  is_cont_BxL = batch['is_cont']
  inputs_BxL = jnp.where(is_cont_BxL, MASK_ID, batch['tokens'])
  logits_BxLxV = model(inputs_BxL, batch['segment_ids'], batch['positions'], causal=False)
  hit_BxL = jnp.argmax(logits_BxLxV, axis=-1) == batch['tokens']
  return jnp.all(hit_BxL | ~is_cont_BxL, axis=1)


def length_buckets(max_len: int, smallest: int = 16) -> list[int]:
  """Row lengths that compile: powers of two from `smallest`, and `max_len` itself."""
  out, b = [], smallest
  while b < max_len:
    out.append(b)
    b *= 2
  return out + [max_len]


def fit_pair(context: Sequence[int], continuation: Sequence[int],
             max_len: int) -> tuple[list[int], list[int]]:
  """Cuts a pair to `max_len` tokens from the left, as lm-eval does; one context token stays.

  Raises ValueError for an empty context or continuation.
  """
  context, continuation = list(context), list(continuation)
  if not context or not continuation:
    raise ValueError('a scored pair needs a non-empty context (e.g. BOS) and continuation')
  continuation = continuation[-(max_len - 1):]
  return context[-(max_len - len(continuation)):], continuation


def continuation_hash(continuation: Sequence[int]) -> int:
  """A 31-bit hash of a continuation's ids that keys its Monte Carlo samples."""
  data = np.asarray(continuation, np.int64).tobytes()
  return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), 'little') >> 1


class ContinuationScorer:
  """log p(continuation | context) for a batch of pairs, jitted once per length bucket.

      scorer = ContinuationScorer(model_fn, cfg, causal=False, estimator='llada', num_samples=8)
      logp_N = scorer(params, [(context_ids, continuation_ids), ...])   # float64 [N]

  `model_fn(params)` returns the model (an NNX module or any callable with its signature).
  Pairs longer than `max_len` are cut from the left (`fit_pair`). `batch_tokens` bounds the
  tokens of one call (rows x bucket length).
  """

  def __init__(self, model_fn: Callable[[Any], Any], cfg: Config, *, causal: bool,
               estimator: str = 'llada', num_samples: int = 8, seed: int = 0,
               max_len: int = 0, batch_tokens: int = 0):
    if estimator not in ESTIMATORS:
      raise ValueError(f'unknown estimator {estimator!r}; known: {", ".join(ESTIMATORS)}')
    self.causal = causal
    self.estimator = estimator
    # AR is exact and chain_rule deterministic: one sample each.
    self.num_samples = 1 if causal or estimator == 'chain_rule' else int(num_samples)
    self.max_len = max_len or cfg.data.seq_len
    self.batch_tokens = batch_tokens or cfg.eval.batch_size * cfg.data.seq_len
    self.buckets = length_buckets(self.max_len)
    self.seed = seed  # keys every pair's samples with its content hash

    @jax.jit
    def score_fn(params, batch, base_key):
      model = model_fn(params)
      if causal:
        return ar_continuation_logp(model, batch)
      logp_B = dlm_continuation_logp(model, batch, base_key, cfg, estimator=estimator,
                                     num_samples=self.num_samples)
      return logp_B, jnp.zeros(logp_B.shape, bool)

    @jax.jit
    def next_logp_fn(params, batch):
      # log p(token | context) for every token at each row's one continuation position.
      model = model_fn(params)
      start_B = jnp.argmax(batch['is_cont'], axis=1)
      if causal:
        logits_BxLxV = model(batch['tokens'], batch['segment_ids'], batch['positions'],
                             causal=True)
        at_B = start_B - 1
      else:
        inputs_BxL = jnp.where(batch['is_cont'], MASK_ID, batch['tokens'])
        logits_BxLxV = model(inputs_BxL, batch['segment_ids'], batch['positions'], causal=False)
        at_B = start_B
      logits_BxV = jnp.take_along_axis(logits_BxLxV, at_B[:, None, None], axis=1)[:, 0]
      return jax.nn.log_softmax(logits_BxV.astype(jnp.float32), axis=-1)

    @jax.jit
    def greedy_fn(params, batch):
      model = model_fn(params)
      return ar_continuation_logp(model, batch)[1] if causal else dlm_greedy(model, batch)

    self._score_fn, self._greedy_fn, self._next_logp_fn = score_fn, greedy_fn, next_logp_fn
    self.one_token_exact = causal or estimator in ONE_TOKEN_EXACT

  def rows(self, pairs: Sequence[Pair]) -> list[tuple[int, list[int], int, int, int]]:
    """(pair index, ids, first scored position, sample, continuation hash) per row needed."""
    out = []
    for i, (context, continuation) in enumerate(pairs):
      ctx, cont = fit_pair(context, continuation, self.max_len)
      ids, h = ctx + cont, continuation_hash(cont)
      if self.estimator == 'chain_rule' and not self.causal:
        out += [(i, ids, len(ctx) + j, 0, h) for j in range(len(cont))]
      else:
        out += [(i, ids, len(ctx), k, h) for k in range(self.num_samples)]
    return out

  def _batches(self, rows):
    """Yields (row indices, numpy batch) grouped by length bucket, longest first."""
    by_bucket: dict[int, list[int]] = {}
    for r, (_, ids, *_) in enumerate(rows):
      bucket = next(b for b in self.buckets if b >= len(ids))
      by_bucket.setdefault(bucket, []).append(r)
    for bucket in sorted(by_bucket, reverse=True):
      per_call = max(1, self.batch_tokens // bucket)
      members = by_bucket[bucket]
      for lo in range(0, len(members), per_call):
        chunk = members[lo:lo + per_call]
        yield chunk, self._pack([rows[r] for r in chunk], per_call, bucket)

  def _pack(self, rows, num_rows: int, length: int) -> dict[str, np.ndarray]:
    tokens = np.full((num_rows, length), PAD_ID, np.int32)
    segment_ids = np.zeros((num_rows, length), np.int32)
    is_cont = np.zeros((num_rows, length), bool)
    cont_hashes = np.zeros(num_rows, np.uint32)
    samples = np.zeros(num_rows, np.int32)
    for b, (_, ids, first, sample, h) in enumerate(rows):
      tokens[b, :len(ids)] = ids
      segment_ids[b, :len(ids)] = 1
      is_cont[b, first:len(ids)] = True
      cont_hashes[b], samples[b] = h, sample
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy()
    return {'tokens': tokens, 'segment_ids': segment_ids, 'positions': positions,
            'is_cont': is_cont, 'cont_hash': cont_hashes, 'sample': samples}

  def __call__(self, params: Any, pairs: Sequence[Pair], *, progress: bool = False) -> np.ndarray:
    """float64 [N]: the estimate of log p(continuation | context) of each pair."""
    fitted = [fit_pair(c, x, self.max_len) for c, x in pairs]
    one = [i for i, (_, x) in enumerate(fitted) if len(x) == 1 and self.one_token_exact]
    rest = sorted(set(range(len(pairs))) - set(one))
    by_context: dict[tuple, list[int]] = {}  # one row per distinct context of one-token pairs
    for i in one:
      by_context.setdefault(tuple(fitted[i][0]), []).append(i)
    groups = list(by_context.values())
    next_rows = [(g, fitted[m[0]][0] + fitted[m[0]][1], len(fitted[m[0]][0]), 0, 0)
                 for g, m in enumerate(groups)]
    rows = self.rows([pairs[i] for i in rest])  # rows() fits them
    total = np.zeros(len(rest), np.float64)
    out = np.zeros(len(pairs), np.float64)
    done = 0
    with StepProgress(len(rows) + len(next_rows), enabled=progress and sys.stderr.isatty(),
                      label='scoring') as bar:
      for chunk, batch in self._batches(rows):
        logp_B, _ = self._score_fn(params, batch, jax.random.key(self.seed))
        logp_B = np.asarray(logp_B, np.float64)
        for b, r in enumerate(chunk):
          total[rows[r][0]] += logp_B[b]
        done += len(chunk)
        bar.set(done)
      for chunk, batch in self._batches(next_rows):
        logp_BxV = np.asarray(self._next_logp_fn(params, batch), np.float64)
        for b, r in enumerate(chunk):
          for i in groups[next_rows[r][0]]:
            out[i] = logp_BxV[b, fitted[i][1][0]]
        done += len(chunk)
        bar.set(done)
    out[rest] = total / self.num_samples
    return out

  def greedy(self, params: Any, pairs: Sequence[Pair]) -> np.ndarray:
    """bool [N]: AR, greedy decoding yields the continuation; DLM, with the continuation all
    masked, each of its tokens is the argmax at its position (one pass)."""
    rows = [(i, *fit_pair(c, x, self.max_len)) for i, (c, x) in enumerate(pairs)]
    rows = [(i, ctx + cont, len(ctx), 0, 0) for i, ctx, cont in rows]
    out = np.zeros(len(pairs), bool)
    for chunk, batch in self._batches(rows):
      hit_B = np.asarray(self._greedy_fn(params, batch))
      for b, r in enumerate(chunk):
        out[rows[r][0]] = hit_B[b]
    return out
