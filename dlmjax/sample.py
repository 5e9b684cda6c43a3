"""Generation: an AR model with a KV cache, a diffusion model by iterative unmasking.

    from dlmjax import sample
    run = dlmjax.load_run('runs/tiny-mdm-u200000-e20-s0')
    prompt = [run.tokenizer.bos_id] + run.tokenizer.encode('def fib(n):')
    ids = sample.generate(run, [prompt], max_new_tokens=64)     # [[id, ...]] per prompt
    out = sample.sample(run, [prompt], steps=32, block_length=16)  # .ids, .tokens, .history

    python -m dlmjax.sample RUN_DIR prompt='def fib(n):' [prompt=...] [key=value ...]

Legend: B prompts, P padded prompt length, G generated length (`max_new_tokens`), S = P + G
(the AR cache's slots; the DLM's sequence), V vocabulary, N denoising steps.

Prompts are token ids, used as given: training documents start with BOS and a segment's
first token is never predicted, so a prompt should start with `bos_id` (the CLI adds it).
A batch of prompts is left-padded to one length P (rounded up to a multiple of
`PROMPT_BUCKET`, so that many prompt lengths share one compiled sampler). Left, because then
every row's next token sits in the same column: the AR loop writes one cache slot for all
rows per step (one dynamic_update_slice, no per-row scatter) and the DLM's answer occupies
the same G columns in every row, so semi-autoregressive blocks are column ranges. Padding is
segment 0 and positions restart at 0 at each prompt's first token, so a padded prompt
computes exactly what it computes alone.

AR (`causal` runs): one prefill call over the prompts fills the KV cache
(`Transformer.init_cache`, `cache=`), then one token per step inside a jitted
`lax.while_loop` that stops when every row has produced EOS (`stop_at_eos`) or after
`max_new_tokens`. `kv_cache=False` recomputes the whole prefix each step instead: the
reference that the cached path must match token for token, and the bench's baseline.

DLM (bidirectional runs), as LLaDA's `generate.py`: the answer starts as G mask tokens and
each of N steps predicts every position with one forward pass, then commits a fixed number
of the still-masked positions (the linear schedule unmasks G / N per step in expectation;
LLaDA's `get_num_transfer_tokens` spreads the remainder over the first steps). Which ones:
`remasking=low_confidence` keeps the most probable predictions (log-probability of the chosen
token under the model), `random` picks uniformly (MDLM-style ancestral order). With
`block_length` < G the answer is filled in blocks, left to right, N * block_length / G steps
per block (semi-autoregressive). Tokens after the first EOS become padding (`stop_at_eos`),
otherwise the answer has exactly G tokens.

Token choice (both): greedy at `temperature=0`; otherwise logits / temperature, then top-k,
then top-p (Hugging Face's order), and the Gumbel-max trick. The Gumbel noise is float64 by
default (LLaDA; arXiv 2409.02908: in low precision the noise's tail is cut off, which lowers
the effective temperature), which turns on 64-bit types for the sampler's trace only;
`noise_dtype=float32` uses JAX's high-dynamic-range float32 Gumbel instead (for TPUs, where
float64 is emulated). PAD, BOS, MASK and ids outside the tokenizer are never generated: no
training target is one of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import sys
import time
import typing
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from dlmjax import config as config_lib
from dlmjax.data.tokenizer import EOS_ID, MASK_ID, PAD_ID
from dlmjax.errors import ConfigError, UserError, exit_on_user_error
from dlmjax.model.transformer import NEVER_PREDICTED

PROMPT_BUCKET = 16  # prompts are left-padded to a multiple of this many tokens
# The model suppresses these logits itself; the samplers ban them again for any model.
NEVER_GENERATED = NEVER_PREDICTED
_DLM_ONLY = {'steps': 0, 'block_length': 0, 'remasking': 'low_confidence'}


def _option(default, help_text: str):
  return dataclasses.field(default=default, metadata={'help': help_text})


@dataclasses.dataclass(frozen=True)
class SampleOptions:
  """How to generate; every field is also a `key=value` of `python -m dlmjax.sample`."""

  max_new_tokens: int = _option(128, 'AR: at most this many tokens; DLM: the answer length')
  temperature: float = _option(0.0, '0: greedy (argmax)')
  top_k: int = _option(0, '0: no top-k filter')
  top_p: float = _option(1.0, '1: no nucleus (top-p) filter')
  stop_at_eos: bool = _option(True, 'AR: a row stops at EOS; DLM: tokens after the first EOS '
                                    'become padding; false: exactly max_new_tokens')
  seed: int = _option(0, 'sampling noise and random remasking')
  batch_size: int = _option(32, 'prompts per compiled call')
  kv_cache: bool = _option(True, 'AR: false recomputes the whole prefix each step')
  steps: int = _option(0, 'DLM: denoising steps; 0: max_new_tokens (one token per step)')
  block_length: int = _option(0, 'DLM: semi-autoregressive block length; 0: the whole answer')
  remasking: str = _option('low_confidence', 'DLM: low_confidence | random')
  noise_dtype: str = _option('float64', 'Gumbel noise at temperature > 0: float64 | float32')

  @property
  def num_steps(self) -> int:
    return self.steps or self.max_new_tokens

  @property
  def block(self) -> int:
    return self.block_length or self.max_new_tokens

  def validate(self) -> 'SampleOptions':
    """Returns self, or raises ConfigError naming the first impossible key."""
    def check(cond: bool, key: str, msg: str) -> None:
      if not cond:
        raise ConfigError(f'sample option {key!r}: {msg}')

    g = self.max_new_tokens
    check(g >= 1, 'max_new_tokens', 'must be at least 1')
    check(self.temperature >= 0.0, 'temperature', 'must be >= 0 (0: greedy)')
    check(self.top_k >= 0, 'top_k', 'must be >= 0 (0: no top-k filter)')
    check(0.0 < self.top_p <= 1.0, 'top_p', 'must be in (0, 1]')
    check(self.batch_size >= 1, 'batch_size', 'must be at least 1')
    check(1 <= self.block <= g and g % self.block == 0, 'block_length',
          f'{self.block} must divide max_new_tokens={g}')
    blocks = g // self.block
    check(1 <= self.num_steps <= g and self.num_steps % blocks == 0, 'steps',
          f'{self.num_steps} must be at most max_new_tokens={g} and a multiple of the '
          f'number of blocks ({blocks} = max_new_tokens / block_length)')
    check(self.remasking in ('low_confidence', 'random'), 'remasking',
          f'{self.remasking!r} is not one of low_confidence, random')
    check(self.noise_dtype in ('float64', 'float32'), 'noise_dtype',
          f'{self.noise_dtype!r} is not one of float64, float32')
    return self

  @classmethod
  def from_overrides(cls, overrides: dict[str, typing.Any]) -> 'SampleOptions':
    """Options from `{key: value}` (values may be strings), type-checked and validated."""
    types = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in overrides.items():
      if key not in types:
        close = difflib.get_close_matches(key, list(types), n=1)
        hint = f' (did you mean {close[0]!r}?)' if close else ''
        raise ConfigError(f'unknown sample option {key!r}{hint}')
      kwargs[key] = config_lib.coerce(key, value, types[key])
    return cls(**kwargs).validate()


@dataclasses.dataclass
class Generation:
  """What `sample` returns. Row b of the arrays is prompt b."""

  ids: list[list[int]]  # generated ids per prompt (up to and including EOS if stop_at_eos)
  tokens: np.ndarray  # int32 [B, G]: the generated block, PAD after the end
  history: np.ndarray | None  # int32 [N, B, G]: the block after each step (see `sample`)
  causal: bool
  seconds: float  # wall time of the generation calls, compilation excluded
  compile_seconds: float


# ---------------------------------------------------------------------------------------
# Token choice (pure; shared by both samplers).


def restrict_vocab(logits_xV: jax.Array, vocab_size: int | None) -> jax.Array:
  """-inf at the ids no sampler may produce: PAD, BOS, MASK and ids >= `vocab_size`."""
  ids_V = jnp.arange(logits_xV.shape[-1], dtype=jnp.int32)
  banned_V = jnp.isin(ids_V, jnp.asarray(NEVER_GENERATED, jnp.int32))
  if vocab_size is not None:
    banned_V |= ids_V >= vocab_size
  return jnp.where(banned_V, -jnp.inf, logits_xV)


def filter_logits(logits_xV: jax.Array, *, top_k: int, top_p: float) -> jax.Array:
  """-inf outside the top-k ids and outside the nucleus (the most probable ids whose mass
  first reaches top_p); ties at either threshold are kept."""
  v = logits_xV.shape[-1]
  if 0 < top_k < v:
    kth_xV = jax.lax.top_k(logits_xV, top_k)[0][..., -1:]
    logits_xV = jnp.where(logits_xV < kth_xV, -jnp.inf, logits_xV)
  if top_p < 1.0:
    sorted_xV = -jnp.sort(-logits_xV, axis=-1)
    probs_xV = jax.nn.softmax(sorted_xV, axis=-1)
    before_xV = jnp.cumsum(probs_xV, axis=-1) - probs_xV  # mass of the more probable ids
    n_keep_x1 = jnp.sum(before_xV < top_p, axis=-1, keepdims=True, dtype=jnp.int32)
    threshold_x1 = jnp.take_along_axis(sorted_xV, jnp.maximum(n_keep_x1, 1) - 1, axis=-1)
    logits_xV = jnp.where(logits_xV < threshold_x1, -jnp.inf, logits_xV)
  return logits_xV


def choose_tokens(logits_xV: jax.Array, rng: jax.Array, opts: SampleOptions) -> jax.Array:
  """int32 ids: argmax at temperature 0, else a sample of softmax(filtered logits / T)."""
  if opts.temperature == 0.0:
    return jnp.argmax(logits_xV, axis=-1).astype(jnp.int32)
  scaled_xV = filter_logits(logits_xV.astype(jnp.float32) / opts.temperature,
                            top_k=opts.top_k, top_p=opts.top_p)
  if opts.noise_dtype == 'float64':
    noise_xV = jax.random.gumbel(rng, scaled_xV.shape, jnp.float64)
  else:
    noise_xV = jax.random.gumbel(rng, scaled_xV.shape, jnp.float32, mode='high')
  return jnp.argmax(scaled_xV.astype(noise_xV.dtype) + noise_xV, axis=-1).astype(jnp.int32)


def unmask_schedule(length: int, steps: int, block_length: int) -> np.ndarray:
  """int32 [steps]: how many masks each DLM step commits; every block's steps sum to its
  length, the remainder going to a block's first steps (LLaDA's get_num_transfer_tokens)."""
  per_block = steps // (length // block_length)
  counts = np.full(per_block, block_length // per_block, np.int32)
  counts[:block_length % per_block] += 1
  return np.tile(counts, length // block_length)


def cut_after_eos(tokens_BxG: jax.Array) -> jax.Array:
  """PAD at every position after a row's first EOS (the EOS itself stays)."""
  is_eos_BxG = (tokens_BxG == EOS_ID).astype(jnp.int32)
  after_BxG = jnp.cumsum(is_eos_BxG, axis=1) - is_eos_BxG > 0
  return jnp.where(after_BxG, PAD_ID, tokens_BxG)


# ---------------------------------------------------------------------------------------
# Streaming: the jitted loops call `_emit` on the host after every step when asked to. It
# forwards to the listener installed by `_listening`, so a new listener needs no new compile.

_LISTENERS: list[Callable[[int, np.ndarray], None]] = []


def _emit(step, tokens_BxG) -> None:
  if _LISTENERS:
    _LISTENERS[-1](int(step), np.asarray(tokens_BxG))


@contextlib.contextmanager
def _listening(on_step: Callable[[int, np.ndarray], None] | None):
  if on_step is None:
    yield
    return
  _LISTENERS.append(on_step)
  try:
    yield
  finally:
    _LISTENERS.pop()


def _stream(step: jax.Array, tokens_BxG: jax.Array) -> None:
  io_callback(_emit, None, step, tokens_BxG, ordered=True)


# ---------------------------------------------------------------------------------------
# The two samplers: pure functions of (state, prompts, rng) given the graphdef, jitted whole.


def _prompt_layout(segment_ids_BxP: jax.Array, length: int) -> jax.Array:
  """int32 B x length positions: 0 at the first prompt token (and over the left padding)."""
  p = segment_ids_BxP.shape[1]
  pad_B = p - jnp.sum(segment_ids_BxP, axis=1, dtype=jnp.int32)
  return jnp.maximum(jnp.arange(length, dtype=jnp.int32)[None, :] - pad_B[:, None], 0)


def _ar_loop(state, prompt_BxP, segment_ids_BxP, rng, *, graphdef, opts: SampleOptions,
             vocab_size: int | None, stream: bool):
  """(int32 BxG tokens, PAD after a row's EOS; int32 number of columns generated)."""
  model = nnx.merge(graphdef, state)
  b, p = prompt_BxP.shape
  g = opts.max_new_tokens
  positions_BxS = _prompt_layout(segment_ids_BxP, p + g)
  pick = lambda logits_BxV, i: choose_tokens(restrict_vocab(logits_BxV, vocab_size),
                                             jax.random.fold_in(rng, i), opts)

  if opts.kv_cache:
    logits_BxPxV, mem = model(prompt_BxP, segment_ids_BxP, positions_BxS[:, :p], causal=True,
                              cache=model.init_cache(b, p + g))

    def next_logits(mem, token_B, slot):
      """Feeds the token at `slot` through the cache; logits for slot + 1."""
      logits_Bx1xV, mem = model(token_B[:, None], jnp.ones((b, 1), jnp.int32),
                                jax.lax.dynamic_slice_in_dim(positions_BxS, slot, 1, axis=1),
                                causal=True, cache=mem)
      return logits_Bx1xV[:, 0], mem
  else:
    logits_BxPxV = model(prompt_BxP, segment_ids_BxP, positions_BxS[:, :p], causal=True)
    pad = lambda x_BxP, fill: jnp.pad(x_BxP, ((0, 0), (0, g)), constant_values=fill)
    mem = (pad(prompt_BxP, PAD_ID), pad(segment_ids_BxP, 0))

    def next_logits(mem, token_B, slot):
      """Writes the token at `slot` and reruns the whole prefix; logits for slot + 1."""
      tokens_BxS = jax.lax.dynamic_update_slice_in_dim(mem[0], token_B[:, None], slot, axis=1)
      segment_ids_BxS = jax.lax.dynamic_update_slice_in_dim(
          mem[1], jnp.ones((b, 1), jnp.int32), slot, axis=1)
      logits_BxSxV = model(tokens_BxS, segment_ids_BxS, positions_BxS, causal=True)
      return (jax.lax.dynamic_index_in_dim(logits_BxSxV, slot, axis=1, keepdims=False),
              (tokens_BxS, segment_ids_BxS))

  first_B = pick(logits_BxPxV[:, -1], 0)
  if stream:
    _stream(jnp.int32(0), first_B[:, None])
  done_B = (first_B == EOS_ID) & opts.stop_at_eos
  out_BxG = jnp.full((b, g), PAD_ID, jnp.int32).at[:, 0].set(first_B)

  def cond(carry):
    i, _, done_B, _, _ = carry
    return (i < g) & ~jnp.all(done_B)

  def body(carry):
    i, out_BxG, done_B, last_B, mem = carry
    logits_BxV, mem = next_logits(mem, last_B, p + i - 1)
    token_B = jnp.where(done_B, PAD_ID, pick(logits_BxV, i))
    out_BxG = jax.lax.dynamic_update_slice_in_dim(out_BxG, token_B[:, None], i, axis=1)
    if stream:
      _stream(i, token_B[:, None])
    done_B = done_B | ((token_B == EOS_ID) & opts.stop_at_eos)
    return i + 1, out_BxG, done_B, token_B, mem

  n, out_BxG, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), out_BxG, done_B, first_B,
                                                        mem))
  return out_BxG, n


def _dlm_loop(state, prompt_BxP, segment_ids_BxP, rng, *, graphdef, opts: SampleOptions,
              vocab_size: int | None, stream: bool, history: bool):
  """(int32 BxG answer, int32 NxBxG answer after each step, or None)."""
  model = nnx.merge(graphdef, state)
  b, p = prompt_BxP.shape
  g, n_steps, block = opts.max_new_tokens, opts.num_steps, opts.block
  segment_ids_BxS = jnp.concatenate([segment_ids_BxP, jnp.ones((b, g), jnp.int32)], axis=1)
  positions_BxS = _prompt_layout(segment_ids_BxP, p + g)
  counts_N = jnp.asarray(unmask_schedule(g, n_steps, block))
  steps_per_block = n_steps // (g // block)
  block_of_G = jnp.arange(g, dtype=jnp.int32) // block
  token_rng, order_rng = jax.random.split(rng)

  def step(answer_BxG, n):
    tokens_BxS = jnp.concatenate([prompt_BxP, answer_BxG], axis=1)
    logits_BxSxV = model(tokens_BxS, segment_ids_BxS, positions_BxS, causal=False)
    logits_BxGxV = restrict_vocab(logits_BxSxV[:, p:], vocab_size)
    x0_BxG = choose_tokens(logits_BxGxV, jax.random.fold_in(token_rng, n), opts)
    if opts.remasking == 'low_confidence':
      # Log-probabilities rather than LLaDA's probabilities: the same order, without the
      # float32 ties of probabilities that round to 1.
      logp_BxGxV = jax.nn.log_softmax(logits_BxGxV.astype(jnp.float32), axis=-1)
      score_BxG = jnp.take_along_axis(logp_BxGxV, x0_BxG[..., None], axis=-1)[..., 0]
    else:
      score_BxG = jax.random.uniform(jax.random.fold_in(order_rng, n), (b, g))
    open_BxG = (answer_BxG == MASK_ID) & (block_of_G == n // steps_per_block)[None]
    score_BxG = jnp.where(open_BxG, score_BxG, -jnp.inf)
    # Rank 0 = best score; the schedule never asks for more than the open positions.
    rank_BxG = jnp.argsort(jnp.argsort(-score_BxG, axis=1, stable=True), axis=1, stable=True)
    commit_BxG = open_BxG & (rank_BxG < counts_N[n])
    answer_BxG = jnp.where(commit_BxG, x0_BxG, answer_BxG)
    if stream:
      _stream(n, answer_BxG)
    return answer_BxG, (answer_BxG if history else None)

  answer_BxG, history_NxBxG = jax.lax.scan(step, jnp.full((b, g), MASK_ID, jnp.int32),
                                           jnp.arange(n_steps, dtype=jnp.int32))
  if opts.stop_at_eos:
    answer_BxG = cut_after_eos(answer_BxG)
  return answer_BxG, history_NxBxG


_STATIC = ('graphdef', 'opts', 'vocab_size', 'stream')
_JITTED = {'ar': jax.jit(_ar_loop, static_argnames=_STATIC),
           'dlm': jax.jit(_dlm_loop, static_argnames=_STATIC + ('history',))}
_COMPILED: dict[tuple, typing.Any] = {}  # ahead-of-time compiled loops, so timings exclude it


def _compiled(kind: str, args: tuple, static: dict) -> tuple[typing.Any, float]:
  key = (kind, tuple(static.items()), jax.config.jax_enable_x64,
         tuple((a.shape, a.dtype) for a in jax.tree.leaves(args)))
  if key in _COMPILED:
    return _COMPILED[key], 0.0
  t0 = time.perf_counter()
  fn = _JITTED[kind].lower(*args, **static).compile()
  if len(_COMPILED) >= 32:
    _COMPILED.pop(next(iter(_COMPILED)))
  _COMPILED[key] = fn
  return fn, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------
# The API.


def left_pad(prompts: Sequence[Sequence[int]], bucket: int = PROMPT_BUCKET):
  """(int32 BxP tokens, int32 BxP segment ids): prompts right-aligned, PAD / 0 before."""
  if not prompts:
    raise UserError('no prompts given')
  if any(len(x) == 0 for x in prompts):
    raise UserError('every prompt needs at least one token (start it with BOS)')
  p = -(-max(len(x) for x in prompts) // bucket) * bucket
  tokens_BxP = np.full((len(prompts), p), PAD_ID, np.int32)
  segment_ids_BxP = np.zeros((len(prompts), p), np.int32)
  for r, ids in enumerate(prompts):
    tokens_BxP[r, p - len(ids):] = np.asarray(ids, np.int32)
    segment_ids_BxP[r, p - len(ids):] = 1
  return tokens_BxP, segment_ids_BxP


def _ids_per_row(tokens_BxG: np.ndarray, stop_at_eos: bool) -> list[list[int]]:
  out = []
  for row in tokens_BxG.tolist():
    if stop_at_eos and EOS_ID in row:
      row = row[:row.index(EOS_ID) + 1]
    out.append([t for t in row if t != PAD_ID])
  return out


def _model_of(source):
  """(nnx module, causal, vocab size) of a `dlmjax.run.Run` or of a bare module."""
  if hasattr(source, 'tokenizer') and hasattr(source, 'model'):
    return source.model(), source.causal, source.tokenizer.vocab_size
  return source, None, None


def sample(source, prompts: Sequence[Sequence[int]], options: SampleOptions | None = None, *,
           causal: bool | None = None, history: bool = True,
           on_step: Callable[[int, np.ndarray], None] | None = None, **kwargs) -> Generation:
  """Generates a continuation of every prompt; see the module docstring for the algorithms.

  source: a `dlmjax.run.Run` (AR or DLM by its objective) or a bare `Transformer`-like module
    (then `causal=` says which sampler: True AR, False DLM).
  prompts: token-id lists (start them with BOS), any lengths.
  options / kwargs: a `SampleOptions`, or its fields as keyword arguments (kwargs override).
  history: also return `Generation.history`, int32 [N, B, G]: the generated block after
    each step. DLM: one entry per denoising step, MASK_ID where still masked. AR: one entry
    per generated column, PAD after the tokens produced so far.
  on_step: called on the host after every step with (step, int32 array) while the jitted
    loop runs: DLM the whole [B, G] answer, AR the [B, 1] column just generated (terminal view).
  """
  opts = dataclasses.replace(options or SampleOptions(), **kwargs).validate()
  model, run_causal, vocab_size = _model_of(source)
  causal = run_causal if causal is None else causal
  if causal is None:
    raise ValueError('sample(module, ...) needs causal=True (AR) or causal=False (DLM)')
  graphdef, state = nnx.split(model)
  # The seed is an argument and batching happens out here; options the other sampler reads
  # are reset and defaults spelled out, so equal settings share one compilation.
  canonical = (_DLM_ONLY if causal else
               {'kv_cache': True, 'steps': opts.num_steps, 'block_length': opts.block})
  static = dict(graphdef=graphdef,
                opts=dataclasses.replace(opts, seed=0, batch_size=1, **canonical),
                vocab_size=vocab_size, stream=on_step is not None)
  if not causal:
    static['history'] = history
  use_x64 = opts.temperature > 0.0 and opts.noise_dtype == 'float64'
  tokens, steps, hist, seconds, compile_s = [], [], [], 0.0, 0.0
  base = jax.random.key(opts.seed)
  with _listening(on_step), (jax.enable_x64(True) if use_x64 else contextlib.nullcontext()):
    for c, start in enumerate(range(0, len(prompts), opts.batch_size)):
      args = (state, *left_pad(prompts[start:start + opts.batch_size]),
              jax.random.fold_in(base, c))
      fn, dt = _compiled('ar' if causal else 'dlm', args, static)
      compile_s += dt
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(*args))
      seconds += time.perf_counter() - t0
      tokens.append(np.asarray(out[0], np.int32))
      if causal:
        steps.append(int(out[1]))
      elif history:
        hist.append(np.asarray(out[1], np.int32))
  tokens_BxG = np.concatenate(tokens)
  history_NxBxG = None
  if history and causal:
    n = max(steps)
    written_NxG = np.arange(opts.max_new_tokens)[None, :] <= np.arange(n)[:, None]
    history_NxBxG = np.where(written_NxG[:, None, :], tokens_BxG[None], PAD_ID).astype(np.int32)
  elif history:
    history_NxBxG = np.concatenate(hist, axis=1)
  return Generation(_ids_per_row(tokens_BxG, opts.stop_at_eos), tokens_BxG, history_NxBxG,
                    causal, seconds, compile_s)


def generate(run, prompts: Sequence[Sequence[int]], options: SampleOptions | None = None,
             **kwargs) -> list[list[int]]:
  """The generated ids of each prompt (up to and including its first EOS).

  `generate(run, prompts, options=None, **kwargs) -> list[list[int]]`: `run` from
  `dlmjax.load_run` (AR runs sample with a KV cache, diffusion runs by iterative unmasking),
  `prompts` token-id lists (start each with `run.tokenizer.bos_id`), sampling options as a
  `SampleOptions` or its fields as keyword arguments (`max_new_tokens`, `temperature`,
  `top_k`, `top_p`, `stop_at_eos`, `seed`, `steps`, `block_length`, `remasking`, ...).
  Deterministic for a seed. `sample` also returns the intermediate states.
  """
  return sample(run, prompts, options, history=False, **kwargs).ids


# ---------------------------------------------------------------------------------------
# Command line.

_CLI_KEYS = {'prompt': 'text to continue (repeat for a batch; \\n and \\t are newline, tab)',
             'step': 'checkpoint step (default: the latest)',
             'view': 'auto | live | plain: live redraws the answer after every step (a terminal)',
             'delay': 'seconds to pause after each step in the live view (default 0.02)'}


def _usage() -> str:
  fields = '\n'.join(f'  {f.name + "=" + str(f.default):28s} {f.metadata["help"]}'
                     for f in dataclasses.fields(SampleOptions))
  keys = '\n'.join(f'  {k + "=...":28s} {v}' for k, v in _CLI_KEYS.items())
  return (f'usage: python -m dlmjax.sample RUN_DIR prompt=TEXT [prompt=TEXT ...] '
          f'[key=value ...]\n\n{keys}\n\nsampling options (dlmjax.sample.SampleOptions):\n'
          f'{fields}')


def parse_cli(argv: list[str]) -> tuple[str, list[str], dict, SampleOptions]:
  """(run_dir, prompt texts, CLI settings, options) from the command line."""
  run_dir, prompts, cli, overrides = argv[0], [], {'view': 'auto', 'delay': 0.02}, {}
  for arg in argv[1:]:
    if '=' not in arg:
      raise ConfigError(f'expected key=value, got {arg!r}')
    key, raw = arg.split('=', 1)
    if key == 'prompt':  # raw text: YAML would read 'def f(x):' as a mapping
      prompts.append(raw.replace('\\n', '\n').replace('\\t', '\t'))
    elif key == 'step':
      cli['step'] = config_lib.coerce('step', raw, int)
    elif key == 'view':
      if raw not in ('auto', 'live', 'plain'):
        raise ConfigError(f"view={raw!r} is not one of auto, live, plain")
      cli['view'] = raw
    elif key == 'delay':
      cli['delay'] = config_lib.coerce('delay', raw, float)
    else:
      overrides[key] = config_lib.parse_override(arg)[1]
  if not prompts:
    raise ConfigError('give at least one prompt=TEXT')
  return run_dir, prompts, cli, SampleOptions.from_overrides(overrides)


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ('-h', '--help'):
    print(_usage())
    sys.exit(0 if argv else 2)
  from dlmjax import sample_view
  from dlmjax.run import load_run

  with exit_on_user_error():
    run_dir, texts, cli, opts = parse_cli(argv)
    run = load_run(run_dir, cli.get('step'))
    tok = run.tokenizer
    prompts = [[tok.bos_id] + tok.encode(t) for t in texts]
    longest = max(len(x) for x in prompts) + opts.max_new_tokens
    if longest > run.config.data.seq_len:
      print(f'note: prompt + max_new_tokens = {longest} tokens is longer than the '
            f'{run.config.data.seq_len} the model was trained on', file=sys.stderr)
    opts = dataclasses.replace(opts, batch_size=len(prompts))  # one batch: one view
    view = sample_view.SampleView(tok, texts, causal=run.causal, opts=opts,
                                  live=sample_view.want_live(cli['view']), delay=cli['delay'])
    with view:
      out = sample(run, prompts, opts, history=False,
                   on_step=view.update if view.live else None)
      view.finish(out.tokens)
  n = sum(len(x) for x in out.ids)
  seconds = out.seconds - view.paused_seconds
  what = 'tokens' if run.causal else f'tokens in {opts.num_steps} steps'
  speed = f'{n / max(seconds, 1e-9):,.0f} tokens/s' + (' with the live view' if view.live else '')
  print(f'{run.config.objective} step {run.step}: {n} {what} in {seconds:.2f} s ({speed}; '
        f'compile {out.compile_seconds:.1f} s)', file=sys.stderr)


if __name__ == '__main__':
  main()
