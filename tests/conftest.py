"""Test session set-up: token stores go to a temporary cache, never the user's, compiled
programs to a session-wide JAX compilation cache, and XLA compiles without optimising."""

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
  # The micro models' compiles dominate the suite; XLA's CPU backend without its optimisation
  # passes compiles them in about half the time. Every comparison (sharded against one device,
  # kernel against reference, resumed against whole) has both sides compiled alike. The
  # 8-device subprocesses set XLA_FLAGS of their own and keep the default level, so the
  # memory estimate is checked against XLA's optimised buffer assignment.
  flags = os.environ.get('XLA_FLAGS', '')
  if '--xla_backend_optimization_level' not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} --xla_backend_optimization_level=0'.strip()
