"""`python -m dlmjax.eval RUN_DIR [step=N] [eval.KEY=VALUE ...]`

Recomputes the validation loss of a run's checkpoint (the latest by default) with the run's
own data settings and appends it to RUN_DIR/eval.jsonl with `"source": "dlmjax.eval"`.
`eval.mdm_samples`, `eval.val_tokens`, `eval.batch_size` and `eval.seed` may be overridden,
e.g. to tighten a diffusion model's ELBO estimate with more samples.
"""

from __future__ import annotations

import sys

from dlmjax import config as config_lib
from dlmjax.data import budget, pipeline, store as store_lib
from dlmjax.errors import ConfigError, UserError, exit_on_user_error
from dlmjax.eval import likelihood
from dlmjax.run import load_run
from dlmjax.rundir import append_jsonl


def evaluate_run(run_dir: str, overrides: list[str] = ()) -> dict:
  step = None
  eval_overrides = []
  for arg in overrides:
    key, value = config_lib.parse_override(arg)
    if key == 'step':
      step = config_lib.coerce('step', value, int)
    elif key.startswith('eval.'):
      eval_overrides.append((key, value))
    else:
      raise ConfigError(f'only step=N and eval.* keys can be set here, got {key!r}')
  run = load_run(run_dir, step)
  cfg = run.config
  for key, value in eval_overrides:
    config_lib.set_key(cfg, key, value)
  config_lib.validate(cfg)

  _, store = store_lib.prepare_data(cfg.data)
  val = budget.val_split(store)
  batches = pipeline.val_batches(val, seq_len=cfg.data.seq_len, batch_size=cfg.eval.batch_size,
                                 max_tokens=cfg.eval.val_tokens)
  if not batches:
    raise UserError(f'{run_dir}: the corpus has no validation tokens')
  nll_fn = likelihood.make_nll_fn(run._graphdef, run._abstract, cfg)
  res = likelihood.evaluate(nll_fn, run.params, batches, causal=run.causal,
                            num_samples=cfg.eval.mdm_samples, seed=cfg.eval.seed,
                            num_bytes=likelihood.target_bytes(batches, run.tokenizer.token_bytes()))
  rec = {'step': run.step, 'source': 'dlmjax.eval', **res}
  append_jsonl(run.dir.evals, rec)
  return rec


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ('-h', '--help'):
    print(__doc__)
    sys.exit(0 if argv else 2)
  with exit_on_user_error():
    rec = evaluate_run(argv[0], argv[1:])
  stderr = f' +- {rec["val_loss_stderr"]:.4f}' if rec['val_samples'] > 1 else ''
  print(f'{argv[0]} step {rec["step"]}: val {rec["val_loss"]:.4f}{stderr} nats/token, '
        f'{rec["val_bits_per_byte"]:.4f} bits/byte ({rec["val_tokens"]:,} tokens, '
        f'{rec["val_samples"]} sample(s))')


if __name__ == '__main__':
  main()
