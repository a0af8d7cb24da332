"""An MIT Kerberos KDC on its default PKINIT settings, for one test (a pytest plugin).

``mit_kdc(ca_pem, kdc_cert_pem, kdc_key_pem, crl_pem)`` writes a realm
``EXAMPLE.COM`` into a fresh folder (kdc.conf, krb5.conf, a database with
the principal ``alice``), starts ``krb5kdc -n`` on a free port and returns a
:class:`MitKdc`.  Nothing but the files the project issues is relaxed: the
KDC checks the client's EKU (id-pkinit-KPClientAuth) and its id-pkinit-san
as MIT does by default, and the CRL named by ``pkinit_revoke``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REALM = "EXAMPLE.COM"
KRB5KDC = shutil.which("krb5kdc") or "/usr/sbin/krb5kdc"
KDB5_UTIL = shutil.which("kdb5_util") or "/usr/sbin/kdb5_util"
KADMIN_LOCAL = shutil.which("kadmin.local") or "/usr/sbin/kadmin.local"
KINIT = shutil.which("kinit") or "/usr/bin/kinit"
KLIST = shutil.which("klist") or "/usr/bin/klist"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MitKdc:
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KRB5_CONFIG": str(self.folder / "krb5.conf"),
                "KRB5_KDC_PROFILE": str(self.folder / "kdc.conf"),
                "KRB5CCNAME": f"FILE:{self.folder / 'ccache'}",
                "KRB5_TRACE": str(self.folder / "trace.log")}

    def start(self) -> None:
        log = open(self.folder / "kdc-stdout.log", "ab")  # noqa: SIM115 - kept for the process's life
        self.process = subprocess.Popen([KRB5KDC, "-n"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError("krb5kdc exited: " + self.logs()) from None
                time.sleep(0.05)
        raise RuntimeError("krb5kdc did not listen: " + self.logs())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """The KDC reads its certificates and CRL at start."""
        self.stop()
        self.start()

    def kinit_with_card(self, principal: str, module: str, token_label: str, pin: str,
                        extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """``kinit`` with the card's logon certificate through PKCS#11 (PIN on stdin)."""
        identity = f"PKCS11:module_name={module}:token={token_label}"
        (self.folder / "ccache").unlink(missing_ok=True)
        return subprocess.run([KINIT, "-X", f"X509_user_identity={identity}", principal],
                              env={**self.env, **extra_env}, input=pin + "\n", capture_output=True, text=True,
                              timeout=60, check=False)

    def kadmin(self, query: str) -> None:
        done = subprocess.run([KADMIN_LOCAL, "-r", REALM, "-q", query], env=self.env, capture_output=True,
                              text=True, timeout=60, check=False)
        # kadmin.local exits 0 for a failed query and says "… while …" on stderr.
        if done.returncode != 0 or "error" in done.stderr.lower() or " while " in done.stderr:
            raise RuntimeError(f"kadmin.local {query!r}: {done.stdout}{done.stderr}")

    def add_service_keytab(self, service: str, keytab: Path) -> Path:
        """A service principal (``HTTP/localhost``) with its keys in ``keytab``."""
        self.kadmin(f"addprinc -randkey {service}@{REALM}")
        self.kadmin(f"ktadd -k {keytab} {service}@{REALM}")
        return keytab

    def kinit_password(self, principal: str, password: str) -> None:
        (self.folder / "ccache").unlink(missing_ok=True)
        done = subprocess.run([KINIT, principal], env=self.env, input=password + "\n", capture_output=True,
                              text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"kinit {principal}: {done.stdout}{done.stderr}\n{self.logs()}")

    def has_ticket(self) -> bool:
        return subprocess.run([KLIST, "-s"], env=self.env, timeout=30, check=False).returncode == 0

    def logs(self) -> str:
        parts = []
        for name in ("kdc.log", "kdc-stdout.log", "trace.log"):
            path = self.folder / name
            if path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


def _write_realm(folder: Path, port: int, pkinit: bool) -> None:
    # Defaults on purpose: no pkinit_eku_checking, no pkinit_allow_upn.
    kdc_pkinit = f"""
        pkinit_identity = FILE:{folder / 'kdc.pem'},{folder / 'kdc.key'}
        pkinit_anchors = FILE:{folder / 'ca.pem'}
        pkinit_revoke = FILE:{folder / 'crl.pem'}
        pkinit_require_crl_checking = true""" if pkinit else ""
    client_pkinit = f"""
        pkinit_anchors = FILE:{folder / 'ca.pem'}
        # Two certificates on the card: take the logon one (EKU id-pkinit-KPClientAuth).
        pkinit_cert_match = <EKU>pkinit
        pkinit_kdc_hostname = kdc.example.com""" if pkinit else ""
    (folder / "kdc.conf").write_text(f"""[kdcdefaults]
    kdc_ports = {port}
    kdc_tcp_ports = {port}

[realms]
    {REALM} = {{
        database_name = {folder / 'principal'}
        key_stash_file = {folder / 'stash'}
        acl_file = {folder / 'kadm5.acl'}{kdc_pkinit}
    }}

[logging]
    kdc = FILE:{folder / 'kdc.log'}
""")
    (folder / "krb5.conf").write_text(f"""[libdefaults]
    default_realm = {REALM}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    udp_preference_limit = 1

[realms]
    {REALM} = {{
        kdc = 127.0.0.1:{port}{client_pkinit}
    }}

[domain_realm]
    localhost = {REALM}
""")
    (folder / "kadm5.acl").write_text("")


@pytest.fixture
def mit_kdc() -> Iterator[Callable[..., MitKdc]]:
    if not Path(KRB5KDC).exists():
        pytest.fail("krb5kdc is missing: contrib/install/debian-deps.sh installs krb5-kdc and krb5-pkinit")
    made: list[MitKdc] = []

    def make(ca_pem: bytes | None = None, kdc_cert_pem: bytes = b"", kdc_key_pem: bytes = b"",
             crl_pem: bytes = b"") -> MitKdc:
        """A realm with alice; with ``ca_pem`` also PKINIT (the KDC's certificate, key and the CRL)."""
        folder = Path(tempfile.mkdtemp(prefix="openxpki-kdc-"))
        folder.chmod(0o755)  # Apache (www-data) reads krb5.conf and the keytab made here
        if ca_pem is not None:
            files = {"ca.pem": ca_pem, "kdc.pem": kdc_cert_pem, "kdc.key": kdc_key_pem, "crl.pem": crl_pem}
            for name, data in files.items():
                (folder / name).write_bytes(data)
            (folder / "kdc.key").chmod(0o600)
        kdc = MitKdc(folder, _free_port())
        _write_realm(folder, kdc.port, pkinit=ca_pem is not None)
        for argv in ([KDB5_UTIL, "create", "-s", "-r", REALM, "-P", "master-password-for-tests"],
                     [KADMIN_LOCAL, "-r", REALM, "-q", f"addprinc +requires_preauth -nokey alice@{REALM}"]):
            done = subprocess.run(argv, env=kdc.env, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}")
        kdc.start()
        made.append(kdc)
        return kdc

    yield make
    for kdc in made:
        kdc.stop()
        shutil.rmtree(kdc.folder, ignore_errors=True)
