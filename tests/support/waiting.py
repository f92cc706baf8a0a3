"""``wait_until``: the one polling loop with a deadline that the tests and benchmarks use."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    details: Callable[[], str] | None = None,
    interval: float = 0.5,
) -> T:
    """Call ``condition`` every ``interval`` seconds until it returns something truthy; that value.

    Args:
        condition: Checks once; may raise to give up early (a server that exited, say).
        timeout: Seconds to keep trying.
        what: What did not happen, for the failure message ("run X did not finish").
        details: Called on timeout for more to say (a daemon's log tail, a page's text).
        interval: Seconds between checks.

    Raises:
        AssertionError: ``condition`` stayed falsy for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    more = f"\n{details()}" if details else ""
    raise AssertionError(f"{what} within {timeout:g}s{more}")
