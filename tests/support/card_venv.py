"""The OpenPGP card emulator's own virtualenv (test-only, GPL-3+).

PyPI ``smartcard`` + ``smartcard-app-openpgp`` emulate an OpenPGP card; they
are GPL-3+ and never become a dependency of the project: they live in a
separate venv made from Debian's ``/usr/bin/python3`` (with system site
packages, so ``cryptography`` comes from Debian if present).  Made once,
then reused while :data:`REQUIREMENTS` stay the same (a stamp file), under a
lock so that two test runs never build it at once.

``make test-deps`` builds it (``contrib/install/debian-deps.sh --with-tests``
runs this file); the card fixture builds it too when it is missing::

    python tests/support/card_venv.py [VENV]
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

REQUIREMENTS = ("smartcard==0.3", "smartcard-app-openpgp==0.4.0", "ZODB")
DEFAULT_VENV = Path(os.environ.get("OPENXPKI_PY_CARD_VENV", "/opt/openxpki-py/venv-openpgp-card"))
_STAMP = ".openxpki-py-card-emulator"


def ensure_card_venv(venv: Path = DEFAULT_VENV) -> Path:
    """The venv's python, built or brought up to date first if needed."""
    python = venv / "bin" / "python"
    want = " ".join(REQUIREMENTS)
    stamp = venv / _STAMP
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8").strip() == want:
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8").strip() == want):
            if not python.exists():
                subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                               check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
            stamp.write_text(want + "\n", encoding="utf-8")
    return python


if __name__ == "__main__":
    print(ensure_card_venv(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_VENV))
