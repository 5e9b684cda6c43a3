"""The fault suite's counters: each test adds what it injected and what it saw, and the
session ends with one summary line (kills survived, inputs fuzzed, tracebacks, runs lost)."""

import collections

import pytest

COUNTS: collections.Counter = collections.Counter()


@pytest.fixture
def counts() -> collections.Counter:
  return COUNTS


def pytest_terminal_summary(terminalreporter):
  if COUNTS:
    terminalreporter.write_sep('-', 'fault injection: ' + ', '.join(
        f'{k}={v}' for k, v in sorted(COUNTS.items())))


def pytest_collection_modifyitems(items):
  # Everything under tests/faults is the fault suite (`make test-faults`), not `make test`.
  here = __file__.rsplit('/', 1)[0]
  for item in items:
    if str(item.fspath).startswith(here):
      item.add_marker(pytest.mark.faults)
