"""`make demo CARD=openpgp|piv`: alice's card is a software card behind the real smartcard stack.

pcscd with vsmartcard's vpcd reader, and in the reader one of the software
cards the test suite uses (``tests/support/``): the OpenPGP card emulator
(PyPI ``smartcard-app-openpgp``, GPL-3+, in its own test-only venv made by
``tests/support/card_venv.py``) or the project's own PIV card
(``tests/support/virtual_piv.py``).  They are test support, not part of the
product: the demo borrows them so that the agent meets a card through
pcscd and OpenSC exactly as on a user's PC.

Only one pcscd can run on a machine: the stack is taken under the same
machine-wide lock the tests use, and stopped when the demo has shown the
card (the server keeps running).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from support import smartcards  # noqa: E402 - the tests' folder is put on the path just above
from support.card_venv import ensure_card_venv  # noqa: E402
from support.vpcd import VPCD_PORT  # noqa: E402

CARDS = ("openpgp", "piv")
PIN, SO_PIN = "123456", "12345678"  # the software cards' factory PINs (PIV: PIN and PUK)
_LOCK_WAIT = 600.0


class VirtualCardStack:
    """pcscd (unless one runs already, e.g. a test's) and one software card in vpcd's reader."""

    def __init__(self, kind: str, folder: Path, *, own_pcscd: bool = True) -> None:
        if kind not in CARDS:
            raise ValueError(f"card {kind!r}: one of {', '.join(CARDS)}")
        self.kind = kind
        self.folder = folder
        self.own_pcscd = own_pcscd
        self._lock: IO[str] | None = None
        self._pcscd: subprocess.Popen[bytes] | None = None
        self._card: subprocess.Popen[bytes] | None = None

    # --- start and stop -----------------------------------------------------------------

    def __enter__(self) -> VirtualCardStack:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            if self.own_pcscd:
                self._start_pcscd()
            self._insert_card()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._card is not None:
            smartcards._stop_group(self._card)
            self._card = None
        if self._pcscd is not None:
            smartcards._stop_group(self._pcscd)
            smartcards._PID_FILE.unlink(missing_ok=True)
            self._pcscd = None
        if self._lock is not None:
            self._lock.close()  # releases the machine-wide lock
            self._lock = None

    def _start_pcscd(self) -> None:
        why = smartcards.stack_missing()
        if why:
            raise RuntimeError(f"the virtual card needs the smartcard stack: {why}; run `make test-deps`")
        smartcards._LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(smartcards._LOCK_FILE, "w", encoding="ascii")  # noqa: SIM115 - held until close()
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"a test run holds the smartcard stack ({smartcards._LOCK_FILE}); "
                                       "try again when it is done") from None
                time.sleep(0.5)
        smartcards._kill_stale_pcscd()
        if smartcards._other_pcscd() or smartcards._port_listening(VPCD_PORT):
            raise RuntimeError("another pcscd is running: only one can run on a machine; stop it first")
        assert smartcards.PCSCD is not None
        Path("/run/pcscd").mkdir(parents=True, exist_ok=True)
        with open(self.folder / "pcscd.log", "wb") as out:
            self._pcscd = subprocess.Popen([smartcards.PCSCD, "--foreground"], stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        smartcards._PID_FILE.write_text(str(self._pcscd.pid), encoding="ascii")
        deadline = time.monotonic() + 15
        while not smartcards._port_listening(VPCD_PORT):
            if self._pcscd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pcscd did not open vpcd's port: see {self.folder / 'pcscd.log'}")
            time.sleep(0.05)

    def _insert_card(self) -> None:
        if self.kind == "openpgp":
            command = [str(ensure_card_venv()), str(smartcards.HERE / "virtual_openpgp.py")]
        else:
            from support.virtual_piv import make_attestation_root

            root_key, root_cert = make_attestation_root(self.folder)
            command = [sys.executable, str(smartcards.HERE / "virtual_piv.py"),
                       "--attestation-root-key", str(root_key), "--attestation-root-cert", str(root_cert)]
        with open(self.folder / f"{self.kind}-card.log", "wb") as out:
            self._card = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=smartcards.HERE)
        deadline = time.monotonic() + 30
        while not self._card_present():
            if self._card.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {self.kind} card never showed up: see {self.folder}/{self.kind}-card.log")
            time.sleep(0.1)

    @staticmethod
    def _card_present() -> bool:
        assert smartcards.OPENSC_TOOL is not None
        listing = subprocess.run([smartcards.OPENSC_TOOL, "-l"], capture_output=True, text=True, timeout=30,
                                 check=False).stdout
        return any(line.split()[:2] == ["0", "Yes"] for line in listing.splitlines())

    # --- what the agent and the demo need -----------------------------------------------

    def agent_options(self) -> list[str]:
        """The agent's card options: PIN files; the profile is detected (``auto``)."""
        (self.folder / "pin").write_text(PIN + "\n")
        (self.folder / "pin").chmod(0o600)
        options = ["--pin-file", str(self.folder / "pin")]
        if self.kind == "openpgp":  # the admin PIN generates keys and writes certificates
            (self.folder / "so-pin").write_text(SO_PIN + "\n")
            (self.folder / "so-pin").chmod(0o600)
            options += ["--so-pin-file", str(self.folder / "so-pin")]
        return options

    def list_objects(self) -> str:
        """The card as a user's application sees it: OpenSC's PKCS#11 module."""
        return subprocess.run(["pkcs11-tool", "--module", str(smartcards.OPENSC_MODULE), "--login", "--pin", PIN,
                               "--list-objects"], capture_output=True, text=True, timeout=60, check=False,
                              env={k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}).stdout
