"""Stand-ins shared by the tests: a model with fixed logits, small synthetic corpora, and the
attention reference the kernel tests compare against."""

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
