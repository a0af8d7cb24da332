"""SoftHSM2 tokens for tests (a pytest plugin, listed in ``tests/conftest.py``).

``softhsm`` (session): a private SOFTHSM2_CONF and token folder in a fresh
temp folder, exported as ``SOFTHSM2_CONF`` for the whole test session (the
library reads it when initialised, so one value per process).
``make_token(label, pin="1234", so_pin="12345678")``: a freshly initialised
token, deleted again after the test.
``pkcs11_session_leak_check``: fails a test that leaves PKCS#11 sessions open
(counted by ``openxpki_py_token.pkcs11.module``).
``SoftHSMToken.hung()``: while the block runs, SoftHSM's calls on the token's
keys wait, as an HSM that stopped answering does (see there).

The folders are world-traversable so an Apache fixture (``www-data``) can
use the same tokens: pass ``owner="www-data"`` to ``make_token``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openxpki_py_token.secret import SecretRef

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
SOFTHSM_UTIL = shutil.which("softhsm2-util") or "/usr/bin/softhsm2-util"


@dataclass(frozen=True)
class SoftHSM:
    """The test session's SoftHSM installation."""

    base: Path
    conf: Path
    token_dir: Path
    module: Path = SOFTHSM_MODULE

    def util(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SOFTHSM2_CONF": str(self.conf)}
        result = subprocess.run([SOFTHSM_UTIL, *args], env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"softhsm2-util {' '.join(args)} failed: {result.stderr.strip()}")
        return result


@dataclass(frozen=True)
class SoftHSMToken:
    """One initialised token: what a config needs to reach it."""

    softhsm: SoftHSM
    label: str
    pin: str
    so_pin: str

    @property
    def module(self) -> Path:
        return self.softhsm.module

    def write_pin(self, path: Path | None = None, pin: str | None = None) -> Path:
        """Write the PIN (or another one) to a file with mode 0600, as config would name it."""
        if path is None:
            path = self.softhsm.base / (f"{self.label}.pin" if pin is None else f"{self.label}.other.pin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write((self.pin if pin is None else pin) + "\n")
        return path

    def ca_settings(self, root: Path, subject: str) -> dict[str, Any]:
        """A config's ``ca`` section with this token's key ``ca-signing`` (``openxpki-py ca init`` makes it)."""
        return {
            "key": {"backend": "pkcs11", "algorithm": "rsa-2048", "module": str(self.module),
                    "token_label": self.label, "key_label": "ca-signing",
                    "pin_file": str(self.write_pin(root / "ca.pin"))},
            "subject": subject,
            "crl": {"publish_dir": str(root / "crl")},
            "profile_variables": {"organization": "Example Corp", "country": "DE"},
        }

    def pin_ref(self, pin: str | None = None) -> SecretRef:
        """A SecretRef to a PIN file, as ``ca.key.pin_file`` would give."""
        return SecretRef("ca.key.pin_file", file=self.write_pin(pin=pin))

    def delete(self) -> None:
        self.softhsm.util("--delete-token", "--token", self.label)

    def folder(self) -> Path:
        """The token's folder in SoftHSM's token directory (named by a UUID; the label is in token.object)."""
        padded = self.label.encode().ljust(32)
        for candidate in self.softhsm.token_dir.glob("*/token.object"):
            if padded in candidate.read_bytes():
                return candidate.parent
        raise RuntimeError(f"no folder for token {self.label!r} in {self.softhsm.token_dir}")

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """SoftHSM blocks inside every call that uses one of the token's stored objects (C_Sign …).

        Another process takes the token's lock files and marks the token and
        its objects changed (their generation counters, as SoftHSM does when
        a process writes them): SoftHSM then reloads an object before using
        it and waits for its lock, inside the PKCS#11 call, until the block
        ends.
        """
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_TOKEN, str(self.folder())], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
            yield
        finally:
            assert holder.stdin is not None
            holder.stdin.close()  # the holder lets go when its stdin ends
            holder.wait(timeout=30)
            assert holder.stdout is not None
            holder.stdout.close()


# Run by SoftHSMToken.hung() in a process of its own (fcntl locks do not exclude their own process).
_HOLD_TOKEN = """
import fcntl, sys
from pathlib import Path
folder = Path(sys.argv[1])
held = []
for path in [*sorted(folder.glob("*.lock")), *sorted(folder.glob("*.object")), folder / "generation"]:
    handle = open(path, "r+b")
    fcntl.lockf(handle, fcntl.LOCK_EX)
    held.append(handle)
    if path.suffix != ".lock":  # a generation counter: 8 bytes, big-endian, at the start of the file
        generation = int.from_bytes(handle.read(8), "big")
        handle.seek(0)
        handle.write((generation + 1).to_bytes(8, "big"))
        handle.flush()
print("holding", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="session")
def softhsm() -> Iterator[SoftHSM]:
    if not SOFTHSM_MODULE.is_file() or not Path(SOFTHSM_UTIL).is_file():
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2)")
    # Not under pytest's 0700 temp root: Apache (www-data) may need to reach it.
    base = Path(tempfile.mkdtemp(prefix="openxpki-softhsm-"))
    base.chmod(0o755)
    token_dir = base / "tokens"
    token_dir.mkdir(mode=0o755)
    conf = base / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n",
        encoding="utf-8",
    )
    conf.chmod(0o644)
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        yield SoftHSM(base=base, conf=conf, token_dir=token_dir)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_token(softhsm: SoftHSM) -> Iterator[Callable[..., SoftHSMToken]]:
    made: list[SoftHSMToken] = []

    def make(label: str, pin: str = "1234", so_pin: str = "12345678", *,
             owner: str | None = None) -> SoftHSMToken:
        softhsm.util("--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin)
        token = SoftHSMToken(softhsm, label, pin, so_pin)
        made.append(token)
        if owner is not None:
            for path in (softhsm.token_dir, *softhsm.token_dir.rglob("*")):
                shutil.chown(path, user=owner, group=owner)
        return token

    yield make
    for token in made:
        try:
            token.delete()
        except RuntimeError:
            pass  # the test deleted it itself


@pytest.fixture
def pkcs11_session_leak_check() -> Iterator[None]:
    """Fail the test if it leaves PKCS#11 sessions open (close every backend)."""
    from openxpki_py_token.pkcs11.module import open_session_count

    before = open_session_count()
    yield
    after = open_session_count()
    assert after == before, f"{after - before} PKCS#11 session(s) leaked: close the key backend"
