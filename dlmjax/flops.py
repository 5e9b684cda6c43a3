"""Parameter and FLOP counts from the model config alone (no model is built).

Training FLOPs per token follow the PaLM appendix-B convention that MaxText and nanodo use:
6 x (non-embedding matmul parameters, output head included) for the forward and backward
matmuls, plus 12 x n_layers x L x (n_heads x head_dim) for the attention scores and the
weighted sum. Causal attention is counted in full (as PaLM does), so AR and MDM runs of the
same shape cost the same FLOPs per token and their compute compares directly.

Mixture of experts: FLOPs count the active parameters (the router and the A experts a token
runs), `num_params` every expert. The dispatch itself (sorting, the capacity path's one-hot
einsums) is not counted, as MaxText does not.
"""

from __future__ import annotations

from dlmjax.config import ModelConfig


def _mlp_params(m: ModelConfig, active: bool) -> int:
  """One layer's MLP: SwiGLU, or the router plus all experts (or the A a token runs)."""
  if not m.num_experts:
    return 3 * m.d_model * m.d_ff
  experts = m.experts_per_token if active else m.num_experts
  return m.d_model * m.num_experts + experts * 3 * m.d_model * (m.moe_d_ff or m.d_ff)


def matmul_params(m: ModelConfig, vocab_size: int, *, active: bool = True) -> int:
  """Parameters that multiply activations: attention, MLP and the output head (for MoE, only
  the experts a token runs, unless `active=False`)."""
  d, dh, h, k = m.d_model, m.dh, m.n_heads, m.kv_heads
  attn = d * (h + 2 * k) * dh + h * dh * d
  return m.n_layers * (attn + _mlp_params(m, active)) + d * vocab_size


def num_params(m: ModelConfig, vocab_size: int, *, active: bool = False) -> int:
  """All parameters: matmuls (every expert), input embedding (unless tied) and norms;
  `active=True`: only those one token uses (the same for a dense model)."""
  norms = m.n_layers * 2 * m.d_model + m.d_model
  if m.qk_norm:
    norms += m.n_layers * 2 * m.dh
  embed = 0 if m.tie_embeddings else vocab_size * m.d_model
  return matmul_params(m, vocab_size, active=active) + embed + norms


def train_flops_per_token(m: ModelConfig, vocab_size: int, seq_len: int) -> float:
  """Forward + backward FLOPs per token of a training step."""
  attention = 12 * m.n_layers * seq_len * m.n_heads * m.dh
  return 6.0 * matmul_params(m, vocab_size) + attention


def forward_flops_per_token(m: ModelConfig, vocab_size: int, seq_len: int) -> float:
  """Forward-only FLOPs per token (evaluation, sampling)."""
  return train_flops_per_token(m, vocab_size, seq_len) / 3.0


# Dense peak FLOP/s per chip from the vendors' data sheets, by jax `device_kind` prefix; the
# first matching prefix wins, so the PCIe and NVL cards come before the SXM ones.
PEAK_FLOPS = {
    'NVIDIA H100 PCIe': {'bfloat16': 756e12, 'float32': 51e12},
    'NVIDIA H100 NVL': {'bfloat16': 835e12, 'float32': 60e12},
    'NVIDIA H200 NVL': {'bfloat16': 835e12, 'float32': 60e12},
    'NVIDIA H100': {'bfloat16': 989e12, 'float32': 67e12},
    'NVIDIA H200': {'bfloat16': 989e12, 'float32': 67e12},
    'NVIDIA A100': {'bfloat16': 312e12, 'float32': 19.5e12},
    'TPU v4': {'bfloat16': 275e12, 'float32': 275e12 / 4},
    'TPU v5 lite': {'bfloat16': 197e12, 'float32': 197e12 / 4},
    'TPU v5p': {'bfloat16': 459e12, 'float32': 459e12 / 4},
    'TPU v5': {'bfloat16': 459e12, 'float32': 459e12 / 4},
    'TPU v6 lite': {'bfloat16': 918e12, 'float32': 918e12 / 4},
}

_measured: dict[str, float] = {}


def measure_matmul_flops(n: int = 1024, dtype: str = 'float32', seconds: float = 0.5) -> float:
  """Measured FLOP/s of a jitted n x n x n matmul on the default device (best of repeats)."""
  import time

  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best, deadline = 0.0, time.perf_counter() + seconds
  while time.perf_counter() < deadline:
    t = time.perf_counter()
    for _ in range(4):
      out = f(a, a)
    out.block_until_ready()
    best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
  return best


def device_peak_flops(dtype: str) -> float:
  """Peak FLOP/s of one device: the data sheet for accelerators, a measured matmul on CPU."""
  import jax

  kind = jax.devices()[0].device_kind
  for prefix, peaks in PEAK_FLOPS.items():
    if kind.startswith(prefix):
      return peaks.get(dtype, peaks['bfloat16']) * jax.device_count()
  # CPU "devices" (forced host devices included) share the same cores: measure once.
  key = f'{kind}:{dtype}'
  if key not in _measured:
    _measured[key] = measure_matmul_flops(dtype=dtype)
  return _measured[key]
