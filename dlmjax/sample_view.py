"""The terminal view of `python -m dlmjax.sample`: the answer redrawn after every step (rich).

A diffusion model's answer starts as mask glyphs (▒) that fill in step by step, the tokens
committed at the latest step highlighted; an AR model's answer streams token by token. Off a
terminal (a log, a pipe) only the final texts are printed.

Legend: B prompts, G generated length.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from dlmjax.data.tokenizer import EOS_ID, MASK_ID, PAD_ID, Tokenizer

# Styles of an answer position, in the order `_classes` numbers them.
_SETTLED, _NEW, _MASKED, _EOS, _EMPTY = range(5)
_STYLE = {_SETTLED: '', _NEW: 'bold green', _MASKED: 'grey42', _EOS: 'dim italic'}


def want_live(view: str) -> bool:
  return view == 'live' or (view == 'auto' and sys.stdout.isatty())


class SampleView:
  """`with SampleView(...) as v: out = sample(..., on_step=v.update); v.finish(out.tokens)`."""

  def __init__(self, tokenizer: Tokenizer, prompts: list[str], *, causal: bool, opts,
               live: bool, delay: float = 0.0):
    self.tok = tokenizer
    self.prompts = prompts
    self.causal = causal
    self.opts = opts
    self.delay = delay
    self.paused_seconds = 0.0  # time slept for the animation, to leave out of throughput
    g = opts.max_new_tokens
    self.answer_BxG = np.full((len(prompts), g), PAD_ID if causal else MASK_ID, np.int32)
    self.new_BxG = np.zeros_like(self.answer_BxG, bool)
    self.step = -1
    self.console = Console()
    self.live = live
    self._live = Live(console=self.console, auto_refresh=False) if live else None

  def __enter__(self) -> 'SampleView':
    if self._live is not None:
      self._live.start()
      self._live.update(self.render(), refresh=True)
    return self

  def __exit__(self, *exc) -> None:
    if self._live is not None:
      self._live.stop()

  def update(self, step: int, tokens: np.ndarray) -> None:
    """The sampler's per-step callback: AR [B, 1] (column `step`), DLM [B, G] (the answer)."""
    self.step = step
    if self.causal:
      self.new_BxG[:] = False
      self.answer_BxG[:, step] = tokens[:, 0]
      self.new_BxG[:, step] = True
    else:
      self.new_BxG = tokens != self.answer_BxG
      self.answer_BxG = np.array(tokens, np.int32)
    if self._live is not None:
      self._live.update(self.render(), refresh=True)
      if self.delay > 0:
        t0 = time.perf_counter()
        time.sleep(self.delay)
        self.paused_seconds += time.perf_counter() - t0

  def finish(self, tokens_BxG: np.ndarray) -> None:
    """Shows the final answers (after EOS handling): the last live frame, or plain text."""
    self.answer_BxG = np.asarray(tokens_BxG, np.int32)
    self.new_BxG[:] = False
    if self._live is not None:
      self._live.update(self.render(), refresh=True)
      return
    for i, prompt in enumerate(self.prompts):
      if len(self.prompts) > 1:
        print(f'--- prompt {i + 1} ---')
      print(prompt + self.tok.decode(self.answer_BxG[i]))

  def _header(self) -> Text:
    o = self.opts
    if self.causal:
      where = f'token {self.step + 1}/{o.max_new_tokens}'
    else:
      blocks = o.max_new_tokens // o.block
      where = f'step {self.step + 1}/{o.num_steps}'
      if blocks > 1:
        block = min(self.step // (o.num_steps // blocks) + 1, blocks) if self.step >= 0 else 1
        where += f'  block {block}/{blocks}'
    kind = 'AR, KV cache' if self.causal else f'DLM, {o.remasking} remasking'
    return Text(f'{kind}  {where}', style='bold')

  def _classes(self, row: int) -> np.ndarray:
    ids_G = self.answer_BxG[row]
    cls_G = np.full(ids_G.shape, _SETTLED)
    cls_G[self.new_BxG[row]] = _NEW
    cls_G[ids_G == MASK_ID] = _MASKED
    cls_G[ids_G == EOS_ID] = _EOS
    cls_G[ids_G == PAD_ID] = _EMPTY
    return cls_G

  def _answer_text(self, row: int) -> Text:
    """The answer as styled runs: one decode per run of positions of one class."""
    ids_G, cls_G = self.answer_BxG[row], self._classes(row)
    text = Text()
    cuts = np.flatnonzero(np.diff(cls_G)) + 1
    for ids, cls in zip(np.split(ids_G, cuts), np.split(cls_G, cuts)):
      if cls[0] == _EMPTY:
        continue
      piece = '<eos>' * len(ids) if cls[0] == _EOS else self.tok.decode(ids)
      text.append(piece, style=_STYLE[cls[0]])
    return text

  def render(self) -> Group:
    panels = []
    for i, prompt in enumerate(self.prompts):
      body = Text()
      body.append(prompt, style='cyan')
      body.append_text(self._answer_text(i))
      panels.append(Panel(body, title=f'prompt {i + 1}' if len(self.prompts) > 1 else None,
                          title_align='left'))
    return Group(self._header(), *panels)
