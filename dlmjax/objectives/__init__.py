"""The objectives, chosen by name: `objectives.get(cfg.objective)`.

Each one is a module with two pure functions of the same shape:
  loss(model, batch, rng, cfg) -> (scalar loss, metrics dict of scalars)   for training
  nll(model, batch, rng, cfg)  -> (float32 [B] summed nats, int32 [B] targets)   for validation
and says whether its model attends causally. Adding an objective is one module and one
entry in `_REGISTRY`; the train step and the evaluator never know which one runs.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from dlmjax.objectives import ar, mdm


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
