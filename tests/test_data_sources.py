"""Two corpus sources beside files, jsonl and parquet (dlmjax/data/corpus.py): weighted
mixtures (`mix:W*SPEC|W*SPEC...`, whose weights set each source's share of every unique
budget, dlmjax/data/budget.py) and prepared TFDS datasets (`tfds:DIR:SPLIT:FIELD`, read by
random access without TensorFlow). The TFDS tests build a tiny dataset with a builder of
their own and skip without tensorflow-datasets (`make test-extras` installs it)."""

import functools
import importlib.util
import pathlib

import numpy as np
import pytest

from dlmjax import config as config_lib
from dlmjax.config import DataConfig
from dlmjax.data import budget
from dlmjax.data import corpus as corpus_lib
from dlmjax.data import store as store_lib
from dlmjax.errors import UserError

needs_tfds = pytest.mark.skipif(importlib.util.find_spec('tensorflow_datasets') is None,
                                reason="tensorflow-datasets is not installed: pip install -e "
                                       "'.[tfds]' (make test-extras)")
needs_beam = pytest.mark.skipif(importlib.util.find_spec('apache_beam') is None,
                                reason="Apache Beam is not installed: pip install -e '.[beam]' "
                                       "(make test-extras)")


def _files(directory: pathlib.Path, n: int, word: str, seed: int) -> None:
  rng = np.random.default_rng(seed)
  directory.mkdir(parents=True)
  for i in range(n):
    (directory / f'{i:03d}.txt').write_text(f'{word} ' * int(rng.integers(5, 60)))


@pytest.fixture
def two_sources(tmp_path):
  _files(tmp_path / 'a', 80, 'alpha', 0)
  _files(tmp_path / 'b', 40, 'beta', 1)
  return f'files:{tmp_path}/a/*.txt', f'files:{tmp_path}/b/*.txt'


def _mixed(tmp_path, spec):
  return store_lib.prepare_data(DataConfig(corpus=spec, cache_dir=str(tmp_path / 'cache'),
                                           val_fraction=0.1))[1]


def _source_tokens(store, split, spec) -> int:
  label = corpus_lib.mixture_label(spec)
  return int(sum(n for i, n in zip(split.doc_ids, split.lengths)
                 if store.doc_names[i].startswith(label + '/')))


def test_a_mixture_holds_its_sources_documents_and_one_store_serves_every_weighting(
    tmp_path, two_sources):
  a, b = two_sources
  mix = corpus_lib.open_corpus(f'mix:3*{a}|1*{b}')
  names = [d.name for d in mix.documents()]
  own = [f'{corpus_lib.mixture_label(s)}/{d.name}' for s in (a, b)
         for d in corpus_lib.open_corpus(s).documents()]
  assert names == own and len(set(names)) == 120
  # The weights and the order of the sources leave every name, and so the validation split,
  # as they were; the weights leave the store itself unchanged.
  assert sorted(d.name for d in corpus_lib.open_corpus(f'mix:1*{b}|1*{a}').documents()) == \
      sorted(names)
  assert _mixed(tmp_path, f'mix:3*{a}|1*{b}').path == _mixed(tmp_path, f'mix:1*{a}|1*{b}').path
  assert config_lib.load_config([], [f'data.corpus=mix:3*{a}|1*{b}']).data.corpus.startswith('mix:')


def test_mixture_budgets_are_nested_and_give_each_source_its_weight(tmp_path, two_sources):
  a, b = two_sources
  spec = f'mix:3*{a}|1*{b}'
  store = _mixed(tmp_path, spec)
  longest = int(store.doc_lengths.max())
  previous = None
  for u in (300, 1000, 2500, 4000):
    split = budget.train_split(store, u, order_seed=0)
    assert split.num_tokens == u
    # Each source's share of the budget is its weight, to within one document.
    assert abs(_source_tokens(store, split, a) - 0.75 * u) <= longest
    assert abs(_source_tokens(store, split, b) - 0.25 * u) <= longest
    if previous is not None:  # a smaller budget is a prefix of a larger one
      k = previous.num_docs
      np.testing.assert_array_equal(split.doc_ids[:k], previous.doc_ids)
      np.testing.assert_array_equal(split.lengths[:k - 1], previous.lengths[:-1])
    previous = split
  # Listing the sources the other way round keeps each source's own order.
  other = _mixed(tmp_path, f'mix:1*{b}|3*{a}')
  swapped = budget.train_split(other, 4000, order_seed=0)
  for s in (a, b):
    label = corpus_lib.mixture_label(s)
    names = [[st.doc_names[i] for i in x.doc_ids if st.doc_names[i].startswith(label)]
             for st, x in ((store, previous), (other, swapped))]
    k = min(map(len, names)) - 1
    assert k >= 3 and names[0][:k] == names[1][:k]
  # The budget of all the mixture can give at its weights: the source with the fewest tokens
  # per unit of weight (here a: 80 documents at 3/4 against b's 40 at 1/4) runs out first, at
  # its tokens over its weight; a larger budget names it.
  def tokens(src):
    return sum(int(store.doc_lengths[i]) for i in np.flatnonzero(~store.is_val)
               if store.doc_names[i].startswith(corpus_lib.mixture_label(src) + '/'))

  ends = {1: tokens(a) / 0.75, 2: tokens(b) / 0.25}
  first = min(ends, key=ends.get)
  assert first == 1
  everything = budget.train_split(store, 0, order_seed=0)
  assert everything.num_tokens == int(ends[first])
  with pytest.raises(UserError, match=r"source 1 \('files:.*/a/\*\.txt', .* runs out first"):
    budget.train_split(store, everything.num_tokens + 1, order_seed=0)


@pytest.mark.parametrize('spec, message', [
    ('mix:stdlib|1*stdlib', r"'stdlib' is not WEIGHT\*SPEC"),
    ('mix:0*stdlib|1*files:x', r"'0\*stdlib' is not WEIGHT\*SPEC with a positive weight"),
    ('mix:x*stdlib|1*files:x', r"'x\*stdlib' is not WEIGHT\*SPEC"),
    ('mix:1*stdlib', 'needs two or more sources'),
    ('mix:1*stdlib|2*stdlib', 'listed twice'),
    ('mix:1*store:/s|1*stdlib', "cannot be 'store:/s'"),
])
def test_a_malformed_mixture_is_refused_with_its_part_named(spec, message):
  with pytest.raises(UserError, match=message):
    corpus_lib.open_corpus(spec)


TEXTS = [f'example {i}: ' + 'ünïcode x = 1\n' * (i % 4) for i in range(12)] + ['   ']


@functools.cache
def _builder_class():
  """A TFDS builder of TEXTS, defined once: TFDS registers every builder class by name."""
  import tensorflow_datasets as tfds

  class TinyText(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {'text': tfds.features.Text(), 'n': np.int64}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(TEXTS),
              'validation': self._generate_examples(['held out'])}

    def _generate_examples(self, rows):
      for i, text in enumerate(rows):
        yield str(i), {'text': text, 'n': i}

  return TinyText


def _tiny_tfds(data_dir: pathlib.Path) -> pathlib.Path:
  _builder_class()(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return data_dir / 'tiny_text' / '1.0.0'


@needs_tfds
def test_a_prepared_tfds_dataset_is_a_corpus_read_by_random_access(tmp_path, capsys):
  directory = _tiny_tfds(tmp_path / 'tfds')
  spec = f'tfds:{directory}:train:text'
  corpus = corpus_lib.open_corpus(spec)
  docs = list(corpus.documents())
  assert '1 example(s) with an empty' in capsys.readouterr().err
  # Every non-empty text once, named by its index in the split's random-access order.
  assert sorted(d.text for d in docs) == sorted(t for t in TEXTS if t.strip())
  assert [d.name for d in docs] == [f'tiny_text/train:{i}' for i in range(13)
                                    if f'tiny_text/train:{i}' in {d.name for d in docs}]
  assert list(corpus.documents()) == docs and corpus.size_hint() == 13
  for parts in (1, 2, 5):
    pieces = corpus.split(parts)
    assert len(pieces) == parts and [d for p in pieces for d in p.documents()] == docs
  # Through the flat store, byte-level: every document decodes to its text.
  tok, store = store_lib.prepare_data(DataConfig(corpus=spec, cache_dir=str(tmp_path / 'c'),
                                                 val_fraction=0.2))
  assert [tok.decode(store.doc(i)[1:-1]) for i in range(store.num_docs)] == \
      [d.text for d in docs]
  for bad, message in ((f'tfds:{directory}:test:text', r"no split 'test' \(splits: train, "
                        r"validation\)"),
                       (f'tfds:{directory}:train:body', r"no feature 'body' \(features: n, "
                        r"text\)"),
                       (f'tfds:{directory}:train:n', "feature 'n' is Tensor, not Text"),
                       (f'tfds:{tmp_path}:train:text', 'is not a prepared TFDS dataset'),
                       (f'tfds:{directory}:text', 'expected tfds:DIR:SPLIT:FIELD')):
    with pytest.raises(UserError, match=message):
      list(corpus_lib.open_corpus(bad).documents())


@needs_tfds
@needs_beam
def test_the_pipeline_tokenizes_a_tfds_mixture_like_the_flat_store(tmp_path, two_sources):
  from dlmjax.data import prepare
  from dlmjax.data.__main__ import info

  directory = _tiny_tfds(tmp_path / 'tfds')
  spec = f'mix:1*tfds:{directory}:train:text|1*{two_sources[1]}'
  flat = _mixed(tmp_path, spec)
  made = prepare.tokenize(spec, tmp_path / 'shards', val_fraction=0.1, num_shards=4, workers=2)
  assert made.doc_names == flat.doc_names
  np.testing.assert_array_equal(made.tokens[:], flat.tokens[:])
  # The store remembers the mixture, so data.corpus=store:DIR budgets it at its weights.
  for u in (150, 600):
    np.testing.assert_array_equal(budget.train_split(made, u, 0).doc_ids,
                                  budget.train_split(flat, u, 0).doc_ids)
  # `info` gives the largest budget at the weights, not every training token.
  largest = budget.train_split(flat, 0, 0).num_tokens
  assert largest < int(flat.doc_lengths[~flat.is_val].sum())
  assert f'largest unique budget: data.unique_tokens={largest}\n' in info(str(made.path)) + '\n'


needs_seqio = pytest.mark.skipif(importlib.util.find_spec('seqio') is None,
                                 reason="seqio is not installed: pip install -e '.[seqio]' "
                                        "(make test-extras)")
LINES = ['first line ünïcode', 'second line', '', 'third: x = 1', 'a fourth, longer line ' * 5]
SEQIO_TASKS = '''
import os
import seqio

HERE = os.path.dirname(__file__)
for name in ('dlmjax_lines', 'dlmjax_lines_b', 'dlmjax_text', 'dlmjax_mix'):
  seqio.TaskRegistry.remove(name)
  seqio.MixtureRegistry.remove(name)
for name in ('dlmjax_lines', 'dlmjax_lines_b'):
  # A TextLine source, tokenized by the Task with its own (byte) vocabulary.
  path = os.path.join(HERE, name + '.txt')
  seqio.TaskRegistry.add(
      name, source=seqio.TextLineDataSource({'train': path, 'validation': path}),
      preprocessors=[lambda ds: ds.map(lambda line: {'targets': line}),
                     seqio.preprocessors.tokenize],
      output_features={'targets': seqio.Feature(seqio.ByteVocabulary(), add_eos=False)})
seqio.MixtureRegistry.add('dlmjax_mix', [('dlmjax_lines', 3), ('dlmjax_lines_b', 1)])
'''


@pytest.fixture(scope='module')
def seqio_module(tmp_path_factory):
  """A module registering two TextLine Tasks and a 3:1 Mixture of them, importable from a
  directory that is not on sys.path (as a user's tasks module is not in a pipeline's
  workers); the Tasks are re-registered on import."""
  directory = tmp_path_factory.mktemp('seqio')
  (directory / 'dlmjax_lines.txt').write_text('\n'.join(LINES) + '\n')
  (directory / 'dlmjax_lines_b.txt').write_text(
      '\n'.join(f'b line {i} ' * (i + 1) for i in range(12)) + '\n')
  (directory / 'dlmjax_seqio_tasks.py').write_text(SEQIO_TASKS)
  import sys
  sys.path.insert(0, str(directory))
  yield 'dlmjax_seqio_tasks'
  sys.path.remove(str(directory))


@needs_seqio
def test_a_seqio_task_is_a_corpus_of_its_preprocessed_examples_as_text(tmp_path, seqio_module,
                                                                      capsys):
  spec = f'seqio:{seqio_module}:dlmjax_lines:train:targets'
  corpus = corpus_lib.open_corpus(spec)
  docs = list(corpus.documents())
  # The Task tokenized each line with its byte vocabulary; the corpus gives it back as text.
  assert [(d.name, d.text) for d in docs] == [
      (f'dlmjax_lines/train:{i}', t) for i, t in enumerate(LINES) if t]
  assert "1 example(s) with an empty 'targets', skipped: dlmjax_lines/train:2" in \
      capsys.readouterr().err
  assert corpus.fingerprint() == corpus_lib.open_corpus(spec).fingerprint()
  tok, store = store_lib.prepare_data(DataConfig(corpus=spec, cache_dir=str(tmp_path / 'c'),
                                                 val_fraction=0.2))
  assert [tok.decode(store.doc(i)[1:-1]) for i in range(store.num_docs)] == \
      [d.text for d in docs]
  for bad, message in (
      (f'seqio:{seqio_module}:dlmjax_lines:test:targets', r"no split 'test' \(splits: train, "
       r"validation\)"),
      (f'seqio:{seqio_module}:dlmjax_lines:train:inputs', r"gives no feature 'inputs' "
       r"\(features: targets, targets_pretokenized\)"),
      (f'seqio:{seqio_module}:nothing:train:targets', "no seqio Task or Mixture 'nothing'"),
      ('seqio:no_such_module:t:train:targets', "cannot import the module 'no_such_module'"),
      (f'seqio:{seqio_module}:train:targets', 'expected seqio:MODULE:TASK:SPLIT:FEATURE'),
      (f'mix:1*seqio:{seqio_module}:dlmjax_mix:train:targets|1*stdlib', 'is itself a mixture')):
    with pytest.raises(UserError, match=message):
      list(corpus_lib.open_corpus(bad).documents())


@needs_seqio
def test_a_seqio_mixture_is_a_weighted_mixture_of_its_tasks_at_its_rates(tmp_path,
                                                                        seqio_module):
  spec = f'seqio:{seqio_module}:dlmjax_mix:train:targets'
  tasks = [f'seqio:{seqio_module}:dlmjax_lines:train:targets',
           f'seqio:{seqio_module}:dlmjax_lines_b:train:targets']
  assert corpus_lib.mixture_sources(spec) == [(0.75, tasks[0]), (0.25, tasks[1])]
  store = _mixed(tmp_path, spec)
  # The same documents and budgets as the mix: spec of the two Tasks at 3:1.
  same = _mixed(tmp_path, f'mix:3*{tasks[0]}|1*{tasks[1]}')
  assert store.doc_names == same.doc_names
  u = budget.train_split(store, 0, 0).num_tokens
  split = budget.train_split(store, u, 0)
  np.testing.assert_array_equal(split.doc_ids, budget.train_split(same, u, 0).doc_ids)
  assert abs(_source_tokens(store, split, tasks[0]) - 0.75 * u) <= store.doc_lengths.max()


@needs_seqio
@needs_beam
def test_the_pipeline_tokenizes_a_seqio_mixture_in_worker_processes(tmp_path, seqio_module):
  from dlmjax.data import prepare

  spec = f'seqio:{seqio_module}:dlmjax_mix:train:targets'
  flat = _mixed(tmp_path, spec)
  # Two worker processes, whose sys.path lacks the tasks module's directory.
  made = prepare.tokenize(spec, tmp_path / 'shards', val_fraction=0.1, workers=2)
  assert made.doc_names == flat.doc_names
  np.testing.assert_array_equal(made.tokens[:], flat.tokens[:])
