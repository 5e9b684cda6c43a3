"""Multiple-choice tasks: loaders on fixtures in the official formats, the harness's acc and
acc_norm against hand-computed values, and the embedded code cloze."""

import functools
import math
import pathlib

import numpy as np
import pytest

import jax.numpy as jnp

from dlmjax.config import Config
from dlmjax.data.store import is_val_name
from dlmjax.data.tokenizer import BOS_ID, ByteTokenizer
from dlmjax.errors import UserError
from dlmjax.eval import tasks
from dlmjax.eval.likelihood import ContinuationScorer
from dlmjax.eval.tasks import code_cloze, harness, next_char

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
SPECS = {
    'hellaswag': 'hellaswag/hellaswag_val.jsonl',
    'mmlu': 'mmlu/data/test',
    'arc_easy': 'arc/ARC-Easy/ARC-Easy-Test.jsonl',
    'arc_challenge': 'arc/ARC-Challenge/ARC-Challenge-Test.jsonl',
    'piqa': 'piqa/valid.jsonl',
    'winogrande': 'winogrande/dev.jsonl',
}
V = 260  # the byte tokenizer


def load(name):
  return tasks.load_task(f'{name}:{FIXTURES / SPECS[name]}', val_fraction=0.02)


# ---------------------------------------------------------------------------------------
# Loaders parse the official formats exactly.

def test_hellaswag_loader_builds_lm_evals_query_and_cleans_wikihow_markup():
  items = load('hellaswag')
  assert [it.gold for it in items] == [2, 0, 1]
  first = items[0]
  ctx = ('Washing dishes: A man fills a sink with soapy water and lowers a stack of plates into '
         'it. He')
  assert first.requests[0] == (ctx, ' scrubs each plate with a sponge and rinses it under the tap.')
  assert first.choices[2] == 'sings.'
  wikihow = items[1]
  assert wikihow.requests[0][0] == ('Home and Garden: How to repot a houseplant. Water the plant '
                                    'a day before. Moist soil holds together and slides out of '
                                    'the pot more easily.')
  # "[title]" at the very start of an ending is dropped, leaving its space (as lm-eval does).
  assert wikihow.choices[0] == (' Choose a pot one size larger. A pot that is too big keeps the '
                                'roots wet for too long.')
  assert wikihow.choices[3] == 'Sell the plant.'


def test_mmlu_loader_reads_every_subject_csv_with_lm_evals_prompt():
  items = load('mmlu')
  assert [it.gold for it in items] == [1, 0, 3, 1, 1]
  assert items[0].requests == tuple(
      ('The following are multiple choice questions (with answers) about astronomy.\n\n'
       'Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Mars\nD. Earth\nAnswer:',
       f' {letter}') for letter in 'ABCD')
  assert items[0].choices == ('A', 'B', 'C', 'D')
  assert 'C. Chemical reactions, such as rusting\n' in items[1].requests[0][0]  # quoted comma
  assert '\n\nAbout how long' in items[2].requests[0][0]  # the question is stripped
  assert items[4].requests[0][0].startswith(
      'The following are multiple choice questions (with answers) about high school computer '
      'science.\n\nWhich data structure is "first in, first out"?\n')
  one = tasks.load_task(f'mmlu:{FIXTURES / SPECS["mmlu"]}/astronomy_test.csv', val_fraction=0.02)
  assert len(one) == 3


def test_arc_loader_maps_any_label_scheme_to_the_choice_index():
  easy, challenge = load('arc_easy'), load('arc_challenge')
  assert [it.gold for it in easy] == [0, 1, 1] and [it.gold for it in challenge] == [0, 1]
  assert easy[1].requests[1] == ('Question: What do plants take in from the air to make food?\n'
                                 'Answer:', ' carbon dioxide')  # labels "1".."4"
  assert easy[0].id == 'Fixture_E1'
  assert len(challenge[0].choices) == 3 and len(challenge[1].choices) == 5


def test_piqa_loader_joins_the_labels_file():
  items = load('piqa')
  assert [it.gold for it in items] == [0, 1, 0]
  assert items[1].requests[1] == ('Question: How do I loosen a tight jar lid?\nAnswer:',
                                  ' Run the lid under hot water for a minute, then twist it.')


def test_winogrande_loader_fills_the_blank_in_the_context_and_scores_the_rest():
  items = load('winogrande')
  assert [it.gold for it in items] == [1, 1, 0]
  assert items[0].requests == (
      ('The trophy did not fit in the suitcase because the trophy', ' was too small.'),
      ('The trophy did not fit in the suitcase because the suitcase', ' was too small.'))
  assert items[0].choices == tuple(c for c, _ in items[0].requests)


def test_loader_errors_name_the_file_and_line(tmp_path):
  bad = tmp_path / 'dev.jsonl'
  bad.write_text('{"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"}\n')
  with pytest.raises(UserError, match='dev.jsonl:1'):
    tasks.load_task(f'winogrande:{bad}', val_fraction=0.02)
  with pytest.raises(UserError, match='does not exist'):
    tasks.load_task(f'hellaswag:{tmp_path}/missing.jsonl', val_fraction=0.02)
  (tmp_path / 'valid.jsonl').write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
  with pytest.raises(UserError, match='labels'):
    tasks.load_task(f'piqa:{tmp_path}/valid.jsonl', val_fraction=0.02)
  with pytest.raises(UserError, match='unknown task'):
    tasks.check_spec('lambada:x')
  with pytest.raises(UserError, match='PATH'):
    tasks.check_spec('hellaswag')


# ---------------------------------------------------------------------------------------
# The harness: acc and acc_norm as lm-eval computes them, on hand-built models.

class UnigramBytes:
  """A stand-in model: the same distribution over bytes at every position, AR or not."""

  def __init__(self, logp_V):
    self.logp_V = jnp.asarray(logp_V, jnp.float32)

  def __call__(self, tokens_BxL, segment_ids_BxL, positions_BxL, *, causal, dropout_rng=None):
    return jnp.broadcast_to(self.logp_V, tokens_BxL.shape + (V,))


@functools.lru_cache(maxsize=None)
def scorer(causal):
  # The parameters are the byte log-probabilities, so one compilation serves every test.
  return ContinuationScorer(UnigramBytes, Config(), causal=causal, estimator='llada',
                            num_samples=2, max_len=256)


def evaluate(name, logp_V, causal=True):
  s = scorer(causal)
  return harness.evaluate_mc(lambda pairs: s(jnp.asarray(logp_V), pairs), ByteTokenizer(),
                             load(name), max_len=256)


# With every byte equally likely, log p(" " + choice) = -(1 + len) log V: acc picks the
# shortest continuation and acc_norm (divided by len(choice)) the longest choice; ties go to
# the first choice. Read off the fixtures by hand:
#   hellaswag     shortest = gold in item 1 of 3; longest = gold in items 2, 3
#   mmlu          all " A".." D" tie -> A; gold is A in 1 of 5 items (both metrics)
#   arc_easy      shortest never gold; longest gold in items 1, 2
#   arc_challenge "streak"/"luster" tie -> streak = gold in item 1; longest gold in item 2
#   piqa          shorter never gold; longer always gold
#   winogrande    the continuations are equal -> choice 1 (gold in item 3); longer context
#                 ("suitcase", "Maria", "glass") gold in items 1, 3
UNIFORM_EXPECTED = {
    'hellaswag': (1 / 3, 2 / 3), 'mmlu': (1 / 5, 1 / 5), 'arc_easy': (0.0, 2 / 3),
    'arc_challenge': (1 / 2, 1 / 2), 'piqa': (0.0, 1.0), 'winogrande': (1 / 3, 2 / 3),
}


@pytest.mark.parametrize('causal', [True, False])
@pytest.mark.parametrize('name', list(SPECS))
def test_acc_and_acc_norm_of_a_uniform_byte_model_equal_the_hand_computed_values(name, causal):
  got = evaluate(name, np.zeros(V), causal)
  acc, acc_norm = UNIFORM_EXPECTED[name]
  assert got['acc'] == pytest.approx(acc) and got['acc_norm'] == pytest.approx(acc_norm)
  assert got['items'] == len(load(name))
  # Equal-length choices tie exactly: the gold option's NLL equals the others'.
  if name == 'mmlu':
    assert got['delta_nll'] == pytest.approx(0.0, abs=1e-3)


def test_harness_metrics_match_an_independent_computation_on_a_unigram_model():
  logp = np.log(np.random.default_rng(0).dirichlet(np.ones(V) * 0.3))
  for name in SPECS:
    got = evaluate(name, logp)
    acc, acc_norm, true_nll, alt_nll = [], [], [], []
    for item in load(name):
      lls = []
      for context, continuation in item.requests:
        moved = context[len(context.rstrip()):]  # lm-eval moves trailing spaces across
        lls.append(sum(logp[b + 4] for b in (moved + continuation).encode()))
      lls = np.array(lls)
      acc.append(np.argmax(lls) == item.gold)
      acc_norm.append(np.argmax(lls / [len(c) for c in item.choices]) == item.gold)
      true_nll.append(-lls[item.gold])
      alt_nll.append(-np.delete(lls, item.gold).mean())
    assert got['acc'] == pytest.approx(np.mean(acc)), name
    assert got['acc_norm'] == pytest.approx(np.mean(acc_norm)), name
    assert got['nll_true'] == pytest.approx(np.mean(true_nll), rel=1e-5), name
    assert got['delta_nll'] == pytest.approx(np.mean(alt_nll) - np.mean(true_nll), rel=1e-4,
                                             abs=1e-4), name
    n = len(acc)
    assert got['acc_stderr'] == pytest.approx(np.std(acc, ddof=1) / math.sqrt(n)), name


def test_encode_pair_moves_trailing_whitespace_and_prepends_bos():
  tok = ByteTokenizer()
  ctx, cont = harness.encode_pair(tok, 'x = 1\n  ', 'y')
  assert ctx == [1] + tok.encode('x = 1') and cont == tok.encode('\n  y')
  assert harness.encode_pair(tok, '', 'ab') == ([1], tok.encode('ab'))


def test_every_choice_of_an_item_gets_the_same_context_budget():
  item = harness.MCItem((('abcdefghij', 'x'), ('abcdefghij', 'xyz')), ('x', 'xyz'), 0)
  enc = harness.encode_task(ByteTokenizer(), [item], max_len=8)
  (c0, x0), (c1, x1) = enc.pairs
  assert c0 == c1 and len(c0) + len(x1) == 8 and len(x0) == 1


# ---------------------------------------------------------------------------------------
# The embedded code cloze.

@functools.lru_cache(maxsize=None)
def cloze():
  return code_cloze.code_cloze(0.02)


def test_code_cloze_is_deterministic_with_several_hundred_four_way_items():
  items = cloze()
  assert len(items) == 600
  assert items == code_cloze.code_cloze(0.02)
  assert all(len(it.requests) == 4 == len({c for c, _ in it.requests}) for it in items)
  assert len({it.id.split(':')[0] for it in items}) >= 10


def test_code_cloze_asks_a_held_out_line_under_its_own_and_three_other_contexts():
  held_out = {d.name: d.text.split('\n') for d in code_cloze.held_out_files(0.02)}
  # Every prefix of a held-out file that ends at a line start, and the line that follows.
  places = {}
  for name, lines in held_out.items():
    prefix = ''
    for line in lines:
      places[prefix] = line
      prefix += line + '\n'
  for it in cloze():
    name, line_no = it.id.rsplit(':', 1)
    assert is_val_name(name, 0.02)
    lines = held_out[name]
    t = int(line_no) - 1
    line = lines[t].rstrip() + '\n'
    assert all(x == line for _, x in it.requests) and it.choices == (line,) * 4
    assert it.requests[it.gold][0] == ''.join(x + '\n' for x in lines[:t])
    for context, _ in it.requests:  # each choice is a place before a line of this indentation
      following = places[context]
      assert following[:len(following) - len(following.lstrip())] == \
          line[:len(line) - len(line.lstrip())]


def test_code_cloze_guesses_from_the_contexts_alone_are_at_chance():
  """The longest or shortest context, or a fixed position: right 1/4 of the time."""
  items = cloze()
  gold = np.array([it.gold for it in items])
  se = math.sqrt(0.25 * 0.75 / len(items))
  for pick in (np.argmin, np.argmax):
    acc = np.mean([pick([len(c) for c, _ in it.requests]) == g for it, g in zip(items, gold)])
    assert abs(acc - 0.25) < 3 * se, (pick.__name__, acc)
  for k in range(4):
    assert abs(np.mean(gold == k) - 0.25) < 3 * se


# ---------------------------------------------------------------------------------------
# The next-character tasks and the suite.

@functools.lru_cache(maxsize=None)
def char_task(name):
  return tasks.load_task(name, val_fraction=0.02)


@pytest.mark.parametrize('name', list(next_char.TASKS))
def test_next_char_items_are_deterministic_balanced_and_ask_a_held_out_files_next_character(
    name):
  items = char_task(name)
  task = next_char.TASKS[name]
  assert len(items) == task.num_items
  assert items == next_char.load(name, 0.02)
  n = len(task.choices)
  # Balanced: each choice is the answer of the same number of items, in every round of n.
  golds = np.array([it.gold for it in items]).reshape(-1, n)
  assert all(sorted(row) == list(range(n)) for row in golds)
  text = {d.name: d.text for d in code_cloze.held_out_files(0.02)}
  for it in items:
    file, row, col = it.id.rsplit(':', 2)
    assert is_val_name(file, 0.02)  # never a training document
    lines = text[file].splitlines(keepends=True)
    at = sum(len(x) for x in lines[:int(row) - 1]) + int(col) - 1
    context = text[file][:at]
    assert it.requests == tuple((context, ch) for ch in task.choices)
    assert it.choices[it.gold] == text[file][at] and not context[-1].isspace()
  assert len({it.id for it in items}) == len(items)


def test_the_suite_names_every_embedded_task_once_and_its_items_number_thousands():
  assert tasks.split_specs('stdlib_suite') == list(tasks.EMBEDDED)
  assert tasks.split_specs('next_op, stdlib_suite') == list(tasks.EMBEDDED[1:2]) + [
      t for t in tasks.EMBEDDED if t != 'next_op']
  assert sum(len(char_task(t)) for t in next_char.TASKS) + len(cloze()) >= 3000


def oracle_scores(items):
  """log p = 0 for the character the file really has after the context, -1 otherwise: knows
  the answers from the held-out files, not from the items' gold labels."""
  text = {d.name: d.text for d in code_cloze.held_out_files(0.02)}
  tok = ByteTokenizer()
  truth = {}  # the context's last 255 byte ids (what the harness keeps) -> the next character
  for it in items:
    context = it.requests[0][0]
    truth[tuple(tok.encode(context)[-255:])] = text[it.id.rsplit(':', 2)[0]][len(context)]

  def score(pairs):
    unbos = lambda c: c[1:] if c[0] == BOS_ID else c
    return np.array([0.0 if tok.decode(x) == truth[tuple(unbos(c))] else -1.0
                     for c, x in pairs])
  return score


@pytest.mark.parametrize('name', list(next_char.TASKS))
def test_an_oracle_scores_100_and_context_blind_models_score_chance_exactly(name):
  items = char_task(name)[:200]
  chance = 1 / len(next_char.TASKS[name].choices)
  enc = harness.encode_task(ByteTokenizer(), items, max_len=256)
  oracle = harness.evaluate_encoded(oracle_scores(items), enc)
  assert oracle['acc'] == 1.0 and oracle['item_correct'] == '1' * len(items)
  # A model that ignores the context ranks the choices alike for every item: it is right on
  # exactly one class (balanced), through the real scorer, AR and diffusion alike.
  for causal in (True, False):
    for logp_V in (np.zeros(V), np.log(np.random.default_rng(1).dirichlet(np.ones(V)))):
      got = evaluate_items(items, logp_V, causal)
      assert got['acc'] == pytest.approx(chance) and got['chance'] == pytest.approx(chance)
      assert len(got['item_correct']) == len(items)
      assert got['item_correct'].count('1') == round(chance * len(items))


def evaluate_items(items, logp_V, causal):
  s = scorer(causal)
  return harness.evaluate_mc(lambda pairs: s(jnp.asarray(logp_V), pairs), ByteTokenizer(),
                             items, max_len=256)


def token_model(params):
  """Logits that depend on the token at each position and on the position: reading the wrong
  position, or not masking the scored one, changes them."""
  return lambda tokens, segment_ids, positions, *, causal, dropout_rng=None: (
      params['w'][tokens] + params['p'][positions])


@pytest.mark.parametrize('causal, estimator', [(True, 'llada'), (False, 'llada'),
                                               (False, 'llada_ld'), (False, 'chain_rule')])
def test_one_token_pairs_in_one_pass_equal_the_general_path(causal, estimator):
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(V, V)), jnp.float32),
            'p': jnp.asarray(rng.normal(size=(64, V)), jnp.float32)}
  tok = ByteTokenizer()
  contexts = [[1] + tok.encode(s) for s in ('def f(x', 'a = [1, 2', "s = 'ab", 'x')]
  pairs = [(c, tok.encode(ch)) for c in contexts for ch in ')]\'"(']
  pairs.append((contexts[0], tok.encode('ab')))  # a longer continuation: general path only
  fast = ContinuationScorer(token_model, Config(), causal=causal, estimator=estimator,
                            num_samples=3, max_len=64)
  slow = ContinuationScorer(token_model, Config(), causal=causal, estimator=estimator,
                            num_samples=3, max_len=64)
  slow.one_token_exact = False
  np.testing.assert_allclose(fast(params, pairs), slow(params, pairs), rtol=1e-5, atol=1e-5)
  # The general path of a one-token pair is exact too: it agrees with its own one sample.
  one = ContinuationScorer(token_model, Config(), causal=causal, estimator=estimator,
                           num_samples=1, max_len=64)
  one.one_token_exact = False
  np.testing.assert_allclose(slow(params, pairs)[:-1], one(params, pairs)[:-1], rtol=1e-5)
