"""Generation: the AR sampler against recomputation without a cache, the DLM sampler's
schedule (one token per step, blocks left to right, confidence order), token filters against
their definitions, EOS handling, and the special ids that must never be generated.

Legend: B prompts, G generated length, N steps, V vocabulary.
"""

import dataclasses
import io

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from dlmjax import sample
from dlmjax.config import ModelConfig
from dlmjax.data.tokenizer import BOS_ID, EOS_ID, MASK_ID, PAD_ID
from dlmjax.errors import ConfigError
from dlmjax.model.transformer import Transformer

V = 40
SPECIAL = (PAD_ID, BOS_ID, MASK_ID)
MICRO = ModelConfig(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
PROMPTS = [[BOS_ID, 5, 6, 7], [BOS_ID] + list(range(8, 20)), [BOS_ID, 30]]


@pytest.fixture(scope='module')
def model():
  # Weights drawn with numpy into the abstract model: eager random init compiles op by op
  # (seconds); std 0.3 keeps the logits of different tokens well apart.
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(MICRO, V, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype), state)
  return nnx.merge(graphdef, state)


class ChainLM(nnx.Module):
  """Stand-in: after token t comes t + 1 (EOS after `eos_after`), whatever the context; PAD,
  BOS and MASK get far higher logits, so only a sampler that excludes them gets the chain."""

  def __init__(self, eos_after: int):
    self.eos_after = eos_after

  def init_cache(self, batch, length):
    return jnp.zeros((), jnp.int32)

  def __call__(self, tokens_BxL, segment_ids_BxL, positions_BxL, *, causal, dropout_rng=None,
               cache=None):
    next_BxL = jnp.where(tokens_BxL == self.eos_after, EOS_ID, 4 + (tokens_BxL - 3) % (V - 4))
    logits_BxLxV = 10.0 * jax.nn.one_hot(next_BxL, V)
    logits_BxLxV = logits_BxLxV.at[..., jnp.asarray(SPECIAL)].set(100.0)
    return logits_BxLxV if cache is None else (logits_BxLxV, cache)


class AnswerLogits(nnx.Module):
  """Stand-in for a DLM: fixed logits for the G answer columns, whatever the input."""

  def __init__(self, logits_GxV):
    self.logits = nnx.Param(jnp.asarray(logits_GxV, jnp.float32))

  def __call__(self, tokens_BxL, segment_ids_BxL, positions_BxL, *, causal, dropout_rng=None):
    b, length = tokens_BxL.shape
    g = self.logits.shape[0]
    answer_BxGxV = jnp.broadcast_to(self.logits[...][None], (b, g, V))
    return jnp.concatenate([jnp.zeros((b, length - g, V)), answer_BxGxV], axis=1)


def peaked_logits(tokens_G, sharpness_G):
  """G x V logits whose argmax at column j is tokens_G[j], more confident as sharpness grows."""
  return np.asarray(sharpness_G, np.float32)[:, None] * np.eye(V, dtype=np.float32)[tokens_G]


def commit_step(history_NxBxG):
  """int [B, G]: the step at which each answer position stopped being a mask."""
  return np.argmax(history_NxBxG != MASK_ID, axis=0)


# ---------------------------------------------------------------------------------------
# AR.


@pytest.mark.parametrize('opts', [dict(temperature=0.0),
                                  dict(temperature=0.8, top_k=12, top_p=0.9, seed=3)],
                         ids=['greedy', 'sampled'])
def test_ar_with_kv_cache_equals_recomputing_the_prefix_token_for_token(model, opts):
  cached = sample.sample(model, PROMPTS, causal=True, max_new_tokens=10, stop_at_eos=False,
                         **opts)
  recomputed = sample.sample(model, PROMPTS, causal=True, max_new_tokens=10, stop_at_eos=False,
                             kv_cache=False, **opts)
  np.testing.assert_array_equal(cached.tokens, recomputed.tokens)
  assert cached.tokens.shape == (3, 10)
  assert not np.isin(cached.tokens, SPECIAL).any()
  # The history is the tokens revealed one column per step.
  assert cached.history.shape == (10, 3, 10)
  np.testing.assert_array_equal(cached.history[-1], cached.tokens)
  assert (cached.history[4][:, 5:] == PAD_ID).all()


@pytest.mark.parametrize('causal', [True, False], ids=['ar', 'dlm'])
def test_a_left_padded_batch_gives_every_prompt_its_own_generation(model, causal):
  # The options of the other tests, so the batch reuses their compiled loops.
  opts = dict(causal=causal, max_new_tokens=10 if causal else 12, stop_at_eos=False)
  batch = sample.sample(model, PROMPTS, **opts).tokens
  for i, prompt in enumerate(PROMPTS):
    np.testing.assert_array_equal(sample.sample(model, [prompt], **opts).tokens[0], batch[i])


def test_ar_rows_stop_at_eos_and_the_loop_ends_when_all_rows_have():
  lm = ChainLM(eos_after=14)
  out = sample.sample(lm, [[BOS_ID, 11], [BOS_ID, 5]], causal=True, max_new_tokens=20)
  assert out.ids[0] == [12, 13, 14, EOS_ID]
  assert out.ids[1] == list(range(6, 15)) + [EOS_ID]
  assert (out.tokens[0, 4:] == PAD_ID).all()
  assert len(out.history) == 10  # the step that produced the last EOS was the last step
  full = sample.sample(lm, [[BOS_ID, 11]], causal=True, max_new_tokens=6, stop_at_eos=False)
  assert full.ids[0][:4] == [12, 13, 14, EOS_ID] and len(full.ids[0]) == 6


# ---------------------------------------------------------------------------------------
# Token choice.

PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])


@pytest.mark.parametrize('temperature,top_k,top_p,allowed,noise_dtype', [
    (1.0, 3, 1.0, [0, 1, 2], 'float64'),  # the three most probable, renormalised
    (1.0, 0, 0.7, [0, 1, 2], 'float64'),  # mass before id 2 is 0.65 < 0.7, before id 3 is 0.8
    (1.0, 2, 0.9, [0, 1], 'float64'),  # top-k first, then the nucleus of what is left
    (2.0, 0, 0.5, [0, 1, 2], 'float64'),  # temperature before top-p: p^(1/2) renormalised
    (1.0, 0, 1.0, [0, 1, 2, 3, 4, 5], 'float64'),
    (2.0, 0, 0.5, [0, 1, 2], 'float32'),  # the high-dynamic-range float32 Gumbel noise
    (1.0, 0, 1.0, [0, 1, 2, 3, 4, 5], 'float32'),
])
def test_sampling_picks_only_allowed_tokens_with_their_renormalised_probabilities(
    temperature, top_k, top_p, allowed, noise_dtype):
  n = 20000
  opts = sample.SampleOptions(temperature=temperature, top_k=top_k, top_p=top_p,
                              noise_dtype=noise_dtype)
  logits_NxV = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (n, PROBS.size))
  with jax.enable_x64(noise_dtype == 'float64'):
    ids = np.asarray(jax.jit(lambda x, k: sample.choose_tokens(x, k, opts))(
        logits_NxV, jax.random.key(0)))
  assert set(np.unique(ids)) == set(allowed)
  expect = PROBS[allowed] ** (1 / temperature)
  expect /= expect.sum()
  freq = np.bincount(ids, minlength=PROBS.size)[allowed] / n
  np.testing.assert_allclose(freq, expect, atol=0.02)  # ~6 standard errors


def test_greedy_ignores_the_noise_and_returns_the_argmax():
  logits = jnp.asarray([[0.1, 2.0, 1.9], [3.0, -1.0, 2.9]])
  out = sample.choose_tokens(logits, jax.random.key(0), sample.SampleOptions(top_k=1))
  np.testing.assert_array_equal(out, [1, 0])


def test_the_model_forward_is_unchanged_when_traced_with_64_bit_types(model):
  # The float64 Gumbel path traces the whole sampler with x64 on.
  tokens = jnp.asarray([PROMPTS[1]], jnp.int32)
  seg, pos = jnp.ones_like(tokens), jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]
  graphdef, state = nnx.split(model)
  f = lambda s: nnx.merge(graphdef, s)(tokens, seg, pos, causal=False)
  ref = jax.jit(f)(state)
  with jax.enable_x64(True):
    wide = jax.jit(f)(state)
  assert wide.dtype == jnp.float32
  np.testing.assert_allclose(wide, ref, atol=1e-6)


# ---------------------------------------------------------------------------------------
# DLM.


def test_dlm_with_one_step_per_token_and_greedy_choice_is_deterministic_for_a_seed(model):
  opts = dict(causal=False, max_new_tokens=12, steps=12, stop_at_eos=False, seed=5)
  a, b = sample.sample(model, PROMPTS, **opts), sample.sample(model, PROMPTS, **opts)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_array_equal(a.history, b.history)
  # Exactly one mask is committed per step, and none is left.
  masks_N = (a.history == MASK_ID).sum(axis=2)
  np.testing.assert_array_equal(masks_N, np.broadcast_to(np.arange(11, -1, -1)[:, None], (12, 3)))
  assert not np.isin(a.tokens, SPECIAL).any()


def test_semi_autoregressive_blocks_fill_left_to_right(model):
  out = sample.sample(model, PROMPTS, causal=False, max_new_tokens=12, steps=6, block_length=4,
                      temperature=1.0, stop_at_eos=False)
  masked_NxBxG = out.history == MASK_ID
  for n in range(6):
    block = n // 2  # 3 blocks, 2 steps each, 2 tokens per step
    assert not masked_NxBxG[n][:, :4 * block].any()  # earlier blocks are complete
    assert masked_NxBxG[n][:, 4 * (block + 1):].all()  # later blocks are untouched
    assert (masked_NxBxG[n][:, 4 * block:4 * (block + 1)].sum(1) == 2 * (1 - n % 2)).all()
  assert not masked_NxBxG[-1].any()


def test_low_confidence_remasking_commits_the_most_confident_positions_first():
  rng = np.random.default_rng(0)
  tokens_G = rng.integers(4, V, 8)
  sharpness_G = rng.permutation(8) + 1.0
  lm = AnswerLogits(peaked_logits(tokens_G, sharpness_G))
  out = sample.sample(lm, [[BOS_ID, 9]], causal=False, max_new_tokens=8, stop_at_eos=False)
  np.testing.assert_array_equal(out.tokens[0], tokens_G)
  np.testing.assert_array_equal(commit_step(out.history)[0], np.argsort(np.argsort(-sharpness_G)))
  # Random remasking ignores confidence: the order changes with the seed.
  orders = {tuple(commit_step(sample.sample(lm, [[BOS_ID, 9]], causal=False, max_new_tokens=8,
                                            remasking='random', seed=s).history)[0])
            for s in range(4)}
  assert len(orders) > 1


def test_no_mask_pad_or_bos_is_ever_generated_even_when_the_model_prefers_them():
  lm = ChainLM(eos_after=-1)  # PAD, BOS, MASK have logit 100, the chain token 10
  for causal in (True, False):
    out = sample.sample(lm, PROMPTS, causal=causal, max_new_tokens=8, temperature=1.0)
    assert not np.isin(out.tokens, SPECIAL).any()
    if not causal:
      assert not np.isin(out.history[-1], SPECIAL).any()


def test_dlm_answer_ends_at_its_first_eos_unless_a_fixed_length_is_asked_for():
  tokens_G = np.array([10, 11, 12, EOS_ID, 14, 15, 16, 17])
  lm = AnswerLogits(peaked_logits(tokens_G, [5.0] * 8))
  out = sample.sample(lm, [[BOS_ID, 9]], causal=False, max_new_tokens=8)
  assert out.ids == [[10, 11, 12, EOS_ID]]
  np.testing.assert_array_equal(out.tokens[0], [10, 11, 12, EOS_ID] + [PAD_ID] * 4)
  fixed = sample.sample(lm, [[BOS_ID, 9]], causal=False, max_new_tokens=8, stop_at_eos=False)
  np.testing.assert_array_equal(fixed.tokens[0], tokens_G)


# ---------------------------------------------------------------------------------------
# Options and schedule.


def test_unmask_schedule_spreads_each_block_over_its_steps():
  np.testing.assert_array_equal(sample.unmask_schedule(10, 4, 10), [3, 3, 2, 2])
  np.testing.assert_array_equal(sample.unmask_schedule(8, 4, 4), [2, 2, 2, 2])
  assert sample.unmask_schedule(12, 12, 3).tolist() == [1] * 12


@pytest.mark.parametrize('overrides,key', [
    ({'max_new_tokens': 12, 'block_length': 5}, 'block_length'),
    ({'max_new_tokens': 12, 'block_length': 4, 'steps': 4}, 'steps'),
    ({'max_new_tokens': 12, 'steps': 13}, 'steps'),
    ({'top_p': 0.0}, 'top_p'),
    ({'remasking': 'entropy'}, 'remasking'),
    ({'temprature': 1.0}, 'temprature'),
])
def test_impossible_sample_options_name_their_key(overrides, key):
  with pytest.raises(ConfigError, match=key):
    sample.SampleOptions.from_overrides(overrides)


def test_options_from_strings_are_typed():
  opts = sample.SampleOptions.from_overrides({'max_new_tokens': '64', 'temperature': '0.7',
                                              'stop_at_eos': 'false'})
  assert opts == dataclasses.replace(sample.SampleOptions(), max_new_tokens=64,
                                     temperature=0.7, stop_at_eos=False)


# ---------------------------------------------------------------------------------------
# Command line and terminal view (the trained-run CLI test lives in test_train.py).


def test_bad_command_line_exits_2_naming_the_key(capsys):
  for argv, words in [(['RUN', 'prompt=x', 'temprature=1'], "'temprature'"),
                      (['RUN', 'max_new_tokens=8'], 'prompt'),
                      (['RUN', 'prompt=x', 'view=fancy'], 'view')]:
    with pytest.raises(SystemExit) as e:
      sample.main(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err


def rendered(view) -> str:
  from rich.console import Console

  console = Console(record=True, width=60, file=io.StringIO())
  console.print(view.render())
  return console.export_text()


def test_terminal_view_shows_masks_filling_step_by_step_then_the_final_text():
  from dlmjax.data.tokenizer import ByteTokenizer
  from dlmjax.sample_view import SampleView

  tok = ByteTokenizer()
  c, d, e = tok.encode('cde')
  view = SampleView(tok, ['ab'], causal=False, opts=sample.SampleOptions(max_new_tokens=4, steps=2),
                    live=False)
  assert 'ab▒▒▒▒' in rendered(view)
  view.update(0, np.array([[MASK_ID, c, MASK_ID, d]]))
  assert 'ab▒c▒d' in rendered(view) and 'step 1/2' in rendered(view)
  assert view.new_BxG.tolist() == [[False, True, False, True]]  # highlighted
  view.update(1, np.array([[e, c, EOS_ID, d]]))
  assert 'abec<eos>d' in rendered(view)
  view.finish(np.array([[e, c, EOS_ID, PAD_ID]]))
  assert 'abec<eos> ' in rendered(view)
