"""``openxpki-py serve`` (mod_wsgi-express under real Apache): what the daemons import."""

from __future__ import annotations

import base64
import hashlib
import http.client
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CLI = str(Path(sys.executable).parent / "openxpki-py")
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.postgres
def test_the_installed_package_is_served_not_an_openxpki_py_folder_where_serve_was_started(
        make_instance: Callable[..., Any], pg_engine: Any) -> None:
    """mod_wsgi-express puts the daemons' working directory on sys.path; it used to be serve's own.

    (PostgreSQL: a store Apache's user reaches without the test's private temp folder.)
    """
    inst = make_instance(pg_engine, init_ca=False)
    for path in (inst.folder, *inst.folder.rglob("*")):  # Apache's user runs the daemons: the store is theirs
        shutil.chown(path, "www-data", "www-data")
    place = Path(tempfile.mkdtemp(prefix="openxpki-serve-cwd-", dir="/var/tmp"))
    try:
        place.chmod(0o755)
        decoy = place / "openxpki_py" / "web"
        decoy.mkdir(parents=True)
        (place / "openxpki_py" / "__init__.py").write_text("")
        (decoy / "__init__.py").write_text("")
        (decoy / "wsgi.py").write_text(
            "def make_application():\n"
            "    def app(environ, start_response):\n"
            "        start_response('200 OK', [('Content-Type', 'text/plain')])\n"
            "        return [b'DECOY']\n"
            "    return app\n")
        for path in (place, *place.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        digest = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
        (place / "htpasswd").write_text(f"alice:{{SHA}}{digest}\n")
        port = _free_port()
        started = subprocess.run(
            [CLI, "--config", str(inst.config_path), "serve", "--port", str(port), "--htpasswd",
             str(place / "htpasswd"), "--server-root", str(place / "httpd"), "--apache-dir", str(REPO / "apache"),
             "--processes", "1", "--threads", "2"],
            cwd=place, capture_output=True, text=True, timeout=120, check=False)
        assert started.returncode == 0, started.stderr
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                auth = base64.b64encode(b"alice:pw").decode()
                conn.request("GET", "/openxpki/", headers={"Authorization": f"Basic {auth}"})
                answer = conn.getresponse()
                body = answer.read()
            finally:
                conn.close()
            assert b"DECOY" not in body, "the daemons imported the openxpki_py folder of serve's working directory"
            assert answer.status in (200, 302, 303), (answer.status, body[:500])
        finally:
            subprocess.run([str(place / "httpd" / "apachectl"), "stop"], capture_output=True, timeout=60, check=False)
    finally:
        shutil.rmtree(place, ignore_errors=True)


@pytest.fixture(autouse=True)
def _needs_apache() -> None:
    if shutil.which("apache2") is None and not Path("/usr/sbin/apache2").exists():
        pytest.fail("Apache (Debian apache2) is needed: contrib/install/debian-deps.sh installs it")
