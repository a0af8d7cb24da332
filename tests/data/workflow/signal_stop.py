"""Stop a worker's loop with SIGTERM, ROUNDS times in one process; exit 0 if every stop returned.

    python signal_stop.py ROUNDS

Each round runs :meth:`Worker.run` (its rounds find nothing and its poll is
zero, so the loop is nearly all the wait's own code) and a thread sends the
process SIGTERM after a random pause.  On the ``threading.Event`` the worker
had, one of a few hundred signals landed while the wait held its lock.  A stop that never returns is
reported and the process exits 1 (the test's timeout is the other guard).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

from openxpki_py.workflow.worker import Worker


def one_round(rng: random.Random, number: int) -> None:
    engine: Any = SimpleNamespace(config=SimpleNamespace(poll_interval=0.0, batch_size=1))
    worker = Worker(engine)
    returned = threading.Event()
    rounds = 0

    def nothing_due() -> int:  # the first round starts the signal: the handler is this worker's by then
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            threading.Thread(target=signal_later, daemon=True).start()
        return 0

    def signal_later() -> None:
        time.sleep(rng.uniform(0.0005, 0.003))
        os.kill(os.getpid(), signal.SIGTERM)

    worker.run_once = nothing_due  # type: ignore[method-assign]
    threading.Thread(target=lambda: returned.wait(5) or hung(number), daemon=True).start()
    worker.run()
    returned.set()


def hung(number: int) -> None:
    print(f"round {number}: the worker did not stop within 5 s of SIGTERM", flush=True)
    os._exit(1)


def main(rounds: int) -> int:
    rng = random.Random(20261207)
    for number in range(1, rounds + 1):
        one_round(rng, number)
    print("all stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
