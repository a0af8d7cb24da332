"""A private OpenLDAP server for tests (pytest plugin, listed in tests/conftest.py).

It is built from what the project ships, so the tests exercise it: the
slapd.conf template, the schema and the demo LDIF from contrib/ldap/, plus
a few awkward test-only entries (tests/support/directory-extra.ldif).  The
server listens on free loopback ports, plain LDAP (StartTLS offered) and
LDAPS, with a throw-away CA.

Fixtures:
  ``slapd_server``  one server per test session.
  ``slapd``         the same server, for one test: the test may stop(),
                    start() or restart() it; it is running again afterwards.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
CONTRIB_LDAP = REPO / "contrib" / "ldap"
EXTRA_LDIF = Path(__file__).with_name("directory-extra.ldif")
SYSTEM_SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
_SBIN_PATH = "/usr/sbin:/usr/local/sbin:" + os.environ.get("PATH", "")
SLAPD = shutil.which("slapd", path=_SBIN_PATH)
SLAPTEST = shutil.which("slaptest", path=_SBIN_PATH)
SLAPADD = shutil.which("slapadd", path=_SBIN_PATH)

BASE_DN = "dc=example,dc=com"
ROOT_DN = "cn=admin,dc=example,dc=com"
GROUPS_DN = "ou=groups,dc=example,dc=com"
ROLE_GROUPS = {
    "RA Operator": f"cn=ra-operators,{GROUPS_DN}",
    "CA Operator": f"cn=ca-operators,{GROUPS_DN}",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ssha(password: str) -> str:
    """An OpenLDAP {SSHA} hash, so the root password is not in slapd.conf."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _write_private(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "slapd test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = folder / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = folder / "server.key"
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


class SlapdServer:
    """One slapd process with its own config, database and ports."""

    base_dn = BASE_DN
    bind_dn = ROOT_DN
    groups_dn = GROUPS_DN

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.bind_password = secrets.token_urlsafe(18)
        self.bind_password_file = _write_private(folder / "bind.password", self.bind_password + "\n")
        self.ca_file, cert_file, key_file = make_tls(folder)
        self.ldif_path = folder / "directory.ldif"
        self.ldif_path.write_text(
            (CONTRIB_LDAP / "demo.ldif").read_text(encoding="utf-8") + "\n" + EXTRA_LDIF.read_text(encoding="utf-8"),
            encoding="utf-8",
        )
        self.conf = self._render_conf(cert_file, key_file)
        self.log_file = folder / "slapd.log"
        self.port = 0
        self.ldaps_port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._load()
        atexit.register(self.stop)  # even if the session dies before fixture teardown

    # ---- building ----------------------------------------------------------

    def _render_conf(self, cert_file: Path, key_file: Path) -> Path:
        (self.folder / "db").mkdir()
        values = {
            "SYSTEM_SCHEMA_DIR": str(SYSTEM_SCHEMA_DIR),
            "CONTRIB_LDAP_DIR": str(CONTRIB_LDAP),
            "MODULE_DIR": str(MODULE_DIR),
            "RUN_DIR": str(self.folder),
            "DB_DIR": str(self.folder / "db"),
            "SUFFIX": BASE_DN,
            "ROOT_DN": ROOT_DN,
            "ROOT_PW_HASH": ssha(self.bind_password),
            "TLS": "\n".join([
                f"TLSCACertificateFile {self.ca_file}",
                f"TLSCertificateFile {cert_file}",
                f"TLSCertificateKeyFile {key_file}",
            ]),
        }
        lines = []
        for line in (CONTRIB_LDAP / "slapd.conf.in").read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):  # the header comment names the placeholders
                for name, value in values.items():
                    line = line.replace(f"@{name}@", value)
                assert "@" not in line, f"slapd.conf.in: a placeholder this fixture does not fill: {line}"
            lines.append(line)
        return _write_private(self.folder / "slapd.conf", "\n".join(lines) + "\n")

    def _load(self) -> None:
        for argv in (
            [str(SLAPTEST), "-u", "-f", str(self.conf)],
            [str(SLAPADD), "-f", str(self.conf), "-l", str(self.ldif_path)],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}")

    # ---- running -----------------------------------------------------------

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}/"

    @property
    def ldaps_uri(self) -> str:
        # 127.0.0.1, not localhost: libldap checks a "localhost" server's
        # certificate against the machine's own host name.
        return f"ldaps://127.0.0.1:{self.ldaps_port}/"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start slapd; the first start picks free ports, later ones reuse them."""
        if self.running:
            return
        fixed = self.port != 0
        for _attempt in range(1 if fixed else 5):
            if not fixed:
                self.port, self.ldaps_port = free_port(), free_port()
            if self._spawn():
                return
        raise RuntimeError(f"slapd did not start; log:\n{self.log_file.read_text(errors='replace')}")

    def _spawn(self) -> bool:
        urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
        with open(self.log_file, "ab") as log:
            # -d 0 keeps slapd in the foreground, so this Popen is the server itself.
            self._proc = subprocess.Popen(
                [str(SLAPD), "-d", "0", "-h", urls, "-f", str(self.conf)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        self.stop()
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextlib.contextmanager
    def hung(self) -> Iterator[None]:
        """A server that accepts connections and never answers (SIGSTOP), until the block ends."""
        assert self._proc is not None and self.running, "slapd is not running"
        self._proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._proc.send_signal(signal.SIGCONT)

    # ---- configs for the code under test -----------------------------------

    def directory_settings(self, backend: str = "ldap", **overrides: Any) -> dict[str, Any]:
        """A ``directory:`` config mapping for this server (or its LDIF file)."""
        settings: dict[str, Any] = {
            "backend": backend,
            "base_dn": BASE_DN,
            "login_attribute": "uid",
            "required": ["cn", "mail", "upn"],
            "groups": {"base_dn": GROUPS_DN},
        }
        if backend == "ldif":
            settings["ldif_file"] = str(self.ldif_path)
        else:
            settings["ldap"] = {
                "uri": self.uri,
                "starttls": False,
                "bind_dn": ROOT_DN,
                "bind_password_file": str(self.bind_password_file),
                "timeout": 5,
            }
        for key, value in overrides.items():
            if isinstance(value, Mapping) and isinstance(settings.get(key), dict):
                settings[key] = {**settings[key], **value}
            else:
                settings[key] = value
        return settings

    def write_check_config(self, path: Path, *, roles: Mapping[str, str] | None = None,
                           **settings: str) -> Path:
        """A contrib/auth/check-ldap-group.conf for this server; ``settings`` override keys."""
        values = {
            "uri": self.uri,
            "starttls": "no",
            "base_dn": BASE_DN,
            "bind_dn": ROOT_DN,
            "bind_password_file": str(self.bind_password_file),
            "login_attribute": "uid",
            "timeout": "5",
        }
        values.update(settings)
        lines = [f"{key}={value}" for key, value in values.items() if value != ""]
        lines += [f"role.{role}={dn}" for role, dn in (ROLE_GROUPS if roles is None else roles).items()]
        path.write_text("# written by tests/support/slapd.py\n" + "\n".join(lines) + "\n", encoding="utf-8")
        return path


def _require_slapd() -> None:
    if SLAPD is None or SLAPTEST is None or SLAPADD is None:
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils)")
    if not (MODULE_DIR / "back_mdb.la").exists() and not any(MODULE_DIR.glob("back_mdb*.so*")):
        pytest.skip(f"OpenLDAP's back_mdb module is not in {MODULE_DIR}")


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdServer]:
    _require_slapd()
    server = SlapdServer(tmp_path_factory.mktemp("slapd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def slapd(slapd_server: SlapdServer) -> Iterator[SlapdServer]:
    yield slapd_server
    # A test that stopped the server must not take it away from the next one.
    slapd_server.start()
