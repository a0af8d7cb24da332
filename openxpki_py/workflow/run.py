"""One engine call's worklist: which claimed workflows to move on next.

A manual action, a start, an operator retry or a worker's claim creates a
:class:`Run`.  Each workflow the run claims (the one acted on, forked
children, a parent woken by its last child) is queued and stepped until it
waits for a person, for children, for a retry, or is final.  The claimant
string is unique per run, so a claim is never mistaken for another run's.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


def new_claimant() -> str:
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(6)}"


@dataclass
class Run:
    actor: str  # recorded in history for the automatic steps this run makes
    role: str
    claimant: str = field(default_factory=new_claimant)
    queue: deque[int] = field(default_factory=deque)
    steps: dict[int, int] = field(default_factory=dict)
    should_stop: Callable[[], bool] = lambda: False
    # Where a queued workflow was left, as far as this run saw it: (type, state).  Only a hint for
    # the engine to rehearse a reads-only step (engine.drain); the step itself reads the row again.
    expected: dict[int, tuple[str, str]] = field(default_factory=dict)

    def enqueue(self, *workflow_ids: int) -> None:
        for wf_id in workflow_ids:
            if wf_id not in self.queue:
                self.queue.append(wf_id)

    def expect(self, wf_id: int, wf_type: str, state: str) -> None:
        self.expected[wf_id] = (wf_type, state)

    def count_step(self, wf_id: int) -> int:
        self.steps[wf_id] = self.steps.get(wf_id, 0) + 1
        return self.steps[wf_id]
