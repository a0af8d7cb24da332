"""A real Apache (mod_wsgi-express) serving the web app, for integration tests.

Each site is built in a fresh temp folder that www-data can read (Apache's
processes never run as root), with its own config.yaml, SQLite database,
htpasswd file (Basic auth stands in for the SSO) and the shipped
``apache/express.conf`` include and ``apache/token-rewrite.conf`` rule.

Fixtures: ``apache_site_factory(**options) -> ApacheSite``; sites are
stopped at the end of the test (``apache_module_site_factory``: of the module).  ``debian_site=True`` runs Debian's apache2
with the shipped site file (``apache/openxpki-py.conf``: TLS, daemon mode,
/crl/) instead of mod_wsgi-express.  Apache's error log is printed when a test
using a site fails, which is usually the fastest way to see why.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import ipaddress
import os
import pwd
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
APACHE_DIR = REPO / "apache"
VENV_BIN = Path(sys.executable).parent
EXPRESS = VENV_BIN / "mod_wsgi-express"
APACHE_USER = "www-data"
DEFAULT_PASSWORD = "secret"
TEST_WORKFLOWS = REPO / "tests" / "data" / "web" / "workflows"


@dataclass
class HTTPResult:
    status: int
    headers: http.client.HTTPMessage
    body: str

    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for value in self.headers.get_all("Set-Cookie") or []:
            jar.load(value)
        return {name: morsel.value for name, morsel in jar.items()}


@dataclass
class Browser:
    """A cookie-keeping HTTP client speaking to one site as one Basic-auth user."""

    site: ApacheSite
    user: str | bytes | None = None  # bytes: sent as given (not UTF-8 encoded)
    password: str = DEFAULT_PASSWORD
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, *, form: Mapping[str, str] | None = None,
                headers: Mapping[str, str] | None = None) -> HTTPResult:
        hdrs = dict(headers or {})
        if self.user is not None:
            name = self.user if isinstance(self.user, bytes) else self.user.encode()
            token = base64.b64encode(name + b":" + self.password.encode()).decode()
            hdrs["Authorization"] = f"Basic {token}"
        if self.cookies:
            hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        conn = self.site.connection()
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            result = HTTPResult(resp.status, resp.headers, resp.read().decode("utf-8", "replace"))
        finally:
            conn.close()
        self.cookies.update(result.cookies())
        return result

    def get(self, path: str, **kw: Any) -> HTTPResult:
        return self.request("GET", path, **kw)

    def post(self, path: str, form: Mapping[str, str], **kw: Any) -> HTTPResult:
        return self.request("POST", path, form=form, **kw)


@dataclass
class ApacheSite:
    root: Path
    port: int
    config_path: Path
    db_path: Path
    server_root: Path
    tls_cert: Path | None = None  # set: the site speaks https on ``port`` (trust this cert)
    http_port: int | None = None  # a plain-http port as well (Debian site: redirects, /crl/)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.port}"

    def audit(self) -> list[dict[str, Any]]:
        """The audit log, oldest first."""
        from sqlalchemy import select

        from openxpki_py.db.schema import audit_log

        rows: list[dict[str, Any]] = self.read_db(lambda conn: [dict(r) for r in conn.execute(
            select(audit_log).order_by(audit_log.c.id)).mappings()])
        return rows

    def connection(self, *, plain_http: bool = False) -> http.client.HTTPConnection:
        if plain_http:
            assert self.http_port is not None
            return http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        if self.tls_cert is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        context = ssl.create_default_context(cafile=str(self.tls_cert))
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=context)

    def browser(self, user: str | bytes | None = None, password: str = DEFAULT_PASSWORD) -> Browser:
        return Browser(self, user, password)

    def error_log(self) -> str:
        log = self.server_root / "error_log"
        return log.read_text(errors="replace") if log.exists() else ""

    def read_db(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(connection)`` against the site's database (as root, then hand files back)."""
        from openxpki_py.db.engine import open_engine

        engine = open_engine(f"sqlite:///{self.db_path}")
        try:
            with engine.connect() as conn:
                return fn(conn)
        finally:
            engine.dispose()
            _chown_tree(self.db_path.parent)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chown_tree(path: Path) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(APACHE_USER)
    for p in [path, *path.rglob("*")]:
        os.chown(p, pw.pw_uid, pw.pw_gid)


def _htpasswd_line(user: str | bytes, password: str) -> bytes:
    """One line; a ``bytes`` user name is written as given (e.g. latin-1, to test decoding)."""
    # {SHA} is weak, but this file only lives for one test.
    digest = base64.b64encode(hashlib.sha1(password.encode()).digest())
    name = user if isinstance(user, bytes) else user.encode()
    return name + b":{SHA}" + digest + b"\n"


def default_site_config(root: Path, db_path: Path) -> dict[str, Any]:
    """A minimal instance config; tests override parts via ``config``."""
    return {
        "instance": {"name": "test-pki", "base_url": "http://127.0.0.1"},
        "database": {"url": f"sqlite:///{db_path}"},
        "ca": {  # never opened by the web pages these tests visit
            "subject": "CN=Test CA",
            "key": {"backend": "software", "algorithm": "ec-p256", "path": str(root / "ca-key.pem"),
                    "password_file": str(root / "ca-key.password")},
        },
        "directory": {"backend": "ldif", "ldif_file": str(REPO / "contrib" / "ldap" / "demo.ldif"),
                      "base_dn": "dc=example,dc=com"},
        "auth": {"roles": {"User": {"command": ["/bin/true"]}}},
        "web": {"session": {"cookie_secure": False},  # plain http on 127.0.0.1
                "deep_link": {"workflow": "web_test_enrollment"}},
        "workflow": {"definitions": [str(TEST_WORKFLOWS)]},
    }


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


ConfigOverride = Mapping[str, Any] | Callable[[Path], Mapping[str, Any]] | None


@dataclass(frozen=True)
class _Instance:
    config_path: Path
    db_path: Path
    htpasswd: Path


ConfigEdit = Callable[[Path, dict[str, Any]], None] | None


def _prepare_instance(root: Path, config: ConfigOverride, users: Mapping[str | bytes, str] | None,
                      edit_config: ConfigEdit = None) -> _Instance:
    """config.yaml, an empty schema and an htpasswd file in ``root``.

    ``edit_config(root, settings)`` may change the merged settings in place,
    e.g. to replace a whole section that ``config`` would only merge into.
    """
    from openxpki_py.db.engine import create_schema, open_engine

    root.chmod(0o755)
    db_dir = root / "db"
    db_dir.mkdir()
    db_path = db_dir / "openxpki.db"
    overrides = config(root) if callable(config) else config
    cfg = _merge(default_site_config(root, db_path), overrides or {})
    if edit_config is not None:
        edit_config(root, cfg)
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    engine = open_engine(f"sqlite:///{db_path}")
    create_schema(engine)
    engine.dispose()
    htpasswd = root / "htpasswd"
    htpasswd.write_bytes(b"".join(_htpasswd_line(u, p) for u, p in
                                  (users or {"alice": DEFAULT_PASSWORD, "bob": DEFAULT_PASSWORD}).items()))
    return _Instance(config_path, db_path, htpasswd)


def _launch(site: ApacheSite, argv: list[str], *, own_group: bool = False) -> ApacheSite:
    """Start Apache in the foreground and wait for its port.

    ``own_group``: Apache and its mod_wsgi daemons get a process group of
    their own, so a test can SIGKILL the whole node (``os.killpg``).
    """
    # Apache's processes (and the role handlers they run) are www-data: the
    # whole site folder is theirs, including private files a test put there.
    _chown_tree(site.root)
    stderr_file = site.root / "apache.stderr"
    with stderr_file.open("ab") as stderr:  # a file, not a pipe: nobody reads a pipe, Apache would block
        site.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=own_group)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", site.port), timeout=0.5):
                return site
        except OSError:
            if site.process.poll() is not None or time.monotonic() > deadline:
                site.stop()
                raise RuntimeError(f"Apache did not start on port {site.port}:\n"
                                   f"{stderr_file.read_text(errors='replace')}\n{site.error_log()}") from None
            time.sleep(0.05)


def express_site(root: Path, *, config_path: Path, db_path: Path, htpasswd: Path | None,
                 extra_include: str = "", processes: int = 1, threads: int = 4,
                 envvars: Mapping[str, str] | None = None) -> ApacheSite:
    """Write a mod_wsgi-express server root in ``root/httpd`` serving ``config_path`` (not started).

    Several of these may serve one config (nodes of one instance); start
    one with :func:`launch_express`.  ``htpasswd`` None: no Basic auth.
    """
    include = root / "instance.conf"
    lines = [f'Define OPENXPKI_PY_HTPASSWD "{htpasswd}"'] if htpasswd is not None else []
    lines += [f'Include "{APACHE_DIR / "express.conf"}"', extra_include]
    include.write_text("\n".join(lines) + "\n")

    port = _free_port()
    server_root = root / "httpd"
    cmd = [
        str(EXPRESS), "setup-server", str(APACHE_DIR / "openxpki_py.wsgi"),
        "--server-root", str(server_root), "--host", "127.0.0.1", "--port", str(port),
        "--mount-point", "/openxpki",
        "--include-file", str(include),
        "--rewrite-rules", str(APACHE_DIR / "token-rewrite.conf"),
        "--setenv", "OPENXPKI_PY_CONFIG", str(config_path),
        "--processes", str(processes), "--threads", str(threads),
        "--locale", "C.UTF-8",
        "--python-path", str(REPO),
    ]
    if os.geteuid() == 0:
        cmd += ["--user", APACHE_USER, "--group", APACHE_USER]
    subprocess.run(cmd, check=True, capture_output=True)
    if envvars:
        # apachectl sources this: the environment of Apache itself (libkrb5 reads KRB5_CONFIG there).
        with open(server_root / "envvars", "a", encoding="utf-8") as stream:
            stream.writelines(f"export {name}={shlex.quote(value)}\n" for name, value in envvars.items())
    return ApacheSite(root=root, port=port, config_path=config_path, db_path=db_path, server_root=server_root)


def launch_express(site: ApacheSite, *, own_group: bool = False) -> ApacheSite:
    """Start (or start again, on the same port) a site written by :func:`express_site`."""
    return _launch(site, [str(site.server_root / "apachectl"), "start", "-DFOREGROUND"], own_group=own_group)


def start_site(root: Path, *, config: ConfigOverride = None, users: Mapping[str | bytes, str] | None = None,
               basic_auth: bool = True, extra_include: str = "", processes: int = 1,
               threads: int = 4, edit_config: ConfigEdit = None,
               envvars: Mapping[str, str] | None = None) -> ApacheSite:
    """Build and start one mod_wsgi-express site in ``root`` (an empty folder).

    ``config`` overrides parts of :func:`default_site_config`; it may be a
    function of ``root`` that also writes files the site needs there.
    """
    inst = _prepare_instance(root, config, users, edit_config)
    site = express_site(root, config_path=inst.config_path, db_path=inst.db_path,
                        htpasswd=inst.htpasswd if basic_auth else None, extra_include=extra_include,
                        processes=processes, threads=threads, envvars=envvars)
    return launch_express(site)


DEBIAN_MODULES = ("mpm_event", "authn_core", "authn_file", "authz_core", "authz_host", "authz_user", "auth_basic",
                  "alias", "rewrite", "headers", "ssl", "socache_shmcb", "mime", "dir", "env")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "tls.pem", folder / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def start_debian_site(root: Path, *, config: ConfigOverride = None,
                      users: Mapping[str | bytes, str] | None = None, prelude: str = "") -> ApacheSite:
    """Run Debian's apache2 with the shipped site file, paths pointed into ``root``.

    Only file locations and ports are replaced; every directive is the
    shipped one, so this tests what an administrator installs.  ``prelude``
    goes before the site, as conf-enabled/ does (Defines, a2enmod's LoadModule).
    """
    modules_dir = Path("/usr/lib/apache2/modules")
    if not (modules_dir / "mod_ssl.so").exists():
        pytest.skip("Debian's apache2 modules are not installed")
    inst = _prepare_instance(root, config, users)
    run, docroot, crl = root / "run", root / "www", root / "crl"
    for d in (run, docroot, crl):
        d.mkdir()
    cert, key = _self_signed(root)
    http_port, tls_port = _free_port(), _free_port()
    replacements = {
        "*:80>": f"127.0.0.1:{http_port}>",
        "*:443>": f"127.0.0.1:{tls_port}>",
        "/usr/share/openxpki-py/apache": str(APACHE_DIR),
        "/etc/openxpki-py/config.yaml": str(inst.config_path),
        "/etc/openxpki-py/htpasswd": str(inst.htpasswd),
        "/var/lib/openxpki-py/crl": str(crl),
        "/var/www/openxpki-py": str(docroot),
        "/etc/ssl/certs/pki.example.com.pem": str(cert),
        "/etc/ssl/private/pki.example.com.key": str(key),
        "python-home=/opt/openxpki-py/venv": f"python-home={sys.prefix}",
    }
    site_conf = (APACHE_DIR / "openxpki-py.conf").read_text()
    for old, new in replacements.items():
        assert old in site_conf, f"the test expects {old!r} in apache/openxpki-py.conf"
        site_conf = site_conf.replace(old, new)
    (root / "site.conf").write_text(site_conf)
    wsgi_so = subprocess.run([str(EXPRESS), "module-config"], check=True, capture_output=True,
                             text=True).stdout.splitlines()[0]
    user = f"User {APACHE_USER}\nGroup {APACHE_USER}\n" if os.geteuid() == 0 else ""
    main = "\n".join([
        f"ServerRoot {root}", f"PidFile {run}/httpd.pid", f"DefaultRuntimeDir {run}", f"Mutex file:{run}",
        f"ErrorLog {root}/error_log", "LogLevel warn", user,
        f"Listen 127.0.0.1:{http_port}", f"Listen 127.0.0.1:{tls_port} https",
        *(f"LoadModule {m}_module {modules_dir}/mod_{m}.so" for m in DEBIAN_MODULES),
        wsgi_so, f"WSGISocketPrefix {run}/wsgi", "TypesConfig /etc/mime.types",
        prelude, f"Include {root}/site.conf",
    ])
    (root / "httpd.conf").write_text(main + "\n")
    site = ApacheSite(root=root, port=tls_port, config_path=inst.config_path, db_path=inst.db_path,
                      server_root=root, tls_cert=cert, http_port=http_port)
    return _launch(site, ["/usr/sbin/apache2", "-f", str(root / "httpd.conf"), "-DFOREGROUND"])


@contextlib.contextmanager
def _site_factory(failed: Callable[[], bool],
                  write: Callable[[str], object] = sys.stderr.write) -> Iterator[Callable[..., ApacheSite]]:
    """Sites made through the yielded factory, stopped (and their folders removed) on exit.

    Apache's error logs are written out if ``failed()`` says a test using them failed.
    """
    if shutil.which("apache2") is None and not Path("/usr/sbin/apache2").exists():
        pytest.skip("apache2 is not installed")
    if not EXPRESS.exists():
        pytest.skip("mod_wsgi-express is not installed in this venv")
    sites: list[ApacheSite] = []
    tmp_dirs: list[str] = []

    def factory(*, debian_site: bool = False, **options: Any) -> ApacheSite:
        # /tmp, not pytest's tmp_path: that sits below folders www-data may not enter.
        tmp = tempfile.mkdtemp(prefix="openxpki-apache-")
        tmp_dirs.append(tmp)
        site = (start_debian_site if debian_site else start_site)(Path(tmp), **options)
        sites.append(site)
        return site

    try:
        yield factory
    finally:
        for site in sites:
            site.stop()
            if failed():
                write(f"--- Apache error log ({site.root}) ---\n{site.error_log()}\n")
        for tmp in tmp_dirs:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def apache_site_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., ApacheSite]]:
    def failed() -> bool:
        report = getattr(request.node, "rep_call", None)
        return report is not None and bool(report.failed)
    with _site_factory(failed) as factory:
        yield factory


@pytest.fixture(scope="module")
def apache_module_site_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., ApacheSite]]:
    """As ``apache_site_factory``, for one site that a whole module's tests share.

    Only for tests that do not depend on what the others left in the site's
    database (Apache's start and first request cost seconds each).
    """
    failed_before = request.session.testsfailed
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(text: str) -> None:
        # The module's last test may have passed: pytest would drop what its
        # teardown printed, so the logs go past the capture.
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            sys.stderr.write(text)
    with _site_factory(lambda: request.session.testsfailed > failed_before, write) as factory:
        yield factory


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                                           pytest.TestReport]:
    # Keep the call phase's report on the item, so the fixture can print
    # Apache's error log only when the test failed.
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
