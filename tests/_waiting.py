"""Waiting for a condition with a generous deadline, never for a fixed time.

A test waits for what it needs to have happened -- a readiness line, a
subscription, a position reached -- instead of sleeping and hoping it did:
a loaded machine then only makes the test slower, never wrong.  The deadline
is far beyond any healthy wait; it only turns a hang into a failure sooner
than pytest-timeout would.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

#: Seconds to wait for a condition before calling it a failure.
DEADLINE = 60.0
#: Seconds between looks at the condition.
INTERVAL = 0.01


def wait_for(condition: Callable[[], object], timeout: float = DEADLINE,
             what: str = "the condition") -> None:
    """Return once `condition()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(INTERVAL)


async def wait_until(condition: Callable[[], object], timeout: float = DEADLINE,
                     what: str = "the condition") -> None:
    """:func:`wait_for` in a task: checks between sleeps of the event loop."""
    try:
        with anyio.fail_after(timeout):
            while not condition():
                await anyio.sleep(INTERVAL)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
