"""Errors caused by the user's input (config, paths, data), reported as one line.

Command-line entry points wrap their body in `exit_on_user_error`, so a mistake in a
config key, a file path or a budget prints `error: ...` and exits with code 2 instead of
a traceback. Bugs in dlmjax itself still raise normally.
"""

from __future__ import annotations

import contextlib
import sys


class UserError(Exception):
  """A mistake in the user's input; the message names the bad key, file or value."""


class ConfigError(UserError):
  """An unknown config key, a wrong type or an impossible combination."""


@contextlib.contextmanager
def exit_on_user_error():
  try:
    yield
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
