"""An execution-checked generation task: write a held-out function's body, run its doctests.

The problems: every function or method of the held-out standard-library files (the files
`code_cloze` reads: their names hash below `data.val_fraction`, so a `stdlib` run never trains
on them) whose docstring holds doctest examples and whose body has statements after the
docstring. The prompt is the file from its start to the end of the docstring (left-truncated
to the model's window); the model writes the body. Its text is cut where the function ends
(the first non-blank line indented no deeper than the `def`, as HumanEval's stop sequences
do), spliced into the file in place of the true body, and the function's own doctests run
on the spliced file in a fresh, isolated Python process (`python -I`, a scratch working
directory, a memory and CPU limit, a wall-clock timeout). Pass: every example passes and at
least one ran. The score is pass@1 with greedy decoding, for both objectives: AR with its
KV cache, the MDM by iterative unmasking (`dlmjax.sample`, low-confidence remasking, one
token per step, semi-autoregressive blocks of `BLOCK` tokens).

A problem is kept only if the true body passes its doctests in that harness and the bodies
that do nothing (`TRIVIAL`: `raise NotImplementedError`, `pass`) fail them, so a generation
that does nothing scores 0 and the oracle scores 100%. Chance is 0. (Counter.__init__ is
left out by this rule: its examples print nothing, so `pass` passes them.) On Python 3.11
with the default val_fraction 0.02 this is 13 methods and functions of
collections/__init__.py (`problems` lists them): few, and far
beyond a 0.6M-parameter model with a 128-token window (the study's tiny runs are expected
to score 0), it is here for the larger models where the first paper's coder results live.

Deterministic: files in name order, functions in source order, greedy decoding; the harness
runs each check in its own process, so a generated body that loops, crashes or exits
cannot touch the evaluation or another problem.
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import functools
import json
import os
import secrets
import subprocess
import sys
import tempfile
from typing import Callable, Sequence

import numpy as np

from dlmjax.eval.tasks.code_cloze import held_out_files
from dlmjax.eval.tasks.harness import _stderr as harness_stderr

NAME = 'doctest_completion'
KIND = 'generation'  # metrics['kind']: macro averages over multiple-choice tasks leave it out
TIMEOUT_S = 20.0  # wall clock per check; the CPU limit is the same
MEMORY_BYTES = 2 << 30  # address space per check
BLOCK = 32  # the MDM's semi-autoregressive block (LLaDA's default), when it divides G
STUB = 'raise NotImplementedError\n'
TRIVIAL = (STUB, 'pass\n')  # bodies that do nothing: every problem's doctests must fail them

# Run in the child: compile the spliced file as a module, find the function by its qualified
# name, run the doctests of its docstring with the module's globals. The verdict goes to
# stdout after a nonce the parent chose, so nothing the body prints can forge it.
_CHILD = r'''
import contextlib, doctest, io, json, resource, sys, types
req = json.loads(sys.stdin.read())
limit = req['memory']
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
cpu = int(req['cpu'])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
out = sys.stdout
result = {'attempted': 0, 'failed': 0, 'error': ''}
try:
  module = types.ModuleType('_doctest_subject')
  module.__file__ = req['filename']
  sys.modules[module.__name__] = module
  exec(compile(req['source'], req['filename'], 'exec'), module.__dict__)
  obj = module
  for part in req['qualname'].split('.'):
    obj = getattr(obj, part)
  test = doctest.DocTestParser().get_doctest(
      obj.__doc__ or '', dict(module.__dict__), req['qualname'], req['filename'], 0)
  runner = doctest.DocTestRunner(verbose=False)
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    r = runner.run(test, out=lambda s: None)
  result.update(attempted=r.attempted, failed=r.failed)
except BaseException as e:
  result['error'] = type(e).__name__
out.write('\n' + req['nonce'] + json.dumps(result) + '\n')
out.flush()
'''


@dataclasses.dataclass(frozen=True)
class Problem:
  id: str  # FILE:LINE of the `def`
  file: str
  qualname: str  # Class.method or function
  prompt: str  # the file up to the end of the docstring, ending in a newline
  body: str  # the true body after the docstring (lines, newline-terminated)
  suffix: str  # the file after the function
  indent: int  # columns of the `def` line's indentation


def _functions(tree: ast.Module):
  """(qualname, node) of module-level functions and of methods of (nested) classes."""
  def walk(body, prefix):
    for node in body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        yield prefix + node.name, node
      elif isinstance(node, ast.ClassDef):
        yield from walk(node.body, prefix + node.name + '.')
  yield from walk(tree.body, '')


def candidates(val_fraction: float) -> list[Problem]:
  """Every function with doctest examples and a body after its docstring (unchecked)."""
  out = []
  for doc in sorted(held_out_files(val_fraction), key=lambda d: d.name):
    try:
      tree = ast.parse(doc.text)
    except SyntaxError:
      continue
    lines = doc.text.split('\n')
    for qualname, node in _functions(tree):
      docstring = ast.get_docstring(node)
      if not docstring or '>>>' not in docstring or len(node.body) < 2:
        continue
      head, end = node.body[0].end_lineno, node.end_lineno  # 1-based, inclusive
      if node.body[1].lineno <= head:  # a statement on the docstring's own line
        continue
      line = lines[node.lineno - 1]
      out.append(Problem(
          id=f'{doc.name}:{node.lineno}', file=doc.name, qualname=qualname,
          prompt=''.join(x + '\n' for x in lines[:head]),
          body=''.join(x + '\n' for x in lines[head:end]),
          suffix='\n'.join(lines[end:]), indent=len(line) - len(line.lstrip())))
  return out


def function_body(text: str, indent: int) -> str:
  """The generated text up to where the function ends: the first non-blank line indented
  `indent` columns or less (a tab counts as 8). Newline-terminated; '' if nothing is left."""
  kept = []
  for line in text.split('\n'):
    code = line.expandtabs(8)
    if code.strip() and len(code) - len(code.lstrip()) <= indent:
      break
    kept.append(line)
  while kept and not kept[-1].strip():
    kept.pop()
  return ''.join(x + '\n' for x in kept)


def one_line_body(problem: Problem, line: str) -> str:
  """`line` (newline-terminated) indented as the problem's body."""
  return ' ' * (problem.indent + 4) + line


def spliced(problem: Problem, body: str) -> str:
  """The problem's file with `body` in place of the true body (an empty body: the stub)."""
  if not body.strip():
    body = one_line_body(problem, STUB)
  return problem.prompt + body + problem.suffix


def check(problem: Problem, body: str) -> dict:
  """Runs the problem's doctests on the file with `body`: {'passed', 'attempted', 'failed',
  'error'} ('error': the exception type that stopped the run, 'Timeout' past TIMEOUT_S)."""
  nonce = secrets.token_hex(16)
  req = {'source': spliced(problem, body), 'qualname': problem.qualname, 'nonce': nonce,
         'filename': problem.file, 'memory': MEMORY_BYTES, 'cpu': TIMEOUT_S}
  with tempfile.TemporaryDirectory(prefix='dlmjax-doctest-') as scratch:
    try:
      proc = subprocess.run([sys.executable, '-I', '-c', _CHILD], input=json.dumps(req),
                            capture_output=True, text=True, timeout=TIMEOUT_S, cwd=scratch,
                            env={'PATH': os.environ.get('PATH', ''), 'PYTHONHASHSEED': '0',
                                 'HOME': scratch, 'TMPDIR': scratch})
    except subprocess.TimeoutExpired:
      return {'passed': False, 'attempted': 0, 'failed': 0, 'error': 'Timeout'}
  verdicts = [x[len(nonce):] for x in proc.stdout.split('\n') if x.startswith(nonce)]
  if not verdicts:
    return {'passed': False, 'attempted': 0, 'failed': 0,
            'error': f'exit status {proc.returncode}'}
  r = json.loads(verdicts[-1])
  return {'passed': not r['error'] and r['attempted'] > 0 and r['failed'] == 0, **r}


def check_all(problems: Sequence[Problem], bodies: Sequence[str]) -> list[dict]:
  """`check` of each (problem, body), in parallel processes, in order."""
  workers = max(1, min(len(problems), os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(check, problems, bodies))


@functools.lru_cache(maxsize=4)
def problems(val_fraction: float) -> tuple[Problem, ...]:
  """The task's problems: the candidates whose true body passes and every TRIVIAL body
  fails."""
  cands = candidates(val_fraction)
  if not cands:
    return ()
  bodies = [[p.body for p in cands]] + [[one_line_body(p, b) for p in cands] for b in TRIVIAL]
  passed_KxN = np.array([r['passed'] for r in check_all(cands * len(bodies), sum(bodies, []))]
                        ).reshape(len(bodies), len(cands))  # row 0 the true bodies
  keep_N = passed_KxN[0] & ~passed_KxN[1:].any(axis=0)
  return tuple(p for p, keep in zip(cands, keep_N) if keep)


def prompt_ids(tokenizer, problem: Problem, budget: int) -> list[int]:
  """BOS and the last `budget - 1` tokens of the prompt."""
  ids = tokenizer.encode(problem.prompt)
  return [tokenizer.bos_id] + ids[len(ids) - max(budget - 1, 0):]


def evaluate(generate: Callable[[list[list[int]]], list[list[int]]], tokenizer,
             items: Sequence[Problem], *, window: int, new_tokens: int) -> dict:
  """pass@1 of `generate` (prompt ids -> generated ids, one per prompt) on `items`: kind
  ('generation'), acc (the pass rate) and acc_stderr, items, chance 0, item_correct, empty (the fraction of
  generations with no body before the function ends; the stub is checked in its place),
  compiled (the fraction with a body the spliced file compiles with), errors (a count per
  exception type that stopped a check)."""
  prompts = [prompt_ids(tokenizer, p, window - new_tokens) for p in items]
  texts = [tokenizer.decode(ids) for ids in generate(prompts)] if items else []
  bodies = [function_body(t, p.indent) for t, p in zip(texts, items)]
  results = check_all(items, bodies) if items else []
  passed = np.array([r['passed'] for r in results], np.float64)
  empty = [not b.strip() for b in bodies]
  compiled = [not e and _compiles(spliced(p, b)) for p, b, e in zip(items, bodies, empty)]
  errors: dict[str, int] = {}
  for r in results:
    if r['error']:
      errors[r['error']] = errors.get(r['error'], 0) + 1
  n = len(items)
  acc = float(passed.mean()) if n else 0.0
  stderr = harness_stderr(passed)
  return {'kind': KIND, 'acc': acc, 'acc_stderr': stderr,
          'acc_norm': acc, 'acc_norm_stderr': stderr,  # pass@1 has nothing to normalise
          'items': n, 'chance': 0.0, 'item_correct': ''.join('1' if x else '0' for x in passed),
          'compiled': float(np.mean(compiled)) if n else 0.0,
          'empty': float(np.mean(empty)) if n else 0.0, 'errors': errors,
          'new_tokens': new_tokens}


def _compiles(source: str) -> bool:
  try:
    compile(source, '<spliced>', 'exec')
  except (SyntaxError, ValueError):
    return False
  return True
