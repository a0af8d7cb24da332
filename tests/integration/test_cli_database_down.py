"""The operator CLI when the database server is down: one line, exit code 7, no traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
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
