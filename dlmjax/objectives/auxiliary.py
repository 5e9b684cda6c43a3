"""The model's own auxiliary losses, added to an objective's training loss.

    value, ce_BxL, aux = auxiliary.weighted_ce(model, inputs_BxL, segment_ids_BxL,
                                               positions_BxL, targets_BxL, weights_BxL,
                                               causal=..., dropout_rng=..., cfg=cfg)
    value = value + aux.loss
    metrics.update(aux.metrics)

Legend: B batch rows, L sequence length, V vocabulary.

A mixture-of-experts model reports per-layer load-balancing and router z-losses with `sow`
(dlmjax/model/moe.py); `weighted_ce` runs `targets.weighted_ce` (the fused output projection
+ cross-entropy) under `nnx.capture`, collects them and weights them by the config. Every
objective's `loss` calls the model through here, so MoE trains under any objective while
neither the objectives nor the train step know what is inside the model. A dense model
reports nothing: the loss is 0.0 and there are no metrics. Evaluation (`nll`) drops the
auxiliary term: a likelihood carries none.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
from flax import nnx

from dlmjax.config import Config
from dlmjax.model import moe
from dlmjax.objectives import targets


class Aux(NamedTuple):
  loss: jax.Array | float  # weighted, to add to the training loss
  metrics: dict  # unweighted values for metrics.jsonl (e.g. moe_lb_loss, moe_max_load)


def weighted_ce(model, inputs_BxL: jax.Array, segment_ids_BxL: jax.Array,
                positions_BxL: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array, *,
                causal: bool, dropout_rng: jax.Array | None,
                cfg: Config) -> tuple[jax.Array, jax.Array, Aux]:
  """`targets.weighted_ce` (float32 sum of weights x CE; float32 BxL CE) with the auxiliary
  losses the model reported during the call."""
  def run(model):
    return targets.weighted_ce(model, inputs_BxL, segment_ids_BxL, positions_BxL, targets_BxL,
                               weights_BxL, causal=causal, dropout_rng=dropout_rng,
                               chunk_tokens=cfg.model.ce_chunk_tokens)
  (value, ce_BxL), intermediates = nnx.capture(run, nnx.Intermediate)(model)
  return value, ce_BxL, Aux(*moe.auxiliary_losses(intermediates, cfg.model))
