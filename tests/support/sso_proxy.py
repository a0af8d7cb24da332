"""A real reverse proxy (Debian's apache2, mod_proxy + mod_headers) in front of a test site.

It stands in for an SSO gateway that authenticates users and hands their
attributes on as request headers (``RequestHeader set``, which also
overwrites whatever the client sent under that name).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.apache import HTTPResult

MODULES_DIR = Path("/usr/lib/apache2/modules")
MODULES = ("mpm_event", "authz_core", "proxy", "proxy_http", "headers")


@dataclass
class HeaderProxy:
    port: int
    root: Path
    process: subprocess.Popen[bytes]

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> HTTPResult:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", path, headers=dict(headers or {}))
            resp = conn.getresponse()
            return HTTPResult(resp.status, resp.headers, resp.read().decode("utf-8", "replace"))
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _quoted(value: str) -> str:
    assert '"' not in value and "\\" not in value and "\n" not in value
    return f'"{value}"'


def start_header_proxy(folder: Path, *, backend_port: int, headers: Mapping[str, str]) -> HeaderProxy:
    """Proxy 127.0.0.1:<new port>/ to the backend, setting ``headers`` on every request."""
    if not (MODULES_DIR / "mod_proxy_http.so").exists():
        pytest.skip("Debian's apache2 modules are not installed")
    root = folder / "proxy"
    root.mkdir()
    port = _free_port()
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    lines = [
        f"ServerRoot {root}", f"PidFile {root}/httpd.pid", f"DefaultRuntimeDir {root}", f"Mutex file:{root}",
        f"ErrorLog {root}/error_log", "LogLevel warn", user, f"Listen 127.0.0.1:{port}",
        *(f"LoadModule {m}_module {MODULES_DIR}/mod_{m}.so" for m in MODULES),
        *(f"RequestHeader set {name} {_quoted(value)}" for name, value in headers.items()),
        f"ProxyPass / http://127.0.0.1:{backend_port}/",
        f"ProxyPassReverse / http://127.0.0.1:{backend_port}/",
    ]
    (root / "httpd.conf").write_text("\n".join(lines) + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "www-data", "www-data")
    with (root / "stderr").open("wb") as stderr:
        process = subprocess.Popen(["/usr/sbin/apache2", "-f", str(root / "httpd.conf"), "-DFOREGROUND"],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    proxy = HeaderProxy(port, root, process)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proxy
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                proxy.stop()
                raise RuntimeError(f"the proxy did not start:\n{(root / 'stderr').read_text(errors='replace')}"
                                   f"{(root / 'error_log').read_text(errors='replace') if (root / 'error_log').exists() else ''}") from None
            time.sleep(0.05)
