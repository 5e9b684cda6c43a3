"""Process settings that make training on a CPU-only host fast (applied on `import dlmjax`).

XLA's CPU runtime allocates a scratch buffer of ~150 MB for the tiny preset's train step and
frees it again every step. glibc serves allocations that large with mmap and returns them to
the OS on free, so every step paid ~45,000 page faults (~55 ms of a ~130 ms step, measured
with /usr/bin/time on the 2-core development machine). Keeping freed memory in the heap
instead removes the faults: the step drops to ~105 ms. The cost is that the process keeps its
peak heap until it exits, which is what a training process does anyway.

glibc reads these settings when its arenas are set up, so they must be applied before jax
is imported: `dlmjax/__init__.py` does it when no accelerator is attached (no NVIDIA or TPU
device files). Set DLMJAX_MALLOC=default to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


@functools.cache
def keep_freed_memory() -> bool:
  """Tells glibc malloc never to use mmap or give freed memory back; False if not glibc."""
  name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(name or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  ok = True
  for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)):
    ok &= bool(mallopt(param, value))
  return ok


def has_accelerator() -> bool:
  """Whether a GPU or TPU is attached, judged by device files (jax is not imported yet)."""
  return bool(glob.glob('/dev/nvidia[0-9]*') or glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def tune_for_host() -> bool:
  """Applies the CPU settings on a host with no accelerator; returns whether it did."""
  if os.environ.get('DLMJAX_MALLOC', '') == 'default' or has_accelerator():
    return False
  return keep_freed_memory()
