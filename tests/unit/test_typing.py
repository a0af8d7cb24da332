"""Both distributions type-check under the project's own mypy config (strict, in setup.cfg)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_config_is_strict_and_covers_both_packages() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config.getboolean("mypy", "strict")
    files = {f.strip() for f in config.get("mypy", "files").split(",")}
    assert files == {"openxpki_py", "packages/openxpki-py-token/openxpki_py_token"}
    # Only third-party modules may have their missing types ignored, never ours.
    for section in config.sections():
        if config.has_option(section, "ignore_missing_imports"):
            assert "openxpki" not in section, section


def test_mypy_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
