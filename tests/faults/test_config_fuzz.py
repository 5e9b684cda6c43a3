"""Config fuzzing: random mutations of a valid training command line (wrong types, values out
of range, unknown keys, several at once). Each one is either accepted, or refused with one
line that names a key it mutated; never a traceback. Accepted ones are trained for a step."""

import pathlib

import hypothesis
from hypothesis import strategies as st

from dlmjax import config as config_lib
from dlmjax import train
from dlmjax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = 200
TRAINED = 3  # accepted mutations that are also trained (one step each)
BASE = [str(ROOT / 'configs/tiny.yaml'), 'model.d_model=32', 'model.n_layers=1',
        'model.n_heads=2', 'model.d_ff=64', 'data.seq_len=32', 'train.batch_size=8',
        'data.unique_tokens=20000', 'data.epochs=1', 'eval.val_tokens=1024', 'eval.num_evals=1',
        'eval.batch_size=8', 'eval.mdm_samples=2', 'eval.tasks=', 'train.progress=false']
KEYS = sorted(config_lib.flatten(config_lib.to_dict(config_lib.Config())))
# Keys a mutation may not touch: where the run writes and what it reads from outside.
FIXED = ('run_dir', 'data.cache_dir', 'distributed.', 'data.corpus')
MUTABLE = [k for k in KEYS if not k.startswith(FIXED)]

values = st.one_of(
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(['', 'null', 'true', 'no', '[1, 2]', '{a: 1}', '1e400', '-0', '0', '1',
                     '2', '0.5', '-1', '1.5M', '3K', 'abc', "'", '"x', ': x', '- a',
                     'auto', 'none', 'bfloat16', 'mdm', 'ar', 'cosine', 'bpe', 'byte']),
    st.text(max_size=6))
keys = st.one_of(st.sampled_from(MUTABLE), st.sampled_from(MUTABLE).map(lambda k: k + 'x'),
                 st.sampled_from(['model', 'nope', 'model.nope', 'data..epochs', '=', '']))
mutations = st.lists(st.tuples(keys, values), min_size=1, max_size=3)


def test_every_mutation_is_accepted_or_refused_in_one_line_naming_its_key(tmp_path, counts):
  seen = {'accepted': [], 'refused': 0, 'tracebacks': 0}

  @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(mutations)
  def check(muts):
    overrides = [f'{k}={v}' for k, v in muts]
    try:
      cfg = config_lib.parse_args([*BASE, *overrides])
    except UserError as e:
      msg = str(e)
      assert '\n' not in msg, msg
      named = [k for k, _ in muts if k and k in msg] + [o for o in overrides if repr(o) in msg]
      assert named, f'{overrides}: the message names none of the keys: {msg}'
      seen['refused'] += 1
      return
    except Exception:
      seen['tracebacks'] += 1
      raise
    seen['accepted'].append(overrides)

  check()
  assert seen['tracebacks'] == 0
  # The accepted ones run: one training step each, or a one-line refusal at start-up.
  trained = 0
  for i, overrides in enumerate(seen['accepted'][:TRAINED]):
    cfg = config_lib.parse_args([*BASE, *overrides, 'train.steps=1', f'run_dir={tmp_path / str(i)}'])
    try:
      train.run(cfg)
      trained += 1
    except UserError as e:
      assert '\n' not in str(e)
  counts['config_mutations_fuzzed'] += EXAMPLES
  counts['config_mutations_refused'] += seen['refused']
  counts['config_mutations_trained'] += trained
  counts['config_tracebacks'] += seen['tracebacks']
  print(f'{EXAMPLES} mutations: {seen["refused"]} refused in one line, '
        f'{len(seen["accepted"])} accepted, {trained} of them trained; 0 tracebacks')
