#!/usr/bin/env python3
"""Server-side time of full two-certificate personalizations through Apache.

    python bench/personalization.py [--users 20] [--rounds 2] [--db sqlite|postgresql]

Sets up an instance in a temp folder (CA key in a SoftHSM token, LDIF
directory with N users, SQLite or a fresh PostgreSQL database) served by
Apache via ``openxpki-py serve``.  Each simulated user runs the whole flow
over HTTP: the browser part (/token, enrollment code, confirm the card) and
the agent part (enroll, report card, tasks, two CSRs, two receipts).  The
card's key generation and CSR signing are done beforehand with software
keys, so the figures are the server's; the same card operations on a
SoftHSM "card" are timed separately.  Printed: per personalization, the sum
of request round trips (server time) and wall time, p50/p99, at 1 and N
concurrent users; the baseline is two in-process issuances with the same
CA key, measured in the same run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def csr_pem(key: Any) -> str:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "card")]))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


class Client:
    """One keep-alive connection; records every round trip's duration."""

    def __init__(self, port: int, user: str | None = None) -> None:
        self.port = port
        self.auth = base64.b64encode(f"{user}:pw".encode()).decode() if user else None
        self.cookies: dict[str, str] = {}
        self.bearer: str | None = None
        self.spent = 0.0

    def request(self, method: str, path: str, *, form: dict[str, str] | None = None,
                body: Any = None) -> tuple[int, dict[str, str], str]:
        headers: dict[str, str] = {}
        data = None
        if self.auth:
            headers["Authorization"] = f"Basic {self.auth}"
        if self.bearer:
            headers["Authorization"] = f"Bearer {self.bearer}"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if form is not None:
            data, headers["Content-Type"] = urllib.parse.urlencode(form), "application/x-www-form-urlencoded"
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body), "application/json"
        # A connection per request: Apache closes idle keep-alive connections
        # between the user's steps, and a loopback connect costs ~0.1 ms.
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        start = time.perf_counter()
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        self.spent += time.perf_counter() - start
        conn.close()
        for cookie in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response.status, dict(response.headers), text


def personalize(port: int, user: str, keys: list[Any], serial: str) -> tuple[float, float]:
    """One user's whole personalization; returns (server time, wall time)."""
    began = time.perf_counter()
    browser, agent = Client(port, user), Client(port)
    status, headers, _ = browser.request("GET", "/token")
    path = headers["Location"].split("127.0.0.1", 1)[-1].split(f":{port}", 1)[-1]
    page = browser.request("GET", path)[2]
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    base = path.replace("/deeplink/workflow/", "/personalize/")
    page = browser.request("POST", f"{base}/code", form={"csrf_token": csrf, "mode": "deeplink"})[2]
    code = re.search(r'id="enrollment-code">([^<]+)<', page).group(1)  # type: ignore[union-attr]
    agent.bearer = json.loads(agent.request("POST", "/openxpki/api/v1/enroll", body={"code": code})[2])[
        "access_token"]
    agent.request("POST", "/openxpki/api/v1/token", body={"serial": serial, "model": "bench"})
    page = browser.request("GET", path)[2]
    version = re.search(r'name="version" value="(\d+)"', page).group(1)  # type: ignore[union-attr]
    browser.request("POST", f"{base}/action", form={"csrf_token": csrf, "version": version, "mode": "deeplink",
                                                     "action": "confirm_token"})
    assert len(keys) == 2, "two pre-made card keys per personalization"
    for key in keys:
        task = json.loads(agent.request("GET", "/openxpki/api/v1/task")[2])
        assert task["task"] == "generate_key", task
        answer = agent.request("POST", "/openxpki/api/v1/csr", body={
            "cert_type": task["cert_type"], "key_id": task["key_id"], "csr": csr_pem(key)})
        assert answer[0] == 200, answer
        task = json.loads(agent.request("GET", "/openxpki/api/v1/task")[2])
        receipt = agent.request("POST", "/openxpki/api/v1/receipt", body={
            "cert_type": task["cert_type"], "key_id": task["key_id"], "serial": task["serial"]})
        assert receipt[0] == 200, receipt
    done = json.loads(agent.request("GET", "/openxpki/api/v1/task")[2])
    assert done["task"] == "done", done
    return browser.spent + agent.spent, time.perf_counter() - began


def run_round(port: int, users: list[str], keys: dict[str, list[Any]], tag: str) -> list[tuple[float, float]]:
    results: list[tuple[float, float]] = []
    lock = threading.Lock()

    def one(user: str) -> None:
        outcome = personalize(port, user, keys[user], f"{tag}-{user}")
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == len(users), "a personalization failed (see above)"
    return results


def setup(folder: Path, n_users: int, db_url: str | None) -> tuple[Path, dict[str, str]]:
    env = {**os.environ, "SOFTHSM2_CONF": str(folder / "softhsm2.conf")}
    (folder / "tokens").mkdir()
    (folder / "softhsm2.conf").write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
                                          "log.level = ERROR\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench-ca", "--so-pin", "12345678",
                    "--pin", "1234"], env=env, check=True, capture_output=True)
    (folder / "pin").write_text("1234")
    ldif = ["dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n"]
    htpasswd = []
    digest = base64.b64encode(hashlib.sha1(b"pw").digest()).decode()
    for i in range(n_users):
        u = f"user{i:03d}"
        ldif.append(f"dn: uid={u},dc=example,dc=com\nobjectClass: person\nobjectClass: inetOrgPerson\n"
                    f"objectClass: pkiDirectoryUser\nuid: {u}\ncn: User {i}\nsn: User\nmail: {u}@example.com\n"
                    f"userPrincipalName: {u}@example.com\n")
        htpasswd.append(f"{u}:{{SHA}}{digest}\n")
    (folder / "users.ldif").write_text("\n".join(ldif))
    (folder / "htpasswd").write_text("".join(htpasswd))
    (folder / "db").mkdir()
    settings = {
        "instance": {"name": "bench", "base_url": "http://127.0.0.1"},
        "database": {"url": db_url or f"sqlite:///{folder / 'db' / 'openxpki.db'}"},
        "ca": {"key": {"backend": "pkcs11", "algorithm": "rsa-2048", "module": SOFTHSM, "token_label": "bench-ca",
                       "key_label": "ca", "pin_file": "pin"}, "subject": "CN=Bench CA"},
        "directory": {"backend": "ldif", "ldif_file": "users.ldif", "base_dn": "dc=example,dc=com",
                      "required": ["cn", "mail", "upn"]},
        "auth": {"roles": {"User": {"command": ["/bin/true"]}}},
        "web": {"session": {"cookie_secure": False}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    shutil.chown(folder, "www-data", "www-data")
    for p in folder.rglob("*"):
        shutil.chown(p, "www-data", "www-data")
    cli = [str(BIN / "openxpki-py"), "--config", str(folder / "config.yaml")]
    for args in (["init"], ["ca", "init", "--out", str(folder / "ca.pem")]):
        subprocess.run(cli + args, env=env, check=True, capture_output=True, user="www-data")
    return folder / "config.yaml", env


def card_operations(seconds_budget: float = 10.0) -> float:
    """Agent-side cost on a SoftHSM card: two RSA-2048 keygens + two CSR signatures (seconds)."""
    sys.path.insert(0, str(REPO / "bench"))
    from sign import softhsm_token  # noqa: PLC0415

    from openxpki_py.crypto.keys import KeySpec
    from openxpki_py.crypto.keys.pkcs11_backend import Pkcs11KeyBackend

    timings = []
    with softhsm_token("bench-card") as (module, label, pin):
        deadline = time.monotonic() + seconds_budget
        n = 0
        while time.monotonic() < deadline and n < 5:
            start = time.perf_counter()
            for slot in ("a", "b"):
                with Pkcs11KeyBackend(module=module, token_label=label, key_label=f"k{n}{slot}", pin=pin) as card:
                    csr_pem(card.generate_private_key(KeySpec.parse("rsa-2048")))
            timings.append(time.perf_counter() - start)
            n += 1
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--users", type=int, default=20, help="concurrent users (default 20)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per concurrency level (default 2)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=10)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="openxpki-bench-"))
    folder.chmod(0o755)
    db_url = admin = name = None
    if args.db == "postgresql":
        from sqlalchemy import create_engine, text

        name = f"oxp_bench_{secrets.token_hex(4)}"
        admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    site = None
    try:
        config, env = setup(folder, args.users, db_url)
        port = int(subprocess.run([sys.executable, "-c", "import socket;s=socket.socket();s.bind(('127.0.0.1',0));"
                                   "print(s.getsockname()[1])"], capture_output=True, text=True).stdout)
        subprocess.run([str(BIN / "openxpki-py"), "--config", str(config), "serve", "--port", str(port),
                        "--htpasswd", str(folder / "htpasswd"), "--server-root", str(folder / "httpd"),
                        "--apache-dir", str(REPO / "apache"), "--processes", str(args.processes),
                        "--threads", str(args.threads)], env=env, check=True, capture_output=True)
        site = folder / "httpd" / "apachectl"
        users = [f"user{i:03d}" for i in range(args.users)]
        # two keys per personalization: a warm-up, then `rounds` at each of the two concurrency levels
        per_user = 2 * (1 + 2 * args.rounds)
        keys = {u: [rsa.generate_private_key(65537, 2048) for _ in range(per_user)] for u in users}

        baseline = in_process_baseline(env, folder)
        print(f"CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.2f}; Apache {args.processes} processes x "
              f"{args.threads} threads; database {args.db}; CA key RSA-2048 in SoftHSM")
        print(f"baseline: two in-process issuances (same CA key, no HTTP, no workflow): {baseline * 1000:.1f} ms")
        used = 0
        run_round(port, users[:1], {u: keys[u][0:2] for u in users[:1]}, "warm")
        used = 2
        for concurrency in (1, args.users):
            samples: list[tuple[float, float]] = []
            started = time.perf_counter()
            for r in range(args.rounds):
                batch = users[:concurrency]
                samples += run_round(port, batch, {u: keys[u][used:used + 2] for u in batch}, f"c{concurrency}r{r}")
                used += 2
            elapsed = time.perf_counter() - started
            server = [s for s, _ in samples]
            wall = [w for _, w in samples]
            print(f"{concurrency:>3} concurrent: {len(samples)} personalizations, {len(samples) / elapsed:.1f}/s; "
                  f"server time p50 {pct(server, .5) * 1000:.0f} ms p99 {pct(server, .99) * 1000:.0f} ms "
                  f"(x{pct(server, .5) / baseline:.1f} baseline); wall p50 {pct(wall, .5) * 1000:.0f} ms "
                  f"p99 {pct(wall, .99) * 1000:.0f} ms")
        print(f"agent side, not included above: 2 x (RSA-2048 keygen + CSR) on a SoftHSM card: "
              f"{card_operations() * 1000:.0f} ms")
    finally:
        if site is not None:
            subprocess.run([str(site), "stop"], capture_output=True, check=False)
        if admin is not None:
            from sqlalchemy import text

            time.sleep(1)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
        shutil.rmtree(folder, ignore_errors=True)


def in_process_baseline(env: dict[str, str], folder: Path) -> float:
    """Two issuances straight through the CA, in this process, against a copy of the store."""
    os.environ["SOFTHSM2_CONF"] = env["SOFTHSM2_CONF"]
    from openxpki_py.config import load_config
    from openxpki_py.crypto.ca import IssuanceRequest
    from openxpki_py.services import Services

    services = Services(load_config(folder / "config.yaml"))
    attributes = {"cn": "Bench", "mail": "b@example.com", "upn": "b@example.com"}
    timings = []
    try:
        for _ in range(10):
            csrs = [csr_pem(rsa.generate_private_key(65537, 2048)).encode() for _ in range(2)]
            start = time.perf_counter()
            with services.db.begin() as conn:
                for data, profile in zip(csrs, ("smartcard_logon", "encryption")):
                    services.ca.issue_certificate(conn, IssuanceRequest(csr=data, profile=profile,
                                                                        subject_attributes=attributes,
                                                                        owner="bench", requester="bench"))
                conn.rollback()  # measure, keep the store as the server sees it
            timings.append(time.perf_counter() - start)
    finally:
        services.close()
    return statistics.median(timings)


if __name__ == "__main__":
    main()
