"""`make demo` (contrib/demo/run_demo.py) keeps working: it is the README's main-job command."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_demo_personalizes_alices_card() -> None:
    folder = Path(tempfile.mkdtemp(prefix="openxpki-demo-test-"))
    folder.chmod(0o755)  # Apache (www-data) must reach the instance below it
    try:
        result = subprocess.run(
            [sys.executable, str(REPO / "contrib" / "demo" / "run_demo.py"), "--dir", str(folder / "demo"),
             "--venv", str(Path(sys.executable).parent.parent), "--port", "0"],
            capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        out = result.stdout + result.stderr
        assert "done: 2 certificates on the card" in out
        assert 'browser: "Your card is ready."' in out
        assert out.count("Certificate Object") == 2 and out.count("never extractable") == 2
        assert "smartcard_logon" in out and "encryption" in out
    finally:
        apachectl = folder / "demo" / "httpd" / "apachectl"
        if apachectl.exists():
            subprocess.run([str(apachectl), "stop"], capture_output=True, check=False, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
