"""Multiple-choice tasks, named by a spec string: an embedded task's name, `stdlib_suite` (all
of them) or `NAME:PATH`.

    items = load_task('hellaswag:/data/hellaswag/hellaswag_val.jsonl', val_fraction=0.02)
    metrics = harness.evaluate_mc(score, tokenizer, items, max_len=2048)
    suite = TaskSuite(['code_cloze'], cfg, tokenizer, model_fn, causal=False)
    suite(params)   # {'code_cloze': {'acc': ..., 'acc_norm': ..., 'delta_nll': ...}}

The embedded tasks read held-out standard-library files: `code_cloze` (`code_cloze.py`) and
the next-character tasks next_op, close_bracket, close_quote and ident_char (`next_char.py`);
`stdlib_suite` names all five (3435 items on Python 3.11). `doctest_completion`
(`doctest_completion.py`) is a generation task on the same files, execution-checked: the
model writes a function's body and its doctests run (pass@1, greedy); it is not in the
suite, whose macro average is over multiple-choice tasks. The standard benchmarks read their
official files from a local path (`benchmarks.py`): hellaswag, mmlu, arc_easy, arc_challenge,
piqa, winogrande.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Callable, Sequence

from dlmjax.config import Config
from dlmjax.data.tokenizer import Tokenizer
from dlmjax.errors import UserError
from dlmjax.eval.likelihood import ContinuationScorer
from dlmjax.eval.tasks import benchmarks, code_cloze, doctest_completion, next_char
from dlmjax.eval.tasks.harness import MCItem, encode_task, evaluate_encoded

EMBEDDED = ('code_cloze', *next_char.TASKS)
SUITE = 'stdlib_suite'  # every embedded multiple-choice task
GENERATION = (doctest_completion.NAME,)  # embedded, scored by generating and executing
FROM_FILE = {
    'hellaswag': benchmarks.hellaswag,
    'mmlu': benchmarks.mmlu,
    'arc_easy': functools.partial(benchmarks.arc, task='arc_easy'),
    'arc_challenge': functools.partial(benchmarks.arc, task='arc_challenge'),
    'piqa': benchmarks.piqa,
    'winogrande': benchmarks.winogrande,
}


def names() -> tuple[str, ...]:
  return EMBEDDED + GENERATION + tuple(FROM_FILE)


def split_specs(specs: str) -> list[str]:
  """'code_cloze, hellaswag:/x.jsonl' -> ['code_cloze', 'hellaswag:/x.jsonl']; `stdlib_suite`
  expands to every embedded task (each once)."""
  out = []
  for spec in (s.strip() for s in specs.split(',')):
    for one in (EMBEDDED if spec == SUITE else (spec,) if spec else ()):
      if one not in out:
        out.append(one)
  return out


def task_name(spec: str) -> str:
  return spec.split(':', 1)[0]


def check_spec(spec: str) -> None:
  """Raises UserError for an unknown task or a file task without its path."""
  name, _, path = spec.partition(':')
  if name not in names():
    raise UserError(f'unknown task {name!r}; known: {SUITE}, {", ".join(names())}')
  if name in FROM_FILE and not path:
    raise UserError(f'task {name} reads its official file: give {name}:PATH')
  if name in EMBEDDED + GENERATION and path:
    raise UserError(f'task {name} is embedded and takes no path')


def load_task(spec: str, *, val_fraction: float) -> list[MCItem]:
  """The items of the task `spec`; `val_fraction` selects code_cloze's held-out files."""
  check_spec(spec)
  name, _, path = spec.partition(':')
  if name in GENERATION:
    raise UserError(f'task {name} generates and has no multiple-choice items: score it with '
                    f'TaskSuite (eval.tasks={name})')
  if name == 'code_cloze':
    return code_cloze.code_cloze(val_fraction)
  if name in next_char.TASKS:
    return next_char.load(name, val_fraction)
  items = FROM_FILE[name](path)
  if not items:
    raise UserError(f'task {name}: {path!r} holds no items')
  return items


class TaskSuite:
  """A run's tasks, loaded and tokenized once, scored with one ContinuationScorer.

  `cfg.eval` sets the diffusion estimator (`task_estimator`, `task_samples`), the seed and
  the items per task (`task_items`); the window is the run's `data.seq_len`. Generation
  tasks generate `eval.gen_tokens` tokens (at most half the window) greedily with the run's
  sampler and check them by execution.
  """

  def __init__(self, specs: Sequence[str], cfg: Config, tokenizer: Tokenizer,
               model_fn: Callable[[Any], Any], *, causal: bool, progress: bool = False):
    e = cfg.eval
    self.scorer = ContinuationScorer(model_fn, cfg, causal=causal, estimator=e.task_estimator,
                                     num_samples=e.task_samples, seed=e.seed)
    self.encoded, self.generation = {}, {}
    self.model_fn, self.causal = model_fn, causal
    self.tokenizer, self.window = tokenizer, cfg.data.seq_len
    self.new_tokens = max(1, min(e.gen_tokens, cfg.data.seq_len // 2))
    for spec in specs:
      if spec in GENERATION:
        self.generation[spec] = doctest_completion.problems(cfg.data.val_fraction)[
            :e.task_items or None]
        continue
      items = load_task(spec, val_fraction=cfg.data.val_fraction)[:e.task_items or None]
      self.encoded[task_name(spec)] = encode_task(tokenizer, items, self.scorer.max_len)
    self.progress = progress
    # How each task is scored: one-token continuations take one exact pass whatever the
    # estimator (ContinuationScorer.one_token_exact), so they are not labelled with its K.
    self.describe = {}
    for name, enc in self.encoded.items():
      one_token = self.scorer.one_token_exact and all(len(x) == 1 for _, x in enc.pairs)
      self.describe[name] = (
          {'estimator': 'exact', 'samples': 1} if causal or one_token
          else {'estimator': e.task_estimator, 'samples': self.scorer.num_samples})

  def __call__(self, params: Any) -> dict[str, dict]:
    """{task: metrics} (harness.aggregate's keys, item_correct among them, plus the estimator
    and its samples)."""
    score = lambda pairs: self.scorer(params, pairs, progress=self.progress)
    out = {name: {**evaluate_encoded(score, enc), **self.describe[name]}
           for name, enc in self.encoded.items()}
    for name, items in self.generation.items():
      out[name] = {**doctest_completion.evaluate(
          functools.partial(self._generate, params), self.tokenizer, items, window=self.window,
          new_tokens=self.new_tokens), 'estimator': 'greedy', 'samples': 1}
    return out

  def _generate(self, params: Any, prompts: list[list[int]]) -> list[list[int]]:
    from dlmjax import sample  # sample imports the model; loaded only when generating
    g, block = self.new_tokens, doctest_completion.BLOCK
    opts = sample.SampleOptions(max_new_tokens=g, temperature=0.0,
                                block_length=block if g % block == 0 else 0)
    # As a run: the sampler then also bans the ids beyond the tokenizer's vocabulary.
    source = types.SimpleNamespace(model=lambda: self.model_fn(params), causal=self.causal,
                                   tokenizer=self.tokenizer)
    return sample.sample(source, prompts, opts, history=False).ids
