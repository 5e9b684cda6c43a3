"""Test session set-up: token stores go to a temporary cache, never the user's."""

import os
import tempfile


def pytest_configure(config):
  # Subprocesses (the CLI tests) inherit it, so the stdlib store is built once per session.
  os.environ.setdefault('DLMJAX_CACHE', tempfile.mkdtemp(prefix='dlmjax-test-cache-'))
