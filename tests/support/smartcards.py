"""The real smartcard stack for tests (a pytest plugin): pcscd, vpcd, a software card.

A user's card reaches the agent through pcscd (the PC/SC daemon), a reader
driver and OpenSC.  Here the reader is vsmartcard's ``vpcd`` (Debian
``vsmartcard-vpcd``, configured in /etc/reader.conf.d/vpcd): it listens on
127.0.0.1:35963 and whatever program connects is the card in reader 0.

* ``pcscd`` (per test module): starts ``pcscd --foreground`` in its own process
  group and stops it at the end.  Only one pcscd can run on a machine, so
  the fixture first takes a machine-wide lock (a second test run waits for
  the first one's pcscd to stop instead of killing it; per module, so
  runs in parallel take turns instead of one holding the reader for a
  whole suite); a stale one this
  plugin started (its pid file) is then killed, anyone else's is reported,
  never killed.
* ``openpgp_card`` / ``piv_card`` (per test): a fresh card, inserted once
  ``opensc-tool -l`` shows it, removed after the test.  The OpenPGP card is
  PyPI ``smartcard-app-openpgp`` from its own venv (``card_venv.py``), the
  PIV card the project's own ``virtual_piv.py``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from .card_venv import ensure_card_venv
from .vpcd import VPCD_PORT

HERE = Path(__file__).resolve().parent
OPENSC_TOOL = shutil.which("opensc-tool")
PCSCD = shutil.which("pcscd") or ("/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None)
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
OPENSC_MODULE = Path("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so")
_PID_FILE = Path("/run/openxpki-py-tests/pcscd.pid")
_LOCK_FILE = _PID_FILE.with_name("pcscd.lock")
_LOCK_WAIT = 1800.0  # a whole other suite may hold the reader
_LISTEN = "0A"  # TCP state in /proc/net/tcp


def stack_missing() -> str | None:
    """Why the smartcard stack cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "pcscd needs root here (its socket lives in /run/pcscd)"
    for what, present in (("pcscd", PCSCD), ("vsmartcard-vpcd", VPCD_DRIVER.exists()),
                          ("opensc", OPENSC_TOOL and OPENSC_MODULE.exists())):
        if not present:
            return f"Debian package {what} is not installed (contrib/install/debian-deps.sh)"
    return None


def _port_listening(port: int) -> bool:
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue
        if any(f[1].endswith(wanted) and f[3] == _LISTEN for f in (line.split() for line in lines)):
            return True
    return False


def _other_pcscd() -> list[int]:
    """Pids of pcscd processes (seen, not touched: they are not ours)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text(encoding="ascii").strip() != "pcscd":
                    continue
                # A zombie (exited, not yet reaped by its parent) holds no reader and no port.
                if (proc / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()[0] == "Z":
                    continue
                found.append(int(proc.name))
            except (OSError, IndexError):
                continue
    return found


def _stop_group(process: subprocess.Popen[bytes] | int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, to the process group a process of ours leads."""
    pid = process if isinstance(process, int) else process.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        if isinstance(process, int):  # not our child (a stale pcscd): watch /proc
            deadline = time.monotonic() + timeout
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not Path(f"/proc/{pid}").exists():
                return
        else:
            try:
                process.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                continue
    if not isinstance(process, int):
        process.wait()


def _kill_stale_pcscd() -> None:
    """A pcscd a crashed earlier run of this plugin left behind (its recorded pid only)."""
    try:
        pid = int(_PID_FILE.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return
    try:
        comm = Path(f"/proc/{pid}/comm").read_text(encoding="ascii").strip()
    except OSError:
        comm = ""
    if comm == "pcscd":
        _stop_group(pid)
    _PID_FILE.unlink(missing_ok=True)


@dataclass
class Pcscd:
    process: subprocess.Popen[bytes]
    log: Path

    def readers(self) -> str:
        assert OPENSC_TOOL is not None
        return subprocess.run([OPENSC_TOOL, "-l"], capture_output=True, text=True, timeout=30,
                              check=False).stdout

    def card_present(self) -> bool:
        # Reader 0 is vpcd's first slot, the one on port 35963.
        return any(line.split()[:2] == ["0", "Yes"] for line in self.readers().splitlines())

    def wait_for_card(self, present: bool, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.card_present() != present:
            if self.process.poll() is not None:
                raise AssertionError(f"pcscd died:\n{self.log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the card is still {'absent' if present else 'present'} after "
                                     f"{timeout:.0f} s:\n{self.readers()}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    why = stack_missing()
    if why:
        pytest.skip(why)
    assert PCSCD is not None
    _LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(_LOCK_FILE, "w", encoding="ascii") as lock:
        _take_machine_lock(lock)
        yield from _run_pcscd(tmp_path_factory)


def _take_machine_lock(lock: IO[str]) -> None:
    """Wait until no other test run on this machine holds pcscd (released when its file closes)."""
    deadline = time.monotonic() + _LOCK_WAIT
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                pytest.fail(f"another test run has held the smartcard stack ({_LOCK_FILE}) for "
                            f"{_LOCK_WAIT:.0f} s; stop it and run again")
            time.sleep(0.5)


def _run_pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    assert PCSCD is not None
    _kill_stale_pcscd()
    others = _other_pcscd()
    if others or _port_listening(VPCD_PORT):
        pytest.fail(f"another pcscd is running (pids {others}) or port {VPCD_PORT} is taken: only one "
                    "pcscd can run on a machine; stop it and run again")
    log = tmp_path_factory.mktemp("pcscd") / "pcscd.log"
    Path("/run/pcscd").mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        # Its own session (process group): stopped as a whole, never by name.
        process = subprocess.Popen([PCSCD, "--foreground"], stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    _PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    _PID_FILE.write_text(str(process.pid), encoding="ascii")
    try:
        deadline = time.monotonic() + 15
        while not _port_listening(VPCD_PORT):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"pcscd did not open vpcd's port {VPCD_PORT}:\n"
                            f"{log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield Pcscd(process, log)
    finally:
        _stop_group(process)
        _PID_FILE.unlink(missing_ok=True)


@dataclass
class VirtualCardProcess:
    """One inserted software card; PINs are the card's factory defaults."""

    kind: str
    process: subprocess.Popen[bytes]
    log: Path
    pin: str = "123456"
    so_pin: str = "12345678"
    extra: dict[str, Path] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _insert(pcscd: Pcscd, kind: str, command: list[str], log: Path) -> VirtualCardProcess:
    if pcscd.card_present():  # a card a failed test left in the reader
        pcscd.wait_for_card(False)
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=HERE)
    card = VirtualCardProcess(kind, process, log)
    deadline = time.monotonic() + 20
    while not pcscd.card_present():
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_group(process)
            raise AssertionError(f"the {kind} card never showed up:\n{card.output()}")
        time.sleep(0.05)
    return card


def _remove(pcscd: Pcscd, card: VirtualCardProcess) -> None:
    _stop_group(card.process)
    pcscd.wait_for_card(False)


@pytest.fixture(scope="session")
def openpgp_card_python() -> Path:
    try:
        return ensure_card_venv()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"cannot build the OpenPGP card emulator's venv: {exc}")


@pytest.fixture
def openpgp_card(pcscd: Pcscd, openpgp_card_python: Path, tmp_path: Path) -> Iterator[VirtualCardProcess]:
    """A new OpenPGP v3.4 card (user PIN 123456, admin PIN 12345678) in vpcd's reader."""
    card = _insert(pcscd, "OpenPGP", [str(openpgp_card_python), str(HERE / "virtual_openpgp.py")],
                   tmp_path / "openpgp-card.log")
    yield card
    _remove(pcscd, card)


@pytest.fixture(scope="session")
def piv_attestation_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A test attestation root (key, certificate), like Yubico's PIV attestation CA."""
    from .virtual_piv import make_attestation_root

    folder = tmp_path_factory.mktemp("piv-attestation")
    return make_attestation_root(folder)


@pytest.fixture
def make_piv_card(pcscd: Pcscd, piv_attestation_ca: tuple[Path, Path],
                  tmp_path: Path) -> Iterator[Callable[..., VirtualCardProcess]]:
    """``make_piv_card(*options)``: a new PIV card (PIN 123456, PUK 12345678, default 3DES key)."""
    inserted: list[VirtualCardProcess] = []
    root_key, root_cert = piv_attestation_ca

    def make(*options: str) -> VirtualCardProcess:
        for old in inserted:
            _remove(pcscd, old)
        inserted.clear()
        card = _insert(pcscd, "PIV", [sys.executable, str(HERE / "virtual_piv.py"),
                                      "--attestation-root-key", str(root_key),
                                      "--attestation-root-cert", str(root_cert), *options],
                       tmp_path / f"piv-card-{len(inserted)}.log")
        card.so_pin = "010203040506070801020304050607080102030405060708"
        card.extra = {"attestation_root": root_cert}
        inserted.append(card)
        return card

    yield make
    for card in inserted:
        _remove(pcscd, card)


@pytest.fixture
def piv_card(make_piv_card: Callable[..., VirtualCardProcess]) -> VirtualCardProcess:
    return make_piv_card()
