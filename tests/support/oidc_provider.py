"""A real OpenID provider for the SSO tests: oidc-provider (npm) under Debian's node.

``tests/support/oidc/`` holds its package.json and lock file and the
configuration script (provider.mjs).  ``contrib/install/debian-deps.sh
--with-tests`` runs ``npm ci`` there; :func:`ensure_installed` does it too if
node_modules is missing.  :func:`start_provider` runs one provider per test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent / "oidc"
NODE = shutil.which("node") or "/usr/bin/node"
NPM = shutil.which("npm") or "/usr/bin/npm"


@dataclass
class OIDCProvider:
    issuer: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def metadata_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def log(self) -> str:
        path = self.folder / "provider.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_installed() -> None:
    if not Path(NODE).exists():
        pytest.skip("node is not installed (contrib/install/debian-deps.sh --with-tests)")
    if not (HERE / "node_modules" / "oidc-provider").exists():
        subprocess.run([NPM, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, capture_output=True,
                       timeout=300)


def start_provider(folder: Path, *, port: int, clients: list[Mapping[str, Any]],
                   accounts: Mapping[str, Mapping[str, Any]]) -> OIDCProvider:
    """Run the provider on 127.0.0.1:``port`` with these clients and accounts (login → password, claims)."""
    ensure_installed()
    folder.mkdir(parents=True, exist_ok=True)
    issuer = f"http://127.0.0.1:{port}"
    settings = {"issuer": issuer, "host": "127.0.0.1", "port": port, "clients": list(clients),
                "accounts": dict(accounts), "cookie_keys": [secrets.token_urlsafe(32)]}
    settings_file = folder / "provider.json"
    settings_file.write_text(json.dumps(settings))
    settings_file.chmod(0o600)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_ENV": "test"}
    with (folder / "provider.log").open("wb") as log:
        process = subprocess.Popen([NODE, str(HERE / "provider.mjs"), str(settings_file)], cwd=HERE, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    provider = OIDCProvider(issuer, port, folder, process)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(provider.metadata_url, timeout=2) as resp:
                json.load(resp)
                return provider
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                provider.stop()
                raise RuntimeError(f"the OpenID provider did not start:\n{provider.log()}") from None
            time.sleep(0.1)
