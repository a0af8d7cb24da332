"""SIGTERM stops a worker whatever its loop was doing when the signal came.

The worker's stop was a ``threading.Event``, set by the signal handler.  A
handler runs on the main thread, and ``Event.wait`` holds the event's lock
around its timed wait: a SIGTERM that arrived while the loop held it made
``Event.set`` wait for its own thread.  The worker then never stopped (CI:
``test_worker_killed_inside_activity_is_recovered`` timed out, once).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "data" / "workflow" / "signal_stop.py"


def test_every_sigterm_stops_the_worker_loop() -> None:
    # A thousand stops in one process (about 3 s); the Event lost one within the first few rounds.
    done = subprocess.run([sys.executable, str(SCRIPT), "1000"], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "all stopped"), done.stdout + done.stderr
