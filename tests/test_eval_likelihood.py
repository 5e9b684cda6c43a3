"""Continuation scoring (dlmjax/eval/likelihood.py) against an exact oracle.

The oracle is a two-component mixture: a latent z picks one of two symbol distributions and
the symbols after BOS are i.i.d. given z. Its exact conditionals (of the next symbol given a
prefix, for AR, and of a masked symbol given the visible ones, for a diffusion model) and the
exact log p(continuation | context) are closed forms, so every estimator is checked against
the truth, not against itself.

Legend: B batch, L length, V vocabulary, Z mixture components.
"""

import functools
import math

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from dlmjax.config import Config
from dlmjax.data.tokenizer import BOS_ID
from dlmjax.eval import likelihood
from dlmjax.eval.likelihood import ContinuationScorer
from dlmjax.objectives import mdm
from dlmjax.objectives.targets import MASK_ID

V = 8
SYMBOLS = np.arange(4, 8)
LOG_P_ZxS = np.log(np.array([[0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.2, 0.6]]))
LOG_PRIOR_Z = np.log(np.array([0.3, 0.7]))
NEG = -1e9


def _log_p_ZxV():
  out = np.full((2, V), NEG)
  out[:, SYMBOLS] = LOG_P_ZxS
  return jnp.asarray(out, jnp.float32)


def mixture_oracle(tokens_BxL, segment_ids_BxL, positions_BxL, *, causal, dropout_rng=None):
  """Exact conditionals of the mixture: causal, p(x_{i+1} | x_<=i); else p(x_i | others)."""
  log_p_ZxV = _log_p_ZxV()
  is_sym_BxL = (tokens_BxL >= SYMBOLS[0]) & (segment_ids_BxL > 0)
  ll_BxLxZ = jnp.where(is_sym_BxL[..., None], log_p_ZxV.T[tokens_BxL], 0.0)
  if causal:
    seen_BxLxZ = jnp.cumsum(ll_BxLxZ, axis=1)  # symbols at positions <= i
  else:
    seen_BxLxZ = ll_BxLxZ.sum(axis=1, keepdims=True) - ll_BxLxZ  # every symbol but i
  log_post_BxLxZ = jax.nn.log_softmax(seen_BxLxZ + LOG_PRIOR_Z, axis=-1)
  return jax.nn.logsumexp(log_post_BxLxZ[..., None] + log_p_ZxV, axis=-2)


def true_logp(context, continuation):
  """Exact log p(continuation | context) of the mixture, in float64."""
  ll = lambda ids: np.array([sum(LOG_P_ZxS[z, i - 4] for i in ids if i >= 4) for z in (0, 1)])
  log_post = LOG_PRIOR_Z + ll(context)
  log_post -= np.logaddexp.reduce(log_post)
  return float(np.logaddexp.reduce(log_post + ll(continuation)))


def sample_pairs(n, seed):
  rng = np.random.default_rng(seed)
  pairs = []
  for _ in range(n):
    z = rng.choice(2, p=np.exp(LOG_PRIOR_Z))
    ctx_len, cont_len = rng.integers(0, 6), rng.integers(1, 8)
    syms = SYMBOLS[rng.choice(4, size=ctx_len + cont_len, p=np.exp(LOG_P_ZxS[z]))]
    pairs.append(([BOS_ID, *syms[:ctx_len]], list(syms[ctx_len:])))
  return pairs


@functools.lru_cache(maxsize=None)  # one compilation per kind of scorer
def cached_scorer(estimator, causal, num_samples):
  return ContinuationScorer(lambda params: mixture_oracle, Config(), causal=causal,
                            estimator=estimator, num_samples=num_samples, max_len=16,
                            batch_tokens=16 * 512)


def scorer(estimator, *, causal=False, num_samples=8, seed=0):
  s = cached_scorer(estimator, causal, num_samples)
  s.seed = seed
  return s


PAIRS = sample_pairs(2000, seed=0)
TRUTH = np.array([true_logp(c, x) for c, x in PAIRS])


def test_ar_scoring_is_the_exact_conditional_log_likelihood():
  got = scorer('llada', causal=True)({}, PAIRS)
  np.testing.assert_allclose(got, TRUTH, rtol=1e-5, atol=1e-5)


def test_chain_rule_is_exact_for_exact_conditionals():
  got = scorer('chain_rule')({}, PAIRS)
  np.testing.assert_allclose(got, TRUTH, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('estimator', ['llada', 'llada_ld', 'mc_elbo', 'mc_elbo_ld'])
def test_sampled_estimator_matches_the_true_log_likelihood_in_expectation(estimator):
  got = scorer(estimator)({}, PAIRS)
  diff = got - TRUTH
  se = diff.std(ddof=1) / math.sqrt(len(diff))
  # mc_elbo and mc_elbo_ld integrate t over (eps, 1), eps = 1e-3: a bias of the order
  # of eps relative, far below the standard error here.
  assert abs(diff.mean()) < 4 * se, (diff.mean(), se)
  assert se < 0.02 * abs(TRUTH.mean()), (se, TRUTH.mean())
  assert not np.allclose(got, TRUTH, atol=1e-3)  # a real Monte Carlo estimate, not exact


def test_mc_elbo_ld_puts_one_time_in_each_of_the_k_strata_of_a_pair():
  rows, chunk, _, _, _, weight = packed(PAIRS[:40], 'mc_elbo_ld')
  eps = mdm.EVAL_EPS
  u = (1.0 / weight[:len(chunk)] - eps) / (1 - eps)  # linear schedule: weight = 1 / t
  strata = {}
  for b, r in enumerate(chunk):
    strata.setdefault(rows[r][0], []).append(int(u[b] * 8))
  assert len(strata) == 40
  for got in strata.values():
    assert sorted(got) == list(range(8)), got
  _, chunk, _, _, _, weight = packed(PAIRS[:40], 'mc_elbo')
  iid = (1.0 / weight[:len(chunk)] - eps) / (1 - eps)
  assert any(len(set((iid[i:i + 8] * 8).astype(int))) < 8 for i in range(0, len(iid), 8))


def test_a_pairs_estimate_does_not_depend_on_its_batch_or_order():
  s = scorer('llada', seed=5)
  pairs = PAIRS[:64]
  a = s({}, pairs)
  b = s({}, pairs[::-1] + sample_pairs(40, seed=9))[:64][::-1]
  np.testing.assert_array_equal(a, b)
  c = scorer('llada', seed=6)({}, pairs)
  assert not np.array_equal(a, c)


def packed(pairs, estimator):
  s = scorer(estimator)
  rows = s.rows(pairs)
  (chunk, batch), = list(s._batches(rows))  # up to 512 rows fit in one call
  masks = jax.jit(functools.partial(likelihood.dlm_masks, cfg=Config(), estimator=estimator,
                                    num_samples=s.num_samples))
  masked, scored, weight = masks(batch, jax.random.key(0))
  return rows, chunk, batch, np.asarray(masked), np.asarray(scored), np.asarray(weight)


@pytest.mark.parametrize('estimator', ['llada', 'llada_ld', 'mc_elbo', 'mc_elbo_ld', 'chain_rule'])
def test_only_continuation_tokens_are_ever_masked(estimator):
  _, chunk, batch, masked, scored, _ = packed(PAIRS[:40], estimator)
  assert not (masked & ~batch['is_cont']).any()
  assert not (scored & ~masked).any()
  assert masked[:len(chunk)].any()


def test_llada_ld_draws_one_mask_count_per_stratum_of_a_pair():
  rows, chunk, batch, masked, _, _ = packed(PAIRS[:40], 'llada_ld')
  counts = {}
  for b, r in enumerate(chunk):
    counts.setdefault(rows[r][0], []).append((int(masked[b].sum()), int(batch['is_cont'][b].sum())))
  for got in counts.values():
    n = got[0][1]
    # l_k = 1 + floor(n u_k), with u_k one per stratum [k / 8, (k + 1) / 8): sorted, the k-th
    # count lies in [1 + floor(n k / 8), 1 + floor(n (k + 1) / 8)].
    for k, l in enumerate(sorted(l for l, _ in got)):
      assert 1 + math.floor(n * k / 8) <= l <= 1 + math.floor(n * (k + 1) / 8), (got, k)


def test_llada_masks_exactly_l_of_n_tokens_with_weight_n_over_l():
  _, chunk, batch, masked, _, weight = packed(PAIRS[:60], "llada")
  n = batch['is_cont'].sum(1)[:len(chunk)]
  l = masked.sum(1)[:len(chunk)]
  assert ((l >= 1) & (l <= n)).all()
  np.testing.assert_allclose(weight[:len(chunk)], n / l, rtol=1e-6)
  assert len(set(l.tolist())) > 3


def test_chain_rule_scores_each_continuation_token_once_with_its_left_visible():
  pairs = [([BOS_ID, 4, 5], [6, 7, 4])]
  rows, _, batch, masked, scored, weight = packed(pairs, 'chain_rule')
  assert len(rows) == 3
  tokens = batch['tokens'][:3]
  for j in range(3):
    np.testing.assert_array_equal(np.flatnonzero(scored[j]), [3 + j])
    np.testing.assert_array_equal(np.flatnonzero(masked[j]), np.arange(3 + j, 6))
    np.testing.assert_array_equal(tokens[j, :6], [BOS_ID, 4, 5, 6, 7, 4])
  np.testing.assert_array_equal(weight[:3], 1.0)


def test_rows_are_cut_from_the_left_and_padded_to_a_few_buckets():
  s = scorer('llada', causal=True)
  ctx, cont = likelihood.fit_pair([BOS_ID] + [4] * 30, [5, 6, 7], 16)
  assert len(ctx) + len(cont) == 16 and cont == [5, 6, 7] and ctx == [4] * 13
  assert likelihood.fit_pair([BOS_ID], list(range(4, 24)), 16) == ([BOS_ID], list(range(9, 24)))
  with pytest.raises(ValueError):
    likelihood.fit_pair([], [4], 16)
  lengths = {batch['tokens'].shape[1] for _, batch in s._batches(s.rows(PAIRS))}
  assert lengths <= {16} and s.buckets == [16]
  assert likelihood.length_buckets(128) == [16, 32, 64, 128]
  assert likelihood.length_buckets(100) == [16, 32, 64, 100]


def test_greedy_flags_the_argmax_continuation():
  pairs = [([BOS_ID, 7, 7, 7], [7]), ([BOS_ID, 7, 7, 7], [4]), ([BOS_ID, 4, 4], [4, 4])]
  for causal in (True, False):
    np.testing.assert_array_equal(scorer('llada', causal=causal).greedy({}, pairs),
                                  [True, False, True])


@pytest.mark.parametrize('estimator', ['llada', 'mc_elbo'])
def test_choices_sharing_a_continuation_are_scored_on_the_same_masks(estimator):
  cont = [6, 7, 4, 5, 6]
  pairs = [([BOS_ID, 4, 5, 7], cont), ([BOS_ID], cont), ([BOS_ID, 5], [6, 7, 4, 5, 7])]
  rows, chunk, batch, masked, _, weight = packed(pairs, estimator)
  rel = {}
  for b, r in enumerate(chunk):
    pair, _, first, sample, _ = rows[r]
    rel[pair, sample] = (tuple(np.flatnonzero(masked[b]) - first), float(weight[b]))
  assert all(rel[0, k] == rel[1, k] for k in range(8))
  assert any(rel[0, k] != rel[2, k] for k in range(8))
