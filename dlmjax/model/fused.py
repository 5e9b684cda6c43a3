"""Fused projections with hand-written backward passes: the q/k/v projection, SwiGLU and
the output projection with the cross-entropy.

    q_NxKxGxDh, k_NxKxDh, v_NxKxDh = qkv_projection(x_NxD, w_qkv_DxKxSxDh)
    y_NxD = swiglu(x_NxD, w_gate_up_Dx2xF, w_down_FxD)
    loss, ce_BxL = linear_cross_entropy(h_BxLxD, w_DxV, targets_BxL, weights_BxL, num_chunks=C,
                                        never_predicted=(0, 1, 3))

Legend: N tokens (batch x length, flattened), D d_model, K kv heads, G query heads per kv
head, S = G + 2 slots per kv head (G queries, then the key, then the value), Dh head dim,
F d_ff, B batch rows, L length, T = L / C positions per chunk, V vocabulary.

Why custom VJPs: each projection is one wide matmul whose output is then sliced (q/k/v,
gate/up). Under autodiff the slices' transpose is a zero-pad of every piece plus adds, and
the weight gradient then transposes the whole wide output gradient (N x 2F, N x S*K*Dh). On
CPU those copies cost more than the matmuls they feed: with both VJPs the fwd+bwd step of the
tiny preset (B 32, L 128) went from ~160 to ~130 ms. The q/k/v backward writes its wide
gradient once (a concatenate); SwiGLU's runs the gate and up halves through their own
products instead (no N x 2F concatenation), and every weight-gradient contraction is
ordered so that only the narrow N x D operand needs transposing.

SwiGLU also keeps only x and the N x 2F gate/up product for the backward pass; silu(gate) * up
is recomputed there, in the same fused loop that computes the gradients, instead of holding
another N x F array across the step. The `*_reference` functions are the same maps through
plain autodiff, the oracles the tests compare against.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------------------
# q/k/v projection.


@jax.custom_vjp
def qkv_projection(x_NxD: jax.Array, w_qkv_DxKxSxDh: jax.Array):
  """(q N x K x G x Dh, k N x K x Dh, v N x K x Dh) from one matmul."""
  return _qkv_forward(x_NxD, w_qkv_DxKxSxDh)[0]


def _split_qkv(qkv_NxKxSxDh):
  g = qkv_NxKxSxDh.shape[2] - 2
  return qkv_NxKxSxDh[:, :, :g], qkv_NxKxSxDh[:, :, g], qkv_NxKxSxDh[:, :, g + 1]


def _qkv_forward(x_NxD, w_qkv_DxKxSxDh):
  qkv_NxKxSxDh = jnp.einsum('nd,dksh->nksh', x_NxD, w_qkv_DxKxSxDh)
  return _split_qkv(qkv_NxKxSxDh), (x_NxD, w_qkv_DxKxSxDh)


def _qkv_backward(residuals, cotangents):
  x_NxD, w_qkv_DxKxSxDh = residuals
  dq_NxKxGxDh, dk_NxKxDh, dv_NxKxDh = cotangents
  dqkv_NxKxSxDh = jnp.concatenate([dq_NxKxGxDh, dk_NxKxDh[:, :, None], dv_NxKxDh[:, :, None]],
                                  axis=2)
  dw_DxKxSxDh = jnp.einsum('nd,nksh->dksh', x_NxD, dqkv_NxKxSxDh)
  dx_NxD = jnp.einsum('nksh,dksh->nd', dqkv_NxKxSxDh, w_qkv_DxKxSxDh)
  return dx_NxD, dw_DxKxSxDh


qkv_projection.defvjp(_qkv_forward, _qkv_backward)


def qkv_projection_reference(x_NxD: jax.Array, w_qkv_DxKxSxDh: jax.Array):
  return _split_qkv(jnp.einsum('nd,dksh->nksh', x_NxD, w_qkv_DxKxSxDh))


# ---------------------------------------------------------------------------------------
# SwiGLU MLP.


@jax.custom_vjp
def swiglu(x_NxD: jax.Array, w_gate_up_Dx2xF: jax.Array, w_down_FxD: jax.Array) -> jax.Array:
  """silu(x W_gate) * (x W_up) W_down, N x D; all operands in one (compute) dtype."""
  return _swiglu_forward(x_NxD, w_gate_up_Dx2xF, w_down_FxD)[0]


def _swiglu_forward(x_NxD, w_gate_up_Dx2xF, w_down_FxD):
  d, _, f = w_gate_up_Dx2xF.shape
  gu_Nx2F = x_NxD @ w_gate_up_Dx2xF.reshape(d, 2 * f)
  h_NxF = jax.nn.silu(gu_Nx2F[:, :f]) * gu_Nx2F[:, f:]
  return h_NxF @ w_down_FxD, (x_NxD, gu_Nx2F, w_gate_up_Dx2xF, w_down_FxD)


def _swiglu_backward(residuals, dy_NxD):
  x_NxD, gu_Nx2F, w_gate_up_Dx2xF, w_down_FxD = residuals
  a_NxF, u_NxF = jnp.split(gu_Nx2F, 2, axis=1)
  sig_NxF = jax.nn.sigmoid(a_NxF)
  silu_NxF = a_NxF * sig_NxF
  h_NxF = silu_NxF * u_NxF
  # Computed as D x F and then transposed: XLA folds a plain transpose into the dot, and the
  # F x D form of this N-contraction ran ~1.5x slower on CPU (11.3 vs 7.5 ms CPU time at
  # N 4096, D 128, F 512). The barrier keeps the transpose where it is.
  dw_down_FxD = jax.lax.optimization_barrier(jnp.einsum('nd,nf->df', dy_NxD, h_NxF)).T
  dh_NxF = dy_NxD @ w_down_FxD.T
  # d silu(a) / da = sig(a) (1 + a (1 - sig(a))) = sig + silu (1 - sig)
  da_NxF = dh_NxF * u_NxF * (sig_NxF + silu_NxF * (1 - sig_NxF))
  du_NxF = dh_NxF * silu_NxF
  # Gate and up halves go through their own products rather than one over a concatenated
  # N x 2F gradient: the concatenation was a full extra pass over N x 2F values.
  w_gate_DxF, w_up_DxF = w_gate_up_Dx2xF[:, 0], w_gate_up_Dx2xF[:, 1]
  dw_gate_up_Dx2xF = jnp.stack([jnp.einsum('nd,nf->df', x_NxD, da_NxF),
                                jnp.einsum('nd,nf->df', x_NxD, du_NxF)], axis=1)
  dx_NxD = da_NxF @ w_gate_DxF.T + du_NxF @ w_up_DxF.T
  return dx_NxD, dw_gate_up_Dx2xF, dw_down_FxD


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


def swiglu_reference(x_NxD: jax.Array, w_gate_up_Dx2xF: jax.Array,
                     w_down_FxD: jax.Array) -> jax.Array:
  gu_Nx2xF = jnp.einsum('nd,dcf->ncf', x_NxD, w_gate_up_Dx2xF)
  return (jax.nn.silu(gu_Nx2xF[:, 0]) * gu_Nx2xF[:, 1]) @ w_down_FxD


# ---------------------------------------------------------------------------------------
# Output projection fused with the cross-entropy (the loss path; logits never held).


def ce_chunks(length: int, vocab_size: int, rows: int, chunk_tokens: int = 0) -> int:
  """How many chunks along the sequence `linear_cross_entropy` splits a BxL batch into.

  `chunk_tokens` > 0 asks for about that many tokens (B x chunk length) per chunk; 0 picks
  chunks whose float32 logits take at most ~256 MiB (one chunk for the CPU presets). The
  count always divides `length`.
  """
  per_chunk = chunk_tokens or max((256 << 20) // (4 * vocab_size), 1)
  want = max(1, -(-rows * length // per_chunk))  # ceil(tokens / per_chunk)
  return next(c for c in range(min(want, length), length + 1) if length % c == 0)


def linear_cross_entropy(h_BxLxD: jax.Array, w_DxV: jax.Array, targets_BxL: jax.Array,
                         weights_BxL: jax.Array, *, num_chunks: int = 1,
                         never_predicted: tuple[int, ...] = ()):
  """(sum of weights x CE, float32 scalar; CE float32 BxL, no gradient) of logits h @ w.

  CE is -log softmax(h @ w)[target] at every position, computed in float32 from a product
  in h's dtype with float32 accumulation (w is cast to h's dtype, as the model's own output
  projection does). Only the weighted sum carries a gradient; the objectives put everything
  that depends on the batch (masks, 1/t, normalisation) into `weights_BxL`. The logits of
  the vocabulary ids in `never_predicted` are set to `SUPPRESSED` (`suppress_logits`): they
  get no probability and no gradient.
  """
  loss, ce_BxL = _linear_ce(h_BxLxD, w_DxV, targets_BxL, weights_BxL.astype(jnp.float32),
                            num_chunks, tuple(never_predicted))
  return loss, jax.lax.stop_gradient(ce_BxL)


# Finite, not -inf: a suppressed id at a padding position (weight 0) then has a large CE
# times 0 = 0, where -inf would give inf x 0 = NaN; exp(-1e9 - lse) is exactly 0 in float32.
SUPPRESSED = -1e9


def suppress_logits(logits_BxLxV: jax.Array, never_predicted: tuple[int, ...]) -> jax.Array:
  """The logits with the ids in `never_predicted` set to SUPPRESSED (MDLM's -inf on the mask
  logit, for every id that is never a target: padding, BOS, the mask)."""
  if not never_predicted:
    return logits_BxLxV
  return logits_BxLxV.at[..., jnp.asarray(never_predicted)].set(SUPPRESSED)


def _chunked(x_BxLx, num_chunks):
  """BxLx... -> C x B x (L/C) x ...: chunks along the sequence, so a batch sharding of B
  stays where it is."""
  b, length = x_BxLx.shape[:2]
  x = x_BxLx.reshape(b, num_chunks, length // num_chunks, *x_BxLx.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _unchunked(x_CxBxTx):
  c, b, t = x_CxBxTx.shape[:3]
  return jnp.moveaxis(x_CxBxTx, 0, 1).reshape(b, c * t, *x_CxBxTx.shape[3:])


def _chunk_ce(h_BxTxD, w_DxV, targets_BxT, never_predicted):
  """float32 logits, logsumexp and CE of one chunk."""
  logits_BxTxV = suppress_logits(
      jnp.einsum('btd,dv->btv', h_BxTxD, w_DxV.astype(h_BxTxD.dtype),
                 preferred_element_type=jnp.float32), never_predicted)
  lse_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
  target_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return logits_BxTxV, lse_BxT, lse_BxT - target_BxT


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _linear_ce(h_BxLxD, w_DxV, targets_BxL, weights_BxL, num_chunks, never_predicted):
  if num_chunks == 1:
    ce_BxL = _chunk_ce(h_BxLxD, w_DxV, targets_BxL, never_predicted)[2]
  else:
    ce_CxBxT = jax.lax.map(lambda a: _chunk_ce(a[0], w_DxV, a[1], never_predicted)[2],
                           (_chunked(h_BxLxD, num_chunks), _chunked(targets_BxL, num_chunks)))
    ce_BxL = _unchunked(ce_CxBxT)
  return (weights_BxL * ce_BxL).sum(), ce_BxL


def _linear_ce_forward(h_BxLxD, w_DxV, targets_BxL, weights_BxL, num_chunks, never_predicted):
  # The loss is a weighted sum, so its gradient is known up to the one scalar cotangent:
  # compute it here, chunk by chunk, while each chunk's logits exist, and let the backward
  # pass only scale it (Liger-Kernel's fused linear cross-entropy does the same). Nothing
  # of size [B, L, V] outlives its chunk, and no logit is computed twice.
  dt = h_BxLxD.dtype
  w_c = w_DxV.astype(dt)

  def chunk(dw_DxV, xs):
    h_BxTxD, targets_BxT, weights_BxT = xs
    logits_BxTxV, lse_BxT, ce_BxT = _chunk_ce(h_BxTxD, w_DxV, targets_BxT, never_predicted)
    p_BxTxV = jnp.exp(logits_BxTxV - lse_BxT[..., None])
    onehot_BxTxV = jax.nn.one_hot(targets_BxT, p_BxTxV.shape[-1], dtype=jnp.bool_)
    dlogits_BxTxV = (weights_BxT[..., None] * jnp.where(onehot_BxTxV, p_BxTxV - 1.0, p_BxTxV)
                     ).astype(dt)
    dh_BxTxD = jnp.einsum('btv,dv->btd', dlogits_BxTxV, w_c,
                          preferred_element_type=jnp.float32).astype(dt)
    dw_DxV = dw_DxV + jnp.einsum('btd,btv->dv', h_BxTxD, dlogits_BxTxV,
                                 preferred_element_type=jnp.float32)
    return dw_DxV, (dh_BxTxD, ce_BxT)

  dw0_DxV = jnp.zeros(w_DxV.shape, jnp.float32)
  if num_chunks == 1:
    dw_DxV, (dh_BxLxD, ce_BxL) = chunk(dw0_DxV, (h_BxLxD, targets_BxL, weights_BxL))
  else:
    xs = tuple(_chunked(a, num_chunks) for a in (h_BxLxD, targets_BxL, weights_BxL))
    dw_DxV, (dh_CxBxTxD, ce_CxBxT) = jax.lax.scan(chunk, dw0_DxV, xs)
    dh_BxLxD, ce_BxL = _unchunked(dh_CxBxTxD), _unchunked(ce_CxBxT)
  loss = (weights_BxL * ce_BxL).sum()
  return (loss, ce_BxL), (dh_BxLxD, dw_DxV.astype(w_DxV.dtype), ce_BxL)


def _linear_ce_backward(num_chunks, never_predicted, residuals, cotangents):
  del num_chunks, never_predicted
  dh_BxLxD, dw_DxV, ce_BxL = residuals
  g_loss, _ = cotangents  # CE is returned without gradient (stop_gradient in the wrapper)
  return ((g_loss * dh_BxLxD).astype(dh_BxLxD.dtype), (g_loss * dw_DxV).astype(dw_DxV.dtype),
          None, g_loss * ce_BxL)


_linear_ce.defvjp(_linear_ce_forward, _linear_ce_backward)


def linear_cross_entropy_reference(h_BxLxD, w_DxV, targets_BxL, weights_BxL,
                                   never_predicted=()):
  logits_BxLxV = jnp.einsum('bld,dv->blv', h_BxLxD, w_DxV.astype(h_BxLxD.dtype),
                            preferred_element_type=jnp.float32)
  logits_BxLxV = jnp.where(jnp.isin(jnp.arange(logits_BxLxV.shape[-1]),
                                    jnp.asarray(never_predicted, jnp.int32)),
                           SUPPRESSED, logits_BxLxV)
  target_BxL = jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], axis=-1)[..., 0]
  ce_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1) - target_BxL
  return (weights_BxL * ce_BxL).sum(), jax.lax.stop_gradient(ce_BxL)
