"""Fused projections with hand-written backward passes: the q/k/v projection and SwiGLU.

    q_NxKxGxDh, k_NxKxDh, v_NxKxDh = qkv_projection(x_NxD, w_qkv_DxKxSxDh)
    y_NxD = swiglu(x_NxD, w_gate_up_Dx2xF, w_down_FxD)

Legend: N tokens (batch x length, flattened), D d_model, K kv heads, G query heads per kv
head, S = G + 2 slots per kv head (G queries, then the key, then the value), Dh head dim,
F d_ff.

Why custom VJPs: each projection is one wide matmul whose output is then sliced (q/k/v,
gate/up). Under autodiff the slices' transpose is a zero-pad of every piece plus adds, and
the weight gradient then transposes the whole wide output gradient (N x 2F, N x S*K*Dh). On
CPU those copies cost more than the matmuls they feed: with both VJPs the fwd+bwd step of the
tiny preset (B 32, L 128) went from ~160 to ~130 ms. The backward passes below write each
wide gradient once (a concatenate) and order every weight-gradient contraction so that only
the narrow N x D operand needs transposing.

SwiGLU also keeps only x and the N x 2F gate/up product for the backward pass; silu(gate) * up
is recomputed there, in the same fused loop that computes the gradients, instead of holding
another N x F array across the step. The `*_reference` functions are the same maps through
plain autodiff, the oracles the tests compare against.
"""

from __future__ import annotations

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
  d, _, f = w_gate_up_Dx2xF.shape
  a_NxF, u_NxF = gu_Nx2F[:, :f], gu_Nx2F[:, f:]
  sig_NxF = jax.nn.sigmoid(a_NxF)
  silu_NxF = a_NxF * sig_NxF
  h_NxF = silu_NxF * u_NxF
  dw_down_FxD = jnp.einsum('nf,nd->fd', h_NxF, dy_NxD)
  dh_NxF = dy_NxD @ w_down_FxD.T
  # d silu(a) / da = sig(a) (1 + a (1 - sig(a))) = sig + silu (1 - sig)
  da_NxF = dh_NxF * u_NxF * (sig_NxF + silu_NxF * (1 - sig_NxF))
  du_NxF = dh_NxF * silu_NxF
  dgu_Nx2F = jnp.concatenate([da_NxF, du_NxF], axis=1)
  dw_gate_up_Dx2xF = jnp.einsum('nd,nc->dc', x_NxD, dgu_Nx2F).reshape(d, 2, f)
  dx_NxD = dgu_Nx2F @ w_gate_up_Dx2xF.reshape(d, 2 * f).T
  return dx_NxD, dw_gate_up_Dx2xF, dw_down_FxD


swiglu.defvjp(_swiglu_forward, _swiglu_backward)


def swiglu_reference(x_NxD: jax.Array, w_gate_up_Dx2xF: jax.Array,
                     w_down_FxD: jax.Array) -> jax.Array:
  gu_Nx2xF = jnp.einsum('nd,dcf->ncf', x_NxD, w_gate_up_Dx2xF)
  return (jax.nn.silu(gu_Nx2xF[:, 0]) * gu_Nx2xF[:, 1]) @ w_down_FxD
