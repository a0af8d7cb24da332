"""``Services`` builds each part once per process, even when threads race for it."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from openxpki_py import directory as directory_package
from openxpki_py.services import Services


def test_each_part_is_built_once_when_threads_race(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []

    def slow_open(config: Any) -> object:
        built.append(threading.get_ident())
        time.sleep(0.05)  # wide window: without the lock every thread builds its own
        return object()

    monkeypatch.setattr(directory_package, "open_directory", slow_open)
    services = Services(SimpleNamespace(directory=object()))  # type: ignore[arg-type]
    barrier = threading.Barrier(8)
    seen: list[object] = []

    def ask() -> None:
        barrier.wait()
        seen.append(services.directory)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1
    assert len({id(s) for s in seen}) == 1
    # Closed parts are built again on the next use.
    services.close()
    assert services.directory is not seen[0] and len(built) == 2
