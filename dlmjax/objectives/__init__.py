"""The objectives, chosen by name: `objectives.get(cfg.objective)`.

Each one is a module with two pure functions of the same shape:
  loss(model, batch, rng, cfg) -> (scalar loss, metrics dict of scalars)   for training
  nll(model, batch, rng, cfg)  -> (float32 [B] summed nats, int32 [B] targets)   for validation
and says whether its model attends causally. Adding an objective is one module and one
entry in `_REGISTRY`; the train step and the evaluator never know which one runs.

Gradient accumulation needs one more fact from `loss`: the training loss is a sum over the
batch divided by a count that depends on the batch (target tokens, or rows with targets), so
the mean of microbatch losses is not the loss of the whole batch. `metrics[LOSS_WEIGHT]` is
that count (the loss is sum / max(count, 1)); the train step combines microbatches as
sum_m(count_m * loss_m) / sum_m(count_m), which is the full batch's loss and gradient
exactly. Without the key every microbatch weighs the same. Other metrics are averaged with
the same weights, except counts (names starting with `n_`), which are summed.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from dlmjax.objectives import ar, mdm

LOSS_WEIGHT = 'loss_weight'


class Objective(NamedTuple):
  name: str
  causal: bool  # the attention the model uses under this objective (training and eval)
  loss: Callable
  nll: Callable


_REGISTRY = {
    'ar': Objective('ar', True, ar.loss, ar.nll),
    'mdm': Objective('mdm', False, mdm.loss, mdm.nll),
}


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> Objective:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise KeyError(f'unknown objective {name!r}; known: {", ".join(names())}') from None
