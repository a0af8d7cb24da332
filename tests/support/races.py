"""Making a count-then-record race certain in a test, instead of hoping the scheduler finds it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def then_wait(call: Callable[..., Any], barrier: threading.Barrier,
              when: Callable[..., bool] = lambda *args, **kwargs: True) -> Callable[..., Any]:
    """``call``, after which each caller waits for the others at ``barrier`` (for the calls ``when`` picks).

    With the race open, every caller has counted before any records; with it
    closed by a lock, the others wait for the holder's commit, the barrier
    runs out (its timeout) and breaks, and each goes on alone.
    """
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        if when(*args, **kwargs):
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass  # the others wait for this one's lock: the fixed code
        return result
    return wrapped
