"""The decoder-only transformer shared by every objective; `causal` is the only switch.

    model = Transformer(cfg.model, vocab_size, rngs=nnx.Rngs(0))
    logits_BxLxV = model(tokens_BxL, segment_ids_BxL, positions_BxL, causal=True)

Legend: B batch, L length, D d_model, H query heads, K key/value heads, G = H // K query
heads per kv head, Dh head dim, F d_ff, V vocabulary.

Pre-norm blocks (RMSNorm -> GQA attention with RoPE -> residual, RMSNorm -> SwiGLU ->
residual), a final RMSNorm and an output projection (untied unless `tie_embeddings`). AR and
the diffusion model are the same network: an AR run calls it with `causal=True`, a DLM with
`causal=False`, so a comparison changes nothing else.

The layers are a plain Python loop, not `nnx.scan`: the CPU presets and the tests have 1-2
layers, where the unrolled step compiles in ~1.5 s (a scan adds its own while-loop and
stacking overhead at that depth), XLA can fuse across block boundaries, and each parameter
keeps its natural shape (no stacked 'layers' axis for the sharding rules to carry). At 24+
layers on accelerators compile time grows linearly; scanning is then the change to make.

With `model.num_experts > 0` every block's MLP is a mixture of SwiGLU experts (`moe.py`),
one call in the block; the dense path is unchanged.

Generation passes `cache=model.init_cache(batch, length)`: the call then also returns the
cache with its tokens' keys and values appended (a prefill is one call with the prompt, a
decode step a call with one token), through the same blocks (`Block.__call__`'s `cache`).

The q/k/v projection and the SwiGLU MLP run through hand-written VJPs (`fused.py`) and the
attention in a head-major layout (`attention.py`); both were measured to matter on CPU.

Every parameter carries logical axis names (`LOGICAL_AXES`) as `out_sharding` metadata, and
`eager_sharding=False` so that building the model never needs a mesh; `dlmjax/sharding.py`
maps the names onto mesh axes. The residual stream, the attention output and the logits are
pinned by logical names too (`sharding.constrain`, a no-op outside a sharded train step).
`model.remat` picks what the backward pass keeps of each block (`REMAT`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dlmjax import sharding
from dlmjax.config import ModelConfig
from dlmjax.data.tokenizer import BOS_ID, MASK_ID, PAD_ID
from dlmjax.model import attention, fused, moe

# Vocabulary ids that are never a target (docs/architecture.md, "What is predicted"): padding,
# BOS (always a segment's first token, which is context) and the mask (an input only). Their
# output logits are suppressed for every objective, as MDLM sets the mask's to -inf: no
# probability is spent on them, and a sampler can never emit them.
NEVER_PREDICTED = (PAD_ID, BOS_ID, MASK_ID)

# The logical axis names parameters carry. 'qkv' indexes the fused projection's G + 2 slots
# per kv head (G query heads, then k, then v). The size-2 gate/up axis of the fused SwiGLU
# weight is named None (never sharded), so a shard of 'mlp' holds matching gate and up columns.
LOGICAL_AXES = ('vocab', 'embed', 'heads', 'kv_heads', 'head_dim', 'qkv', 'mlp', 'norm', 'expert')
# The activations' names (sharding.LOGICAL_RULES): rows are data parallel, the residual
# stream is whole on each device, heads and the vocabulary follow their weights.
ACT_BxLxD = ('batch', 'length', 'act_embed')
ACT_BxLxHxDh = ('batch', 'length', 'act_heads', None)
ACT_BxLxV = ('batch', 'length', 'act_vocab')

# model.remat -> the jax.checkpoint policy applied to each block: what its backward pass
# keeps rather than recomputes ('none': everything, no checkpoint). Measured on CPU with
# XLA's memory_analysis in docs/architecture.md ("Memory").
REMAT = {
    'none': None,
    # The outputs of the weight matmuls (q/k/v, attention output, gate/up, down projections;
    # MaxText's 'minimal'): the recomputation is norms, RoPE, attention and elementwise ops.
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Only the block's input: the whole block runs again in the backward pass.
    'block': jax.checkpoint_policies.nothing_saveable,
}


@dataclasses.dataclass(frozen=True)
class _Static:
  """What the forward pass reads from ModelConfig, frozen: a module's static attributes end up
  in its graphdef, which jit hashes, and ModelConfig (mutable) is not hashable."""

  kv_heads: int
  groups: int  # G = H // K
  dh: int
  dtype: str
  rope_theta: float
  qk_norm: bool
  tie_embeddings: bool
  attention: str
  remat: str
  attn_dropout: float
  mlp_dropout: float
  resid_dropout: float
  moe: bool  # the MLP is a mixture of experts (dlmjax/model/moe.py)

  @classmethod
  def of(cls, cfg: ModelConfig) -> '_Static':
    return cls(kv_heads=cfg.kv_heads, groups=cfg.n_heads // cfg.kv_heads, dh=cfg.dh,
               dtype=cfg.dtype, rope_theta=cfg.rope_theta, qk_norm=cfg.qk_norm,
               tie_embeddings=cfg.tie_embeddings, attention=cfg.attention, remat=cfg.remat,
               attn_dropout=cfg.attn_dropout, mlp_dropout=cfg.mlp_dropout,
               resid_dropout=cfg.resid_dropout, moe=cfg.num_experts > 0)


def _param(init, key, shape, dtype, names) -> nnx.Param:
  return nnx.Param(init(key, shape, dtype), out_sharding=names, eager_sharding=False)


def _normal(std: float):
  return jax.nn.initializers.normal(std)


def _ones(key, shape, dtype):
  del key
  return jnp.ones(shape, dtype)


class RMSNorm(nnx.Module):
  """x / rms(x) * scale over the last axis, computed in float32."""

  def __init__(self, dim: int, eps: float, param_dtype, *, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = _param(_ones, rngs.params(), (dim,), param_dtype, ('norm',))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def rope_tables(positions_BxL: jax.Array, dh: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos, sin float32 BxLx(Dh/2) for the rotary embedding at `positions_BxL`."""
  inv_freq = theta ** (-jnp.arange(0, dh, 2, dtype=jnp.float32) / dh)
  angle_BxLxDh2 = positions_BxL.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angle_BxLxDh2), jnp.sin(angle_BxLxDh2)


def rope_tables_once(positions_BxL: jax.Array, dh: int,
                     theta: float) -> tuple[jax.Array, jax.Array]:
  """`rope_tables`, computed once into a buffer that every layer reads.

  On CPU, XLA fuses the table's sin and cos into each q/k rotation fusion (forward and
  backward, every layer) and evaluates them once per head and rotation half: 8 times the
  table for the tiny preset, 4-5% of its train step (CPU time, same process). The result of
  a conditional is a buffer its consumers read, so the table goes through one: gathered from
  the L possible positions of a packed row (sin and cos folded at compile time) when every
  position is below L, which packing guarantees, and computed directly otherwise (e.g. a
  decoding step at a later position). Accelerators recompute sin and cos for free, and a
  conditional there would wait for its predicate: they use `rope_tables` as is.
  """
  if jax.default_backend() != 'cpu':
    return rope_tables(positions_BxL, dh, theta)
  length = positions_BxL.shape[1]

  def from_table(positions_BxL):
    cos_1xLxDh2, sin_1xLxDh2 = rope_tables(jnp.arange(length)[None], dh, theta)
    return (jnp.take(cos_1xLxDh2[0], positions_BxL, axis=0),
            jnp.take(sin_1xLxDh2[0], positions_BxL, axis=0))

  in_table = jnp.all((positions_BxL >= 0) & (positions_BxL < length))
  return jax.lax.cond(in_table, from_table, lambda p: rope_tables(p, dh, theta), positions_BxL)


def apply_rope(x_BxLxNxDh: jax.Array, cos_BxLxDh2: jax.Array, sin_BxLxDh2: jax.Array) -> jax.Array:
  """Rotates pairs (i, i + Dh/2) of every head (the rotate-half layout of Llama/MaxText)."""
  x1, x2 = jnp.split(x_BxLxNxDh.astype(jnp.float32), 2, axis=-1)
  cos, sin = cos_BxLxDh2[:, :, None], sin_BxLxDh2[:, :, None]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxDh.dtype)


def _dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  if rate <= 0.0 or rng is None:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class KVCache(NamedTuple):
  """Every layer's keys and values for decoding: `Transformer.init_cache`, then pass it as
  `cache=` and use the cache the call returns. Slots [0, index) are written; a call with T
  tokens writes slots [index, index + T) of every row, so the caller sizes the cache (S) for
  the prompt plus every token it will generate."""

  k: tuple[jax.Array, ...]  # per layer, BxSxKxDh in the compute dtype
  v: tuple[jax.Array, ...]
  segment_ids_BxS: jax.Array  # int32; 0 at padding and at slots not written yet
  index: jax.Array  # int32 scalar


class Block(nnx.Module):
  """One pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, k, g, dh, f = cfg.d_model, cfg.kv_heads, cfg.n_heads // cfg.kv_heads, cfg.dh, cfg.d_ff
    pdt = jnp.dtype(cfg.param_dtype)
    # Residual-branch outputs are scaled by 1/sqrt(2 n_layers) (GPT-2) so that the residual
    # stream's variance at init does not grow with depth.
    out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    self.static = _Static.of(cfg)
    self.attn_norm = RMSNorm(d, cfg.norm_eps, pdt, rngs=rngs)
    # One fused q/k/v matmul, laid out per kv head: slots 0..G-1 are its query heads, G is its
    # key, G + 1 its value. Sharding 'kv_heads' then keeps each group on one device.
    self.w_qkv = _param(_normal(cfg.init_std), rngs.params(), (d, k, g + 2, dh), pdt,
                        ('embed', 'kv_heads', 'qkv', 'head_dim'))
    if cfg.qk_norm:
      self.q_norm = RMSNorm(dh, cfg.norm_eps, pdt, rngs=rngs)
      self.k_norm = RMSNorm(dh, cfg.norm_eps, pdt, rngs=rngs)
    self.w_o = _param(_normal(out_std), rngs.params(), (k * g, dh, d), pdt,
                      ('heads', 'head_dim', 'embed'))
    self.mlp_norm = RMSNorm(d, cfg.norm_eps, pdt, rngs=rngs)
    if cfg.num_experts:
      self.moe = moe.MoE(cfg, rngs=rngs)
      return
    # Gate and up projections fused into one matmul; the size-2 axis is left unsharded so a
    # shard of 'mlp' holds matching gate and up columns.
    self.w_gate_up = _param(_normal(cfg.init_std), rngs.params(), (d, 2, f), pdt,
                            ('embed', None, 'mlp'))
    self.w_down = _param(_normal(out_std), rngs.params(), (f, d), pdt, ('mlp', 'embed'))

  def __call__(self, x_BxLxD, cos_BxLxDh2, sin_BxLxDh2, segment_ids_BxL, *, causal: bool,
               dropout_rng: jax.Array | None = None,
               cache: attention.LayerCache | None = None
               ) -> jax.Array | tuple[jax.Array, attention.LayerCache]:
    """x BxLxD -> BxLxD; with `cache`, (x, the cache with this call's keys and values)."""
    cfg = self.static
    dt = jnp.dtype(cfg.dtype)
    b, length, _ = x_BxLxD.shape
    k, g, dh = cfg.kv_heads, cfg.groups, cfg.dh
    rngs = [None] * 4 if dropout_rng is None else list(jax.random.split(dropout_rng, 4))

    h_NxD = self.attn_norm(x_BxLxD).reshape(b * length, -1)
    q_NxKxGxDh, k_NxKxDh, v_NxKxDh = fused.qkv_projection(h_NxD, self.w_qkv[...].astype(dt))
    q_BxLxHxDh = q_NxKxGxDh.reshape(b, length, k * g, dh)
    k_BxLxKxDh = k_NxKxDh.reshape(b, length, k, dh)
    v_BxLxKxDh = v_NxKxDh.reshape(b, length, k, dh)
    if cfg.qk_norm:
      q_BxLxHxDh, k_BxLxKxDh = self.q_norm(q_BxLxHxDh), self.k_norm(k_BxLxKxDh)
    q_BxLxHxDh = apply_rope(q_BxLxHxDh, cos_BxLxDh2, sin_BxLxDh2)
    k_BxLxKxDh = apply_rope(k_BxLxKxDh, cos_BxLxDh2, sin_BxLxDh2)
    if cache is None:
      o_BxLxHxDh = attention.attend(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, segment_ids_BxL,
                                    causal=causal, backend=cfg.attention,
                                    dropout_rate=cfg.attn_dropout, dropout_rng=rngs[0])
    else:
      cache = attention.write_cache(cache, k_BxLxKxDh, v_BxLxKxDh)
      o_BxLxHxDh = attention.attend_cache(q_BxLxHxDh, cache, segment_ids_BxL, causal=causal)
    o_BxLxHxDh = sharding.constrain(o_BxLxHxDh, ACT_BxLxHxDh)
    a_BxLxD = jnp.einsum('blhk,hkd->bld', o_BxLxHxDh, self.w_o[...].astype(dt))
    x_BxLxD = x_BxLxD + _dropout(a_BxLxD, cfg.resid_dropout, rngs[1])

    h_BxLxD = self.mlp_norm(x_BxLxD)
    if cfg.moe:
      m_BxLxD = self.moe(h_BxLxD, dropout_rng=rngs[2])
    else:
      m_BxLxD = self._swiglu(h_BxLxD, rngs[2])
    x_BxLxD = sharding.constrain(x_BxLxD + _dropout(m_BxLxD, cfg.resid_dropout, rngs[3]),
                                 ACT_BxLxD)
    return x_BxLxD if cache is None else (x_BxLxD, cache)

  def _swiglu(self, h_BxLxD: jax.Array, dropout_rng: jax.Array | None) -> jax.Array:
    """The dense MLP, BxLxD."""
    cfg = self.static
    dt = jnp.dtype(cfg.dtype)
    w_gate_up_Dx2xF = self.w_gate_up[...].astype(dt)
    w_down_FxD = self.w_down[...].astype(dt)
    if cfg.mlp_dropout > 0.0 and dropout_rng is not None:
      # Dropout sits between the two matmuls, where the hand-written backward has no slot.
      gu_BxLx2xF = jnp.einsum('bld,dcf->blcf', h_BxLxD, w_gate_up_Dx2xF)
      h_BxLxF = jax.nn.silu(gu_BxLx2xF[:, :, 0]) * gu_BxLx2xF[:, :, 1]
      h_BxLxF = _dropout(h_BxLxF, cfg.mlp_dropout, dropout_rng)
      return jnp.einsum('blf,fd->bld', h_BxLxF, w_down_FxD)
    b, length, _ = h_BxLxD.shape
    return fused.swiglu(h_BxLxD.reshape(b * length, -1), w_gate_up_Dx2xF,
                        w_down_FxD).reshape(h_BxLxD.shape)


class Transformer(nnx.Module):
  """Token ids -> float32 logits over the vocabulary; see the module docstring."""

  def __init__(self, cfg: ModelConfig, vocab_size: int, *, rngs: nnx.Rngs):
    pdt = jnp.dtype(cfg.param_dtype)
    self.static = _Static.of(cfg)
    self.vocab_size = vocab_size
    self.embed = _param(_normal(cfg.init_std), rngs.params(), (vocab_size, cfg.d_model), pdt,
                        ('vocab', 'embed'))
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, pdt, rngs=rngs)
    if not cfg.tie_embeddings:
      self.unembed = _param(_normal(cfg.init_std), rngs.params(), (cfg.d_model, vocab_size), pdt,
                            ('embed', 'vocab'))

  def __call__(self, tokens_BxL: jax.Array, segment_ids_BxL: jax.Array,
               positions_BxL: jax.Array, *, causal: bool,
               dropout_rng: jax.Array | None = None,
               cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    """float32 logits BxLxV; dropout (rates in the config) only when `dropout_rng` is given.

    With `cache` (generation): returns (logits, cache); the L tokens are written at the
    cache's next L slots and attend to every slot written so far (see `KVCache`).
    """
    out = self.hidden(tokens_BxL, segment_ids_BxL, positions_BxL, causal=causal,
                      dropout_rng=dropout_rng, cache=cache)
    x_BxLxD, cache = out if cache is not None else (out, None)
    logits_BxLxV = jnp.einsum('bld,dv->blv', x_BxLxD, self.unembedding().astype(x_BxLxD.dtype),
                              preferred_element_type=jnp.float32)
    logits_BxLxV = fused.suppress_logits(logits_BxLxV, self.never_predicted)
    logits_BxLxV = sharding.constrain(logits_BxLxV.astype(jnp.float32), ACT_BxLxV)
    return logits_BxLxV if cache is None else (logits_BxLxV, cache)

  def hidden(self, tokens_BxL: jax.Array, segment_ids_BxL: jax.Array,
             positions_BxL: jax.Array, *, causal: bool,
             dropout_rng: jax.Array | None = None,
             cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    """The final (normalised) hidden states BxLxD in the compute dtype (with `cache`: and the
    cache): the logits are `hidden @ unembedding()`. The training losses take this path into
    the fused cross-entropy (`fused.linear_cross_entropy`), which never holds BxLxV float32
    logits."""
    cfg = self.static
    dt = jnp.dtype(cfg.dtype)
    x_BxLxD = sharding.constrain(jnp.take(self.embed[...], tokens_BxL, axis=0).astype(dt),
                                 ACT_BxLxD)
    cos_BxLxDh2, sin_BxLxDh2 = rope_tables_once(positions_BxL, cfg.dh, cfg.rope_theta)

    def run_block(block, x_BxLxD, cos_BxLxDh2, sin_BxLxDh2, segment_ids_BxL, rng):
      return block(x_BxLxD, cos_BxLxDh2, sin_BxLxDh2, segment_ids_BxL, causal=causal,
                   dropout_rng=rng)

    if REMAT[cfg.remat] is not None:
      run_block = nnx.remat(run_block, policy=REMAT[cfg.remat])
    if cache is None:
      for i, block in enumerate(self.blocks):
        rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
        x_BxLxD = run_block(block, x_BxLxD, cos_BxLxDh2, sin_BxLxDh2, segment_ids_BxL, rng)
    else:
      x_BxLxD, cache = self._blocks_over_cache(x_BxLxD, cos_BxLxDh2, sin_BxLxDh2,
                                               segment_ids_BxL, causal=causal, cache=cache)
    x_BxLxD = self.final_norm(x_BxLxD)
    return x_BxLxD if cache is None else (x_BxLxD, cache)

  @property
  def never_predicted(self) -> tuple[int, ...]:
    """The ids whose output logits are suppressed (NEVER_PREDICTED within the vocabulary)."""
    return tuple(i for i in NEVER_PREDICTED if i < self.vocab_size)

  def unembedding(self) -> jax.Array:
    """The output projection DxV in the parameter dtype (the input embedding, transposed,
    when `tie_embeddings`)."""
    if self.static.tie_embeddings:
      return self.embed[...].T
    return self.unembed[...]

  def init_cache(self, batch: int, length: int) -> KVCache:
    """An empty cache of `length` slots per row for `batch` rows."""
    cfg = self.static
    shape = (batch, length, cfg.kv_heads, cfg.dh)
    zeros = lambda: tuple(jnp.zeros(shape, cfg.dtype) for _ in self.blocks)
    return KVCache(zeros(), zeros(), jnp.zeros((batch, length), jnp.int32),
                   jnp.zeros((), jnp.int32))

  def _blocks_over_cache(self, x_BxLxD, cos_BxLxDh2, sin_BxLxDh2, segment_ids_BxL, *,
                         causal: bool, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Every block over the cache (no dropout, no remat: inference only)."""
    segment_ids_BxS = jax.lax.dynamic_update_slice_in_dim(cache.segment_ids_BxS, segment_ids_BxL,
                                                          cache.index, axis=1)
    ks, vs = [], []
    for i, block in enumerate(self.blocks):
      layer = attention.LayerCache(cache.k[i], cache.v[i], segment_ids_BxS, cache.index)
      x_BxLxD, layer = block(x_BxLxD, cos_BxLxDh2, sin_BxLxDh2, segment_ids_BxL, causal=causal,
                             cache=layer)
      ks.append(layer.k_BxSxKxDh)
      vs.append(layer.v_BxSxKxDh)
    index = cache.index + segment_ids_BxL.shape[1]
    return x_BxLxD, KVCache(tuple(ks), tuple(vs), segment_ids_BxS, index)


def count_params(model: nnx.Module) -> int:
  """Number of parameter values (every nnx.Param, embeddings included)."""
  return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def apply(graphdef: nnx.GraphDef, state: nnx.State, tokens_BxL: jax.Array,
          segment_ids_BxL: jax.Array, positions_BxL: jax.Array, *, causal: bool,
          dropout_rng: jax.Array | None = None) -> jax.Array:
  """The pure form of `Transformer.__call__` for jitted steps: `graphdef, state = nnx.split(m)`."""
  return nnx.merge(graphdef, state)(tokens_BxL, segment_ids_BxL, positions_BxL, causal=causal,
                                    dropout_rng=dropout_rng)
