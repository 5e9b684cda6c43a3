"""Stand-ins shared by the tests: a model with fixed logits, small synthetic corpora,
synthetic run directories and the attention reference the kernel tests compare against."""

import json

import numpy as np
import jax.numpy as jnp
from flax import nnx

from dlmjax.config import DataConfig
from dlmjax.data.store import prepare_data
from dlmjax.model import attention


class FixedLogits(nnx.Module):
  """A stand-in model: logits are a parameter, whatever the input; records what it saw."""

  def __init__(self, logits_BxLxV):
    self.logits = nnx.Param(jnp.asarray(logits_BxLxV, jnp.float32))
    self.seen = []

  def __call__(self, tokens_BxL, segment_ids_BxL, positions_BxL, *, causal, dropout_rng=None):
    self.seen.append((np.asarray(tokens_BxL), causal))
    return self.logits[...]


def word_corpus_store(root, *, words, num_docs, min_words, max_words, seed, val_fraction=0.2):
  """A token store over `num_docs` files of random words from `words`, built under `root`."""
  rng = np.random.default_rng(seed)
  (root / 'corpus').mkdir()
  for i in range(num_docs):
    text = ' '.join(rng.choice(words, size=rng.integers(min_words, max_words)))
    (root / 'corpus' / f'd{i:02d}.txt').write_text(text)
  cfg = DataConfig(corpus=f'files:{root}/corpus/*.txt', cache_dir=str(root / 'cache'),
                   val_fraction=val_fraction)
  return prepare_data(cfg)[1]


def xla_output_and_grads(q, k, v, seg, w, causal):
  """The `xla` reference's [output, dq, dk, dv] in float32 on the same (rounded) inputs."""
  f32 = (x.astype(jnp.float32) for x in (q, k, v))
  return attention.output_and_grads(attention._attend_xla, *f32, seg, w, causal)


def assert_within(got, want, rel):
  """Each of got[i] is within rel * max|want[i]| of want[i] (errors relative to the scale)."""
  for i, (g, r) in enumerate(zip(got, want)):
    err = float(np.abs(g - r).max())
    assert err <= rel * float(np.abs(r).max()), (i, err, float(np.abs(r).max()))


CURVE_STEPS = (2, 4, 6, 8, 10)  # eval steps of a synthetic run given a `curve`, of 10 steps


def write_run_dir(rd, objective, unique_tokens, tokens, bpb=None, *, best=None, seed=0,
                  complete=True, params=1_000_000, curve=None, tasks=None) -> float:
  """Writes a run directory as training would (eval.jsonl, metrics.jsonl, result.json if
  `complete`) with hand-chosen numbers; returns its FLOPs. `bpb` is the final validation
  bits/byte and `best` the best; `curve`, if given, the bits/byte at CURVE_STEPS (its last value
  is then the final one); `tasks`, the final task metrics in result.json."""
  rd.mkdir(parents=True)
  epochs = tokens / unique_tokens
  bpb = curve[-1] if curve is not None else bpb
  best = bpb if best is None else best
  steps = 10
  flops = 6.0 * params * tokens
  if curve is None:
    curve = {s: bpb + (best - bpb) * (s == steps // 2) + 1.0 / (1 + s) for s in (0, 2, 5, 10)}
  else:
    curve = dict(zip(CURVE_STEPS, curve))
  evals = [{'step': s, 'tokens_seen': tokens * s // steps, 'epoch': epochs * s / steps,
            'val_loss': v * 0.7, 'val_loss_stderr': 0.01, 'val_bits_per_byte': v}
           for s, v in curve.items()]
  evals[-1].update(val_bits_per_byte=bpb, val_loss=bpb * 0.7)
  (rd / 'eval.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in evals))
  (rd / 'metrics.jsonl').write_text(''.join(
      json.dumps({'step': s, 'loss': 3.0 - 0.1 * s, 'epoch': epochs * s / steps,
                  'tokens_seen': tokens * s // steps}) + '\n' for s in range(1, steps + 1)))
  if complete:
    result = {'objective': objective, 'name': rd.name, 'params': params,
              'unique_tokens': unique_tokens, 'epochs': epochs, 'train_tokens': tokens,
              'steps': steps, 'flops': flops, 'val_loss': bpb * 0.7, 'val_loss_stderr': 0.01,
              'val_bits_per_byte': bpb, 'best_val_loss': best * 0.7,
              'best_val_bits_per_byte': best, 'best_step': 5, 'seq_len': 32, 'batch_size': 8,
              'seed': seed, 'wall_s': 1.0, 'tasks': tasks or {}}
    (rd / 'result.json').write_text(json.dumps(result))
  return flops


def task_result(item_correct: str, chance: float = 0.25) -> dict:
  """A task's final metrics (harness.aggregate's keys) for the given per-item outcomes."""
  n = len(item_correct)
  acc = item_correct.count('1') / n
  return {'acc': acc, 'acc_stderr': (acc * (1 - acc) / n) ** 0.5, 'acc_norm': acc,
          'delta_nll': 1.0, 'items': n, 'chance': chance, 'item_correct': item_correct}
