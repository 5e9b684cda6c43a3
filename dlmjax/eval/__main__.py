"""`python -m dlmjax.eval RUN_DIR [step=N] [tasks=SPEC,...] [eval.KEY=VALUE ...]`

Without `tasks=`: recomputes the validation loss of a run's checkpoint (the latest by
default) with the run's own data settings. With `tasks=`: scores multiple-choice tasks
instead (dlmjax/eval/tasks), e.g.

    python -m dlmjax.eval runs/tiny-mdm-u200000-e20-s0 tasks=code_cloze
    python -m dlmjax.eval RUN tasks=hellaswag:data/hellaswag_val.jsonl,arc_easy:ARC-Easy-Test.jsonl \\
        eval.task_estimator=llada eval.task_samples=32

Task specs: the embedded tasks on held-out standard-library files (`stdlib_suite`, or one of
them by name, e.g. `code_cloze`; `doctest_completion` generates function bodies and runs their
doctests, `eval.gen_tokens` tokens each) or NAME:PATH with the benchmark's official file:
hellaswag, mmlu, arc_easy, arc_challenge, piqa, winogrande.
Either way one record is appended to RUN_DIR/eval.jsonl with `"source": "dlmjax.eval"`.
`eval.mdm_samples`, `eval.val_tokens`, `eval.batch_size`, `eval.seed` and the `eval.task_*`
keys (estimator, samples, items) may be overridden, e.g. to tighten a diffusion model's
estimate with more samples.
"""

from __future__ import annotations

import sys

from dlmjax import config as config_lib, summaries
from dlmjax.data import budget, pipeline, store as store_lib
from dlmjax.errors import ConfigError, UserError, exit_on_user_error
from dlmjax.eval import likelihood
from dlmjax.eval import tasks as tasks_lib
from dlmjax.run import load_run
from dlmjax.rundir import append_jsonl


def _validation(run) -> dict:
  cfg = run.config
  _, store = store_lib.prepare_data(cfg.data)
  val = budget.val_split(store)
  batches = pipeline.val_batches(val, seq_len=cfg.data.seq_len, batch_size=cfg.eval.batch_size,
                                 max_tokens=cfg.eval.val_tokens)
  if not batches:
    raise UserError(f'{run.dir.path}: the corpus has no validation tokens')
  nll_fn = likelihood.make_nll_fn(run._graphdef, run._abstract, cfg)
  return likelihood.evaluate(nll_fn, run.params, batches, causal=run.causal,
                             num_samples=cfg.eval.mdm_samples, seed=cfg.eval.seed,
                             num_bytes=likelihood.target_bytes(batches, run.tokenizer.token_bytes()))


def evaluate_run(run_dir: str, overrides: list[str] = ()) -> dict:
  step = None
  eval_overrides = []
  for arg in overrides:
    key, value = config_lib.parse_override(arg)
    if key == 'step':
      step = config_lib.coerce('step', value, int)
    elif key == 'tasks':
      eval_overrides.append(('eval.tasks', value))
    elif key.startswith('eval.'):
      eval_overrides.append((key, value))
    else:
      raise ConfigError(f'only step=N, tasks=... and eval.* keys can be set here, got {key!r}')
  run = load_run(run_dir, step)
  cfg = run.config
  cfg.eval.tasks = ''  # the tasks scored during training are not repeated unless asked
  for key, value in eval_overrides:
    config_lib.set_key(cfg, key, value)
  config_lib.validate(cfg)

  specs = tasks_lib.split_specs(cfg.eval.tasks)
  if specs:
    suite = tasks_lib.TaskSuite(specs, cfg, run.tokenizer, run.model_fn, causal=run.causal,
                                progress=True)
    rec = {'step': run.step, 'source': 'dlmjax.eval', 'tasks': suite(run.params)}
  else:
    rec = {'step': run.step, 'source': 'dlmjax.eval', **_validation(run)}
  append_jsonl(run.dir.evals, rec)
  summaries.add_task_scores(run.dir, rec)  # beside the training curves in TensorBoard
  return rec


def _print(run_dir: str, rec: dict) -> None:
  if 'tasks' not in rec:
    stderr = f' +- {rec["val_loss_stderr"]:.4f}' if rec['val_samples'] > 1 else ''
    print(f'{run_dir} step {rec["step"]}: val {rec["val_loss"]:.4f}{stderr} nats/token, '
          f'{rec["val_bits_per_byte"]:.4f} bits/byte ({rec["val_tokens"]:,} tokens, '
          f'{rec["val_samples"]} sample(s))')
    return
  print(f'{run_dir} step {rec["step"]}:')
  print(f'  {"task":18s} {"items":>6s} {"acc":>14s} {"acc_norm":>14s} {"chance":>7s} '
        f'{"delta NLL":>10s}  estimator')
  for name, m in rec['tasks'].items():
    print(f'  {name:18s} {m["items"]:6d} {m["acc"]:7.4f}+-{m["acc_stderr"]:.4f} '
          f'{m["acc_norm"]:7.4f}+-{m["acc_norm_stderr"]:.4f} {m["chance"]:7.4f} '
          f'{_delta(m):>10s}  {m["estimator"]} (K={m["samples"]})')


def _delta(m: dict) -> str:
  """delta NLL, or '-' for a generation task, which has none."""
  return f'{m["delta_nll"]:.4f}' if 'delta_nll' in m else '-'


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ('-h', '--help'):
    print(__doc__)
    sys.exit(0 if argv else 2)
  with exit_on_user_error():
    rec = evaluate_run(argv[0], argv[1:])
  _print(argv[0], rec)


if __name__ == '__main__':
  main()
