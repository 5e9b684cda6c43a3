"""Test session set-up: token stores go to a temporary cache, never the user's, and compiled
programs to a session-wide JAX compilation cache."""

import os
import tempfile


def pytest_configure(config):
  # Subprocesses (the CLI tests) inherit it, so the stdlib store is built once per session.
  os.environ.setdefault('DLMJAX_CACHE', tempfile.mkdtemp(prefix='dlmjax-test-cache-'))
  # Many tests (and the runs their subprocesses start) compile the same micro model's steps;
  # the xdist workers and every subprocess share one cache for the session. The executable
  # loaded from it is the one a compile would give: no test's numbers depend on it.
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='dlmjax-test-jax-'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
