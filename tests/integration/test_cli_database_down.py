"""The operator CLI when the database server is down: one line, exit code 7, no traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.slapd import free_port

CLI = Path(sys.executable).with_name("openxpki-py")


@pytest.fixture
def config_without_database(make_instance: Callable[..., Any], pg_engine: Any, tmp_path: Path) -> Path:
    """A working instance on PostgreSQL, then pointed at a port where no server listens."""
    inst = make_instance(pg_engine)
    settings = yaml.safe_load(inst.config_path.read_text())
    settings["database"]["url"] = f"postgresql+psycopg://openxpki@127.0.0.1:{free_port()}/openxpki"
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.postgres
@pytest.mark.parametrize("command", [["workflow", "list"], ["ca", "list"], ["ca", "show"]])
def test_database_down_is_one_line_and_exit_code_7(config_without_database: Path, command: list[str]) -> None:
    result = subprocess.run([str(CLI), "--config", str(config_without_database), *command],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 7, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("openxpki-py: error [storage.unavailable]: the database cannot be reached")
    assert "database.url" in lines[0]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port where the TCP handshake succeeds (the kernel's backlog) and nothing ever answers.

    What a database host behind a firewall that drops packets, or a hung
    server, looks like to a client.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


@pytest.mark.postgres
def test_a_database_server_that_never_answers_is_an_error_within_seconds(
        make_instance: Callable[..., Any], pg_engine: Any, silent_server: int, tmp_path: Path) -> None:
    # libpq waits for ever without connect_timeout: the command (and a daemon thread) hung.
    inst = make_instance(pg_engine)
    settings = yaml.safe_load(inst.config_path.read_text())
    settings["database"]["url"] = f"postgresql+psycopg://openxpki@127.0.0.1:{silent_server}/openxpki"
    path = tmp_path / "silent.yaml"
    path.write_text(yaml.safe_dump(settings))
    started = time.monotonic()
    result = subprocess.run([str(CLI), "--config", str(path), "ca", "show"],
                            capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 7, result.stderr
    assert result.stderr.startswith("openxpki-py: error [storage.unavailable]: the database cannot be reached")
    assert "timeout" in result.stderr
    assert time.monotonic() - started < 60  # the default connect_timeout (10 s), with the CLI's own start
