"""The model's own auxiliary losses, added to an objective's training loss.

    logits_BxLxV, aux = auxiliary.forward(model, inputs_BxL, segment_ids_BxL, positions_BxL,
                                          causal=..., dropout_rng=..., cfg=cfg)
    value = value + aux.loss
    metrics.update(aux.metrics)

Legend: B batch rows, L sequence length, V vocabulary.

A mixture-of-experts model reports per-layer load-balancing and router z-losses with `sow`
(dlmjax/model/moe.py); `forward` collects them with `nnx.capture` and weights them by the
config. Every objective's `loss` calls the model through here, so MoE trains under any
objective while neither the objectives nor the train step know what is inside the model.
A dense model reports nothing: the loss is 0.0 and there are no metrics. `nll` (evaluation)
calls the model directly: a likelihood carries no auxiliary term.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from dlmjax.config import Config
from dlmjax.model import moe


class Aux(NamedTuple):
  loss: jax.Array | float  # weighted, to add to the training loss
  metrics: dict  # unweighted values for metrics.jsonl (e.g. moe_lb_loss, moe_max_load)


def forward(model, inputs_BxL: jax.Array, segment_ids_BxL: jax.Array, positions_BxL: jax.Array,
            *, causal: bool, dropout_rng: jax.Array | None, cfg: Config) -> tuple[jax.Array, Aux]:
  """(float32 logits BxLxV, the auxiliary losses the model reported during this call)."""
  logits_BxLxV, intermediates = nnx.capture(model, nnx.Intermediate)(
      inputs_BxL, segment_ids_BxL, positions_BxL, causal=causal, dropout_rng=dropout_rng)
  return logits_BxLxV, Aux(*moe.auxiliary_losses(intermediates, cfg.model))
