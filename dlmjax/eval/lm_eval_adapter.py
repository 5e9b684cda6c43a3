"""lm-eval-harness adapter: score any lm-eval task with an AR or diffusion run.

    from lm_eval import simple_evaluate
    from dlmjax.eval.lm_eval_adapter import DlmjaxLM
    lm = DlmjaxLM(run_dir='runs/tiny-mdm-u200000-e20-s0', estimator='llada', num_samples=32)
    simple_evaluate(model=lm, tasks=['hellaswag'])

or from the shell, with any lm-eval task (including local YAML tasks via `include_path=`):

    python -m dlmjax.eval.lm_eval_adapter RUN_DIR tasks=hellaswag,arc_easy [limit=100]
        [include_path=DIR] [estimator=llada] [num_samples=32] [seed=0] [step=N]

`loglikelihood` tokenizes and scores exactly as the native harness (dlmjax/eval/tasks):
`harness.encode_pair` (lm-eval's own splitting, BOS in front) and
`likelihood.ContinuationScorer` (exact for AR, the chosen estimator for a diffusion model),
whose samples are keyed by each pair's content, so both give the same numbers for the same
requests. A request longer than the run's window is cut from the left, as lm-eval does.
`is_greedy`: for AR, greedy decoding yields the continuation; for a diffusion model, with
the continuation fully masked, every token is its position's argmax.
`loglikelihood_rolling` scores lm-eval's disjoint rolling windows (AR exact, diffusion the
estimator's bound). `generate_until` generates with `dlmjax.sample.generate` (AR: KV cache;
diffusion: iterative unmasking with as many steps as answer tokens).

Needs the `[eval]` extra (lm-eval, torch CPU): `make test-eval` installs it.
"""

from __future__ import annotations

import sys
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from dlmjax.data.tokenizer import BOS_ID
from dlmjax.eval.likelihood import ContinuationScorer
from dlmjax.eval.tasks.harness import encode_pair
from dlmjax.run import Run, load_run


@register_model('dlmjax')
class DlmjaxLM(LM):
  """An lm-eval LM backed by a dlmjax run (AR or diffusion).

  Args:
    run_dir / run: the run directory, or an open `Run`.
    step: the checkpoint (default: the latest).
    estimator, num_samples, seed: the diffusion estimator of log p(continuation | context)
      (dlmjax/eval/likelihood.py); defaults from the run's `eval.task_*` keys.
    max_length: the window in tokens (default: the run's data.seq_len).
  """

  def __init__(self, run_dir: str | None = None, *, run: Run | None = None,
               step: int | None = None, estimator: str | None = None,
               num_samples: int | None = None, seed: int | None = None,
               max_length: int = 0, batch_size: Any = None):
    super().__init__()
    del batch_size  # lm-eval passes it; rows per call follow eval.batch_size x seq_len
    if run is None:
      if run_dir is None:
        raise ValueError('DlmjaxLM needs run_dir or run')
      run = load_run(run_dir, None if step is None else int(step))
    self.run = run
    e = run.config.eval
    self.scorer = ContinuationScorer(
        run.model_fn, run.config, causal=run.causal,
        estimator=estimator or e.task_estimator,
        num_samples=int(num_samples or e.task_samples),
        seed=int(e.seed if seed is None else seed),
        max_len=int(max_length or run.config.data.seq_len))

  @property
  def max_length(self) -> int:
    return self.scorer.max_len

  def _score(self, pairs) -> list[float]:
    return [float(x) for x in self.scorer(self.run.params, pairs, progress=True)]

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    pairs = [encode_pair(self.run.tokenizer, *req.args) for req in requests]
    if not pairs:
      return []
    greedy = self.scorer.greedy(self.run.params, pairs)
    return [(lp, bool(g)) for lp, g in zip(self._score(pairs), greedy)]

  def loglikelihood_rolling(self, requests) -> list[float]:
    pairs, owner = [], []
    for i, req in enumerate(requests):
      ids = self.run.tokenizer.encode(req.args[0])
      # Windows of max_len - 1 inputs: with the last token appended, a row is max_len long.
      for window in get_rolling_token_windows(ids, BOS_ID, self.max_length - 1, 1):
        pairs.append(make_disjoint_window(window))
        owner.append(i)
    totals = [0.0] * len(requests)
    for i, lp in zip(owner, self._score(pairs) if pairs else []):
      totals[i] += lp
    return totals

  def generate_until(self, requests) -> list[str]:
    """Greedy (or gen_kwargs' temperature) generation with `dlmjax.sample`, cut at the first
    stop string. `max_gen_toks` (default 256, at most half the window) is an AR run's limit
    and a diffusion run's answer length; the prompt keeps its last window - max_gen_toks
    tokens."""
    from lm_eval.models.utils import handle_stop_sequences

    from dlmjax import sample

    tok = self.run.tokenizer
    out: list[str | None] = [None] * len(requests)
    groups: dict[tuple[int, float], list[int]] = {}
    for i, req in enumerate(requests):
      kwargs = req.args[1] if len(req.args) > 1 else {}
      new = min(int(kwargs.get('max_gen_toks', 256)), self.max_length // 2)
      temperature = float(kwargs.get('temperature', 0.0) or 0.0)
      groups.setdefault((new, temperature), []).append(i)
    for (new, temperature), members in groups.items():
      prompts = [([BOS_ID] + tok.encode(requests[i].args[0]))[-(self.max_length - new):]
                 for i in members]
      ids = sample.generate(self.run, prompts, max_new_tokens=new, temperature=temperature)
      for i, gen in zip(members, ids):
        kwargs = requests[i].args[1] if len(requests[i].args) > 1 else {}
        text = tok.decode(gen)
        for stop in handle_stop_sequences(kwargs.get('until'), None):
          if stop and stop in text:
            text = text[:text.index(stop)]
        out[i] = text
    return out


def main(argv: list[str] | None = None) -> None:
  """`python -m dlmjax.eval.lm_eval_adapter RUN_DIR tasks=A,B [key=value ...]`."""
  import json

  from lm_eval import simple_evaluate
  from lm_eval.tasks import TaskManager
  from lm_eval.utils import make_table

  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ('-h', '--help'):
    print(__doc__)
    sys.exit(0 if argv else 2)
  opts = dict(a.split('=', 1) for a in argv[1:])
  tasks = [t for t in opts.pop('tasks', '').split(',') if t]
  if not tasks:
    print('error: give tasks=NAME[,NAME...]', file=sys.stderr)
    sys.exit(2)
  limit = opts.pop('limit', None)
  include = opts.pop('include_path', None)
  lm = DlmjaxLM(argv[0], **{k: (int(v) if v.isdigit() else v) for k, v in opts.items()})
  results = simple_evaluate(model=lm, tasks=tasks, limit=float(limit) if limit else None,
                            task_manager=TaskManager(include_path=include), log_samples=False)
  print(make_table(results))
  print(json.dumps(results['results'], indent=1, default=str))


if __name__ == '__main__':
  main()
