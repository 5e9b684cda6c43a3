"""Mixture-of-experts SwiGLU layer, used in place of the dense MLP when `model.num_experts > 0`.

    layer = MoE(cfg, rngs=nnx.Rngs(0))
    y_BxLxD = layer(x_BxLxD, dropout_rng=None)
    logits_BxLxV, stats = nnx.capture(model, nnx.Intermediate)(...)  # every layer's stats
    aux_loss, metrics = auxiliary_losses(stats, cfg.model)

Legend: B batch, L length, D d_model, N = B x L tokens, E experts, A experts per token
(active), M = N x A (token, expert) assignments, F expert d_ff, C capacity (slots per expert
per row), P expert-parallel shards (the `expert` mesh axis), El = E / P experts per shard.

Router. Float32 logits x W_r (HIGHEST precision: on TPU a default f32 matmul runs in bf16
passes, and routing decisions flip on small differences), a softmax over all E experts, then
the top A. Softmax-then-top-k (Switch, GShard, OLMoE), not top-k-then-softmax (Mixtral): the
gate of a chosen expert stays its probability among all experts, so the router learns from
the language-model loss even at A = 1 (a softmax over one chosen logit is the constant 1),
and the load-balancing loss reads the same probabilities. Gates are not renormalised.

Dispatch (`model.moe_dispatch`).
  * dropless (default): every assignment is computed. Assignments are sorted by expert and
    the experts run as a grouped matmul: `jax.lax.ragged_dot` on GPU and TPU (XLA's ragged-dot
    instruction, as in MaxText's sparse path). On CPU jax lowers ragged_dot to a dense masked
    product over all E groups (E x the FLOPs and an E x M x D temporary: a tiny MoE step took
    ~10 s), so there `grouped_matmul` pads each group to whole tiles of rows and runs one
    batched matmul with a weight per tile instead.
  * capacity: GShard/Switch dense dispatch. Each batch row is a group; an expert takes at most
    C = ceil(A x L x moe_capacity_factor / E) tokens of a row, in token order, and tokens past
    capacity are dropped (they pass through the block's residual connection unchanged).
    Priority by position keeps a causal model causal: whether token t is dropped depends only
    on tokens <= t of its row. Dispatch and combine are one-hot einsums.

Auxiliary losses, reported per layer with `sow` (only under `nnx.capture`, so plain calls,
evaluation and sampling leave the module untouched) and averaged over layers by
`auxiliary_losses`, which the objectives add to their loss (dlmjax/objectives/auxiliary.py):
  * load balance (Switch eq. 4, top-k form as in GShard/MaxText/HF):
    E x sum_e f_e P_e, f_e = share of tokens routed to e (sums to A), P_e = mean router
    probability of e; A for a uniform router, larger when tokens pile onto few experts.
    Weight `model.moe_lb_weight` (0.01: Switch, OLMoE).
  * router z-loss (ST-MoE): mean over tokens of logsumexp(logits)^2, keeps logits small.
    Weight `model.moe_z_weight` (0.001: ST-MoE, OLMoE).
Both are computed over the whole global batch (padding tokens included), so every mesh gives
the same value. Load metrics: max_load = the busiest expert's assignments over the mean
(1 = balanced), dropped = share of assignments over capacity (0 for dropless).

Expert parallelism. Expert weights carry the logical name 'expert' (-> the `expert` mesh axis,
which also splits the batch rows: outside the MoE layers it is one more data-parallel axis).
Under the trainer's mesh (`sharding.activation_mesh`, more than one device) the layer runs per
device in `jax.shard_map`: each device routes its own rows; with an expert axis of size P > 1
it holds El = E / P experts, sends each assignment to the shard holding its expert with one
`all_to_all`, runs its experts, and gets the results back with a second. Capacity dispatch
exchanges its fixed [E, C] slot buffers the same way (GShard). The statistics behind the
auxiliary losses are summed over the batch axes with psum. Dropless dispatch must reserve
room for every assignment landing on one shard, so its exchange buffers are P x the
balanced size (MaxText's ragged all-to-all has the same bound; `ragged_all_to_all` has no
CPU lowering, so a dense all_to_all carries the padding). docs/architecture.md has the
measurement that chose shard_map over letting XLA partition global arrays. Without a model
mesh (evaluation, `Run`, tests) the same code runs on global arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from dlmjax import sharding
from dlmjax.config import ModelConfig
from dlmjax.errors import ConfigError

# What each layer reports, in this order (one float32 vector per layer).
STATS = ('lb_loss', 'z_loss', 'max_load', 'dropped')
_SOW_NAME = 'moe_stats'


@dataclasses.dataclass(frozen=True)
class _Static:
  """The MoE settings the forward pass reads; frozen because it lands in the graphdef."""

  num_experts: int
  experts_per_token: int
  dispatch: str
  capacity_factor: float
  dtype: str
  dropout: float

  @classmethod
  def of(cls, cfg: ModelConfig) -> '_Static':
    return cls(num_experts=cfg.num_experts, experts_per_token=cfg.experts_per_token,
               dispatch=cfg.moe_dispatch, capacity_factor=cfg.moe_capacity_factor,
               dtype=cfg.dtype, dropout=cfg.mlp_dropout)


# ---------------------------------------------------------------------------------------
# Routing and the auxiliary losses.


class Routing(NamedTuple):
  experts_NxA: jax.Array  # int32, the chosen experts, best first
  gates_NxA: jax.Array  # float32, their router probabilities (softmax over all E)
  probs_NxE: jax.Array  # float32
  logits_NxE: jax.Array  # float32


def route(x_NxD: jax.Array, w_router_DxE: jax.Array, k: int) -> Routing:
  """Float32 softmax over all experts, then the top k (see the module docstring)."""
  logits_NxE = jnp.dot(x_NxD.astype(jnp.float32), w_router_DxE.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
  probs_NxE = jax.nn.softmax(logits_NxE, axis=-1)
  gates_NxA, experts_NxA = jax.lax.top_k(probs_NxE, k)
  return Routing(experts_NxA.astype(jnp.int32), gates_NxA, probs_NxE, logits_NxE)


def expert_counts(experts_NxA: jax.Array, num_experts: int) -> jax.Array:
  """float32 E: assignments per expert."""
  return jnp.zeros(num_experts, jnp.float32).at[experts_NxA.reshape(-1)].add(1.0)


def _balance(share_E: jax.Array, mean_prob_E: jax.Array) -> jax.Array:
  return share_E.shape[0] * jnp.sum(share_E * mean_prob_E)


def load_balance_loss(probs_NxE: jax.Array, experts_NxA: jax.Array) -> jax.Array:
  """E x sum_e f_e P_e (f_e: share of tokens sent to e, summing to A; P_e: mean probability).

  Equals A when every expert gets the same share and the same mean probability; the gradient
  reaches the router through P only (f is a count), pushing probability off busy experts.
  """
  n, e = probs_NxE.shape
  return _balance(expert_counts(experts_NxA, e) / n, probs_NxE.mean(axis=0))


def router_z_loss(logits_NxE: jax.Array) -> jax.Array:
  """Mean over tokens of logsumexp(logits)^2 (ST-MoE)."""
  return jnp.mean(jax.nn.logsumexp(logits_NxE, axis=-1) ** 2)


def layer_stats(r: Routing, dropped_count: jax.Array, *, batch_axes: tuple[str, ...] = ()
                ) -> jax.Array:
  """float32 [len(STATS)]: this layer's losses and load metrics over the global batch.

  Inside shard_map, `batch_axes` names the mesh axes the tokens are split over: the sums
  behind each statistic are added across them, so every mesh gives one device's numbers.
  """
  total = (lambda v: jax.lax.psum(v, batch_axes)) if batch_axes else (lambda v: v)
  n_tokens, e = r.probs_NxE.shape
  n = n_tokens * math.prod(jax.lax.axis_size(a) for a in batch_axes)
  counts_E = total(expert_counts(r.experts_NxA, e))
  mean_prob_E = total(r.probs_NxE.sum(axis=0)) / n
  z = total(jnp.sum(jax.nn.logsumexp(r.logits_NxE, axis=-1) ** 2)) / n
  dropped = total(dropped_count) / (n * r.experts_NxA.shape[1])
  return jnp.stack([_balance(counts_E / n, mean_prob_E), z, counts_E.max() / counts_E.mean(),
                    dropped.astype(jnp.float32)])


def auxiliary_losses(intermediates: nnx.State, cfg: ModelConfig) -> tuple[jax.Array | float, dict]:
  """(weighted auxiliary loss, metrics) from the MoE stats that `nnx.capture` collected.

  Losses and the dropped share are averaged over layers (so the weights do not depend on
  depth, as in MaxText); `moe_max_load` is the worst layer's. No MoE layer: (0.0, {}).
  """
  per_layer = [v.get_value() for path, v in nnx.to_flat_state(intermediates)
               if path[-1] == _SOW_NAME]
  if not per_layer:
    return 0.0, {}
  table = jnp.stack(per_layer)  # layers x STATS
  mean, worst = dict(zip(STATS, table.mean(axis=0))), dict(zip(STATS, table.max(axis=0)))
  metrics = {'moe_lb_loss': mean['lb_loss'], 'moe_z_loss': mean['z_loss'],
             'moe_max_load': worst['max_load'], 'moe_dropped': mean['dropped']}
  return cfg.moe_lb_weight * mean['lb_loss'] + cfg.moe_z_weight * mean['z_loss'], metrics


# ---------------------------------------------------------------------------------------
# The experts as a grouped matmul (dropless).


def _hidden_dropout(h: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
  if rate <= 0.0 or rng is None:
    return h
  keep = jax.random.bernoulli(rng, 1.0 - rate, h.shape)
  return jnp.where(keep, h / (1.0 - rate), 0.0).astype(h.dtype)


# Rows per tile of the CPU grouped matmul: each group is padded to a multiple of it.
_CPU_TILE = 128


def _tiled_grouped_matmul(x_MxK: jax.Array, w_GxKxN: jax.Array, group_sizes_G: jax.Array):
  """`jax.lax.ragged_dot` by tiles, for CPU (where jax lowers ragged_dot to a dense masked
  product over all G groups, G x the FLOPs and a G x M x K temporary). The sorted rows are
  scattered into tiles of T rows, each group padded to whole tiles, so that a tile holds one
  group; then one batched matmul with each tile's weight: (M + G T) x K x N FLOPs."""
  m, k = x_MxK.shape
  g, _, n = w_GxKxN.shape
  t = min(_CPU_TILE, m)
  num_tiles = -(-m // t) + g  # the padding adds at most T - 1 rows per group
  end_G = jnp.cumsum(group_sizes_G)
  padded_G = -(-group_sizes_G // t) * t
  padded_end_G = jnp.cumsum(padded_G)
  row_M = jnp.arange(m)
  group_M = jnp.searchsorted(end_G, row_M, side='right', method='compare_all')
  in_group_M = group_M < g  # rows past the last group belong to none: they stay zero
  gi_M = jnp.minimum(group_M, g - 1)
  dest_M = jnp.where(in_group_M, padded_end_G[gi_M] - padded_G[gi_M] + row_M
                     - (end_G[gi_M] - group_sizes_G[gi_M]), num_tiles * t)
  x_tiles = jnp.zeros((num_tiles * t, k), x_MxK.dtype).at[dest_M].set(x_MxK, mode='drop')
  tile_group = jnp.minimum(jnp.searchsorted(padded_end_G, jnp.arange(num_tiles) * t,
                                            side='right', method='compare_all'), g - 1)
  y_tiles = jnp.einsum('rtk,rkn->rtn', x_tiles.reshape(num_tiles, t, k), w_GxKxN[tile_group])
  return y_tiles.reshape(num_tiles * t, n).at[dest_M].get(mode='fill', fill_value=0)


def grouped_matmul(x_MxK: jax.Array, w_GxKxN: jax.Array, group_sizes_G: jax.Array) -> jax.Array:
  """Rows sorted by group; row m times the weight of its group, M x N (zeros past the last
  group). XLA's ragged dot on GPU and TPU, tiles on CPU."""
  return jax.lax.platform_dependent(x_MxK, w_GxKxN, group_sizes_G, cpu=_tiled_grouped_matmul,
                                    default=jax.lax.ragged_dot)


def grouped_swiglu(x_MxD: jax.Array, expert_M: jax.Array, w_gate_up_ExDx2xF: jax.Array,
                   w_down_ExFxD: jax.Array, *, dropout: float = 0.0,
                   dropout_rng: jax.Array | None = None) -> jax.Array:
  """Row m through the SwiGLU expert `expert_M[m]`, M x D. Rows whose id is >= E (padding)
  belong to no group and come out as zeros."""
  e, d, _, f = w_gate_up_ExDx2xF.shape
  order_M = jnp.argsort(expert_M, stable=True)
  group_sizes_E = jnp.zeros(e, jnp.int32).at[expert_M].add(1, mode='drop')
  xs_MxD = x_MxD[order_M]
  gu_Mx2F = grouped_matmul(xs_MxD, w_gate_up_ExDx2xF.reshape(e, d, 2 * f), group_sizes_E)
  h_MxF = jax.nn.silu(gu_Mx2F[:, :f]) * gu_Mx2F[:, f:]
  h_MxF = _hidden_dropout(h_MxF, dropout, dropout_rng)
  ys_MxD = grouped_matmul(h_MxF, w_down_ExFxD, group_sizes_E)
  # Scatter back to the input order (a permutation: each row is written once).
  return jnp.zeros_like(ys_MxD).at[order_M].set(ys_MxD, unique_indices=True)


def _combine(y_MxD: jax.Array, gates_NxA: jax.Array, dtype) -> jax.Array:
  """Sum over each token's A experts, weighted by their gates (float32 accumulation)."""
  n, a = gates_NxA.shape
  y_NxAxD = y_MxD.reshape(n, a, -1)
  return jnp.einsum('nad,na->nd', y_NxAxD, gates_NxA,
                    preferred_element_type=jnp.float32).astype(dtype)


def dropless(x_NxD, experts_NxA, gates_NxA, w_gate_up_ExDx2xF, w_down_ExFxD, *, dropout=0.0,
             dropout_rng=None) -> jax.Array:
  """Every assignment computed: N x D."""
  x_MxD = jnp.repeat(x_NxD, experts_NxA.shape[1], axis=0)  # row n A + j: token n, j-th expert
  y_MxD = grouped_swiglu(x_MxD, experts_NxA.reshape(-1), w_gate_up_ExDx2xF, w_down_ExFxD,
                         dropout=dropout, dropout_rng=dropout_rng)
  return _combine(y_MxD, gates_NxA, x_NxD.dtype)


# ---------------------------------------------------------------------------------------
# Capacity dispatch (GShard / Switch): dense one-hot einsums, one group per batch row.


def capacity(num_experts: int, k: int, length: int, factor: float) -> int:
  """Slots per expert per row: ceil(k L factor / E), at least 1 and at most L."""
  return max(1, min(length, math.ceil(k * length * factor / num_experts)))


def dispatch_masks(experts_BxLxA: jax.Array, gates_BxLxA: jax.Array, num_experts: int,
                   cap: int) -> tuple[jax.Array, jax.Array]:
  """(dispatch bool BxLxExC, combine float32 BxLxExC). Slot c of expert e in row b holds the
  c-th token of the row (in position order) that chose e; tokens past `cap` get no slot."""
  chose_BxLxAxE = jax.nn.one_hot(experts_BxLxA, num_experts, dtype=jnp.int32)
  chose_BxLxE = chose_BxLxAxE.sum(axis=2)  # a token picks an expert at most once
  gate_BxLxE = jnp.einsum('blae,bla->ble', chose_BxLxAxE.astype(jnp.float32), gates_BxLxA)
  slot_BxLxE = jnp.cumsum(chose_BxLxE, axis=1) - 1
  # one_hot of a slot >= cap (or of -1, not chosen) is all zeros: the token is not dispatched.
  dispatch_BxLxExC = jax.nn.one_hot(jnp.where(chose_BxLxE > 0, slot_BxLxE, -1), cap,
                                    dtype=jnp.bool_)
  return dispatch_BxLxExC, dispatch_BxLxExC * gate_BxLxE[..., None]


def _expert_swiglu(x_GxExCxD, w_gate_up_ExDx2xF, w_down_ExFxD, dropout, dropout_rng):
  """Each expert on its own slots: G x E x C x D."""
  gu_GxExCx2xF = jnp.einsum('gecd,edtf->gectf', x_GxExCxD, w_gate_up_ExDx2xF)
  h_GxExCxF = jax.nn.silu(gu_GxExCx2xF[..., 0, :]) * gu_GxExCx2xF[..., 1, :]
  h_GxExCxF = _hidden_dropout(h_GxExCxF, dropout, dropout_rng)
  return jnp.einsum('gecf,efd->gecd', h_GxExCxF, w_down_ExFxD)


def capacity_dispatch(x_BxLxD, experts_BxLxA, gates_BxLxA, w_gate_up_ExDx2xF, w_down_ExFxD, *,
                      capacity_factor: float, dropout=0.0, dropout_rng=None,
                      expert_axis: str | None = None) -> jax.Array:
  """B x L x D. With `expert_axis` (inside shard_map) the weights hold this shard's El experts
  and the slots travel to them and back by all_to_all."""
  k, length = experts_BxLxA.shape[-1], x_BxLxD.shape[1]
  e = w_gate_up_ExDx2xF.shape[0] * (jax.lax.axis_size(expert_axis) if expert_axis else 1)
  dispatch_BxLxExC, combine_BxLxExC = dispatch_masks(
      experts_BxLxA, gates_BxLxA, e, capacity(e, k, length, capacity_factor))
  x_BxExCxD = jnp.einsum('blec,bld->becd', dispatch_BxLxExC.astype(x_BxLxD.dtype), x_BxLxD)
  if expert_axis:
    # [B, E, C, D] -> [P x B, El, C, D]: each shard gets every row's slots for its experts.
    x_BxExCxD = jax.lax.all_to_all(x_BxExCxD, expert_axis, 1, 0, tiled=True)
  y_BxExCxD = _expert_swiglu(x_BxExCxD, w_gate_up_ExDx2xF, w_down_ExFxD, dropout, dropout_rng)
  if expert_axis:
    y_BxExCxD = jax.lax.all_to_all(y_BxExCxD, expert_axis, 0, 1, tiled=True)
  return jnp.einsum('blec,becd->bld', combine_BxLxExC, y_BxExCxD,
                    preferred_element_type=jnp.float32).astype(x_BxLxD.dtype)


def dropped_count(experts_BxLxA: jax.Array, num_experts: int, capacity_factor: float) -> jax.Array:
  """Assignments that capacity dispatch drops: sum over rows and experts of
  max(0, tokens of the row choosing e - C)."""
  _, length, k = experts_BxLxA.shape
  cap = capacity(num_experts, k, length, capacity_factor)
  counts_BxE = jax.vmap(lambda e_LxA: expert_counts(e_LxA, num_experts))(experts_BxLxA)
  return jnp.maximum(counts_BxE - cap, 0.0).sum()


# ---------------------------------------------------------------------------------------
# Expert parallelism: dropless dispatch by all_to_all.


def dropless_all_to_all(x_NxD, experts_NxA, gates_NxA, w_gate_up_ElxDx2xF, w_down_ElxFxD, *,
                        expert_axis: str, dropout=0.0, dropout_rng=None) -> jax.Array:
  """Inside shard_map: this device's N tokens, this shard's El experts; N x D.

  Each assignment goes to the shard that holds its expert, in a [P, M] send buffer: row
  (s, i) is the i-th assignment bound for shard s. With static shapes and no drops, a
  destination must have room for all M assignments (they may all choose one shard), so the
  buffers are P x M rows where M would do on average: the price of dropless dispatch
  without a ragged all-to-all (`jax.lax.ragged_all_to_all` has no CPU lowering).
  """
  n, a = experts_NxA.shape
  m, d = n * a, x_NxD.shape[-1]
  p, el = jax.lax.axis_size(expert_axis), w_gate_up_ElxDx2xF.shape[0]
  expert_M = experts_NxA.reshape(-1)
  dest_M = expert_M // el
  to_dest_MxP = jax.nn.one_hot(dest_M, p, dtype=jnp.int32)
  slot_M = jnp.sum((jnp.cumsum(to_dest_MxP, axis=0) - 1) * to_dest_MxP, axis=1)
  x_MxD = jnp.repeat(x_NxD, a, axis=0)
  send_PxMxD = jnp.zeros((p, m, d), x_NxD.dtype).at[dest_M, slot_M].set(x_MxD, unique_indices=True)
  # Empty slots carry expert id El: no local expert, so the grouped matmul leaves them zero.
  send_id_PxM = jnp.full((p, m), el, jnp.int32).at[dest_M, slot_M].set(expert_M % el,
                                                                       unique_indices=True)
  recv_PxMxD = jax.lax.all_to_all(send_PxMxD, expert_axis, 0, 0, tiled=True)
  recv_id_PxM = jax.lax.all_to_all(send_id_PxM, expert_axis, 0, 0, tiled=True)
  y_PMxD = grouped_swiglu(recv_PxMxD.reshape(p * m, d), recv_id_PxM.reshape(-1),
                          w_gate_up_ElxDx2xF, w_down_ElxFxD, dropout=dropout,
                          dropout_rng=dropout_rng)
  back_PxMxD = jax.lax.all_to_all(y_PMxD.reshape(p, m, d), expert_axis, 0, 0, tiled=True)
  return _combine(back_PxMxD[dest_M, slot_M], gates_NxA, x_NxD.dtype)


def _moe(x_BxLxD, w_router_DxE, w_gate_up, w_down, dropout_rng, *, s: _Static,
         expert_axis: str | None = None, batch_axes: tuple[str, ...] = ()):
  """(B x L x D, layer stats) for the tokens and experts at hand: all of them, or inside
  shard_map this device's rows and this shard's experts."""
  b, length, d = x_BxLxD.shape
  a = s.experts_per_token
  r = route(x_BxLxD.reshape(b * length, d), w_router_DxE, a)
  experts_BxLxA, gates_BxLxA = r.experts_NxA.reshape(b, length, a), r.gates_NxA.reshape(b, length, a)
  if batch_axes and dropout_rng is not None:
    # Devices hold different tokens: give each its own dropout stream.
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(batch_axes))
  drop = dict(dropout=s.dropout, dropout_rng=dropout_rng)
  if s.dispatch == 'capacity':
    y_BxLxD = capacity_dispatch(x_BxLxD, experts_BxLxA, gates_BxLxA, w_gate_up, w_down,
                                capacity_factor=s.capacity_factor, expert_axis=expert_axis,
                                **drop)
    dropped = dropped_count(experts_BxLxA, s.num_experts, s.capacity_factor)
  else:
    fn = (functools.partial(dropless_all_to_all, expert_axis=expert_axis) if expert_axis
          else dropless)
    y_BxLxD = fn(x_BxLxD.reshape(b * length, d), r.experts_NxA, r.gates_NxA, w_gate_up, w_down,
                 **drop).reshape(b, length, d)
    dropped = jnp.zeros((), jnp.float32)
  return y_BxLxD, layer_stats(r, dropped, batch_axes=batch_axes)


def moe_forward(x_BxLxD, w_router_DxE, w_gate_up_ExDx2xF, w_down_ExFxD, dropout_rng,
                s: _Static) -> tuple[jax.Array, jax.Array]:
  """(B x L x D, layer stats). Under the trainer's mesh (`sharding.activation_mesh`) whose batch
  axes split the rows, routing and dispatch run per device in `jax.shard_map`: rows stay where
  the batch sharding put them (routed on global arrays, a sharded batch makes XLA gather every
  token's probabilities for top_k), and with an expert axis of size P > 1 each device holds
  E / P experts and exchanges tokens by all_to_all."""
  args = (x_BxLxD, w_router_DxE, w_gate_up_ExDx2xF, w_down_ExFxD, dropout_rng)
  mesh = sharding.current_model_mesh()
  if mesh is None:
    return _moe(*args, s=s)
  axis = sharding.LOGICAL_RULES['expert']
  ep = mesh.shape.get(axis, 1)
  rows = sharding.logical_to_spec(('batch', None, None), x_BxLxD.shape, mesh)
  batch_axes = () if rows[0] is None else (rows[0] if isinstance(rows[0], tuple) else (rows[0],))
  if ep > 1 and s.num_experts % ep:
    raise ConfigError(f"config key 'model.num_experts': {s.num_experts} experts do not divide "
                      f'over the {ep} shards of the expert mesh axis')
  if ep > 1 and axis not in batch_axes:
    raise ConfigError(f'expert parallelism needs the batch ({x_BxLxD.shape[0]} rows) to divide '
                      f'over the mesh axes {sharding.LOGICAL_RULES["batch"]} ({dict(mesh.shape)})')
  if not batch_axes:
    return _moe(*args, s=s)
  experts = lambda w: sharding.logical_to_spec(('expert',) + (None,) * (w.ndim - 1), w.shape, mesh)
  fn = functools.partial(_moe, s=s, expert_axis=axis if ep > 1 else None, batch_axes=batch_axes)
  return jax.shard_map(fn, mesh=mesh,
                       in_specs=(rows, P(), experts(w_gate_up_ExDx2xF), experts(w_down_ExFxD), P()),
                       out_specs=(rows, P()))(*args)


# ---------------------------------------------------------------------------------------
# The layer.


def _keep_last(_, new):
  return new


class MoE(nnx.Module):
  """Router + E SwiGLU experts; see the module docstring. Parameters: w_router [D, E],
  w_gate_up [E, D, 2, F] (gate and up fused, as in the dense block), w_down [E, F, D]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, e, f = cfg.d_model, cfg.num_experts, cfg.moe_d_ff or cfg.d_ff
    pdt = jnp.dtype(cfg.param_dtype)
    out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)  # as the dense block's w_down
    param = lambda std, shape, names: nnx.Param(
        jax.nn.initializers.normal(std)(rngs.params(), shape, pdt), out_sharding=names,
        eager_sharding=False)
    self.static = _Static.of(cfg)
    self.w_router = param(cfg.init_std, (d, e), ('embed', None))
    self.w_gate_up = param(cfg.init_std, (e, d, 2, f), ('expert', 'embed', None, 'mlp'))
    self.w_down = param(out_std, (e, f, d), ('expert', 'mlp', 'embed'))

  def __call__(self, x_BxLxD: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
    """B x L x D; dropout (rate `model.mlp_dropout`) on the experts' hidden activations."""
    dt = jnp.dtype(self.static.dtype)
    y_BxLxD, stats = moe_forward(x_BxLxD, self.w_router[...], self.w_gate_up[...].astype(dt),
                                 self.w_down[...].astype(dt), dropout_rng, self.static)
    # Reported only when a caller collects them (nnx.capture): plain calls stay pure, and
    # unused, the statistics are dead code to XLA.
    if hasattr(self, '__captures__'):
      self.sow(nnx.Intermediate, _SOW_NAME, stats, reduce_fn=_keep_last, init_fn=lambda: None)
    return y_BxLxD
