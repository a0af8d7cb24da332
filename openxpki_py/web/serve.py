"""``openxpki-py serve``: the instance in Apache via mod_wsgi-express.

For demos, benchmarks and small sites.  It uses the shipped Apache files
(``apache/openxpki_py.wsgi``, ``express.conf`` with Basic authentication
standing in for the SSO, the ``/token`` rewrite) and serves the published
CRL folder as ``/crl/``.  A production site uses ``apache/openxpki-py.conf``
with Debian's Apache instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, OpenXPKIError

if TYPE_CHECKING:
    from ..config import Config

APACHE_USER = "www-data"
SHARED_APACHE_DIR = Path("/usr/share/openxpki-py/apache")


class ServeError(OpenXPKIError):
    """Apache could not be set up or did not start."""

    code = "serve"


@dataclass(frozen=True)
class Site:
    url: str
    server_root: Path
    apachectl: Path

    def stop(self) -> None:
        subprocess.run([str(self.apachectl), "stop"], capture_output=True, check=False, timeout=60)


def find_apache_dir(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else [SHARED_APACHE_DIR, Path(__file__).resolve().parents[2] / "apache"]
    for candidate in candidates:
        if candidate is not None and (candidate / "openxpki_py.wsgi").is_file():
            return candidate
    raise ConfigError(
        "cannot find the shipped Apache files (openxpki_py.wsgi, express.conf); give --apache-dir "
        f"(tried {', '.join(str(c) for c in candidates if c)})"
    )


def serve(config: Config, *, port: int, host: str = "127.0.0.1", htpasswd: Path | None,
          server_root: Path, apache_dir: Path | None = None, processes: int = 2, threads: int = 10,
          foreground: bool = False) -> Site:
    """Write the mod_wsgi-express setup into ``server_root`` and start Apache."""
    express = Path(sys.executable).parent / "mod_wsgi-express"
    if not express.exists():
        raise ServeError(f"{express} is missing: pip install mod_wsgi in this virtualenv")
    apache = find_apache_dir(apache_dir)
    config_path = config.path
    server_root.mkdir(parents=True, exist_ok=True)
    include = server_root / "instance.conf"
    lines = [f'Define OPENXPKI_PY_HTPASSWD "{htpasswd}"'] if htpasswd else []
    include.write_text("\n".join([*lines, f'Include "{apache / "express.conf"}"']) + "\n")
    argv = [
        str(express), "setup-server", str(apache / "openxpki_py.wsgi"),
        "--server-root", str(server_root), "--host", host, "--port", str(port),
        "--mount-point", "/openxpki", "--include-file", str(include),
        "--rewrite-rules", str(apache / "token-rewrite.conf"),
        "--setenv", "OPENXPKI_PY_CONFIG", str(config_path),
        "--processes", str(processes), "--threads", str(threads), "--locale", "C.UTF-8",
        # The daemons' working directory is on their sys.path: by default it is the directory
        # serve was started in, and an openxpki_py folder there (a checkout, a planted copy)
        # would be served instead of the installed package.  The server root holds no code.
        "--working-directory", str(server_root),
    ]
    publish = config.ca.crl.publish_dir
    if publish is not None:
        Path(publish).mkdir(parents=True, exist_ok=True)
        argv += ["--url-alias", "/crl", str(publish)]
    if os.geteuid() == 0:
        argv += ["--user", APACHE_USER, "--group", APACHE_USER]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise ServeError(f"mod_wsgi-express setup-server failed: {result.stderr.strip()[-500:]}")
    if os.geteuid() == 0:
        entry = pwd.getpwnam(APACHE_USER)
        for path in (server_root, *server_root.rglob("*")):
            shutil.chown(path, entry.pw_uid, entry.pw_gid)
    apachectl = server_root / "apachectl"
    if foreground:
        os.execv(str(apachectl), [str(apachectl), "start", "-DFOREGROUND"])
    started = subprocess.run([str(apachectl), "start"], capture_output=True, text=True, check=False, timeout=60)
    if started.returncode != 0:
        raise ServeError(f"Apache did not start: {started.stderr.strip()[-500:]}")
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                log = server_root / "error_log"
                tail = log.read_text(errors="replace")[-1000:] if log.exists() else ""
                raise ServeError(f"Apache did not answer on {host}:{port}: {tail}") from None
            time.sleep(0.05)
    return Site(f"http://{host}:{port}", server_root, apachectl)
