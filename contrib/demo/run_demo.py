#!/usr/bin/env python3
"""`make demo`: an openxpki-py instance on embedded defaults, and its main job.

    python contrib/demo/run_demo.py [--dir /var/tmp/openxpki-py-demo] [--port 8080] [--card softhsm|openpgp|piv]

Builds everything in one folder (wiped first, a running demo is stopped):
a SQLite database, the demo LDIF directory, a SoftHSM2 token holding the
CA key, a second SoftHSM2 token (with its own SoftHSM configuration, as on
the user's PC) standing in for alice's smartcard, and Apache via
mod_wsgi-express with Basic authentication standing in for the SSO.

Then it runs the personalization as alice would: opens /token, gets the
enrollment code, runs the token agent against the card, confirms the card
when the page asks, and waits until the page says the card is ready.  It
prints what was issued and `pkcs11-tool --list-objects` of the card, and
leaves the server running.

`--card openpgp|piv` (`make demo CARD=…`) puts a software OpenPGP or PIV
card behind pcscd and vsmartcard's vpcd reader instead (`virtual_card.py`,
borrowed from the test suite); the page then shows the card's plan, e.g.
that the OpenPGP card's decryption slot takes the escrowed key but keeps no
earlier ones.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import http.cookiejar
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
APACHE_USER = "www-data"
CA_TOKEN, CARD_TOKEN = "openxpki-ca", "alice-card"
USER, PASSWORD = "alice", "alice"
# The operators (docs/operators.md), each in the demo directory's group for the role;
# login = password, as alice's.  role → (login, group DN in contrib/ldap/demo.ldif)
OPERATORS = {"RA Operator": ("bob", "cn=ra-operators,ou=groups,dc=example,dc=com"),
             "CA Operator": ("carol", "cn=ca-operators,ou=groups,dc=example,dc=com")}
CHECK_LDIF_GROUP = REPO / "contrib" / "auth" / "check-ldif-group"
CARD_PIN, CARD_SO_PIN = "123456", "12345678"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def fail(text: str) -> None:
    sys.exit(f"\ndemo failed: {text}")


def run(argv: list[str], env: dict[str, str], *, as_apache: bool = False) -> subprocess.CompletedProcess[str]:
    # The CA's files (database, HSM token) belong to Apache's user: the CLI
    # works on them as that user, so nothing it creates is out of Apache's reach.
    user = APACHE_USER if as_apache and os.geteuid() == 0 else None
    result = subprocess.run(argv, env=env, text=True, capture_output=True, check=False, user=user)
    if result.returncode != 0:
        fail(f"{' '.join(argv[:5])} …: {result.stderr.strip() or result.stdout.strip()}")
    return result


def write_private(path: Path, value: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return path


def softhsm(folder: Path) -> Path:
    (folder / "tokens").mkdir(parents=True)
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    return conf


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


def make_instance(base: Path, env: dict[str, str], port: int) -> dict[str, str]:
    """Config, directory, HSM tokens, htpasswd; returns the env for Apache's side."""
    ca_env = {**env, "SOFTHSM2_CONF": str(softhsm(base / "hsm"))}
    ca_pin = secrets.token_hex(8)
    run(["softhsm2-util", "--init-token", "--free", "--label", CA_TOKEN, "--so-pin", secrets.token_hex(8),
         "--pin", ca_pin], ca_env)
    write_private(base / "ca-token.pin", ca_pin)
    shutil.copy(REPO / "contrib" / "ldap" / "demo.ldif", base / "directory.ldif")
    (base / "db").mkdir()
    settings = {
        "instance": {"name": "demo-pki", "base_url": "http://127.0.0.1"},
        "database": {"url": f"sqlite:///{base / 'db' / 'openxpki.db'}"},
        "ca": {
            "key": {"backend": "pkcs11", "algorithm": "rsa-2048", "module": SOFTHSM_MODULE,
                    "token_label": CA_TOKEN, "key_label": "ca-signing", "pin_file": "ca-token.pin"},
            "subject": "CN=Demo Smartcard CA,O=Example Corp,C=DE",
            "crl": {"publish_dir": "crl"},
            # The certificates' CRL and CA-issuer URLs answer on the demo's own port.
            "publication_url": f"http://127.0.0.1:{port}/crl",
            "profile_variables": {"organization": "Example Corp", "country": "DE",
                                  "kerberos_realm": "EXAMPLE.COM"},
        },
        "directory": {"backend": "ldif", "ldif_file": "directory.ldif", "base_dn": "dc=example,dc=com",
                      "required": ["cn", "mail", "upn"]},
        "auth": {"roles": demo_roles(base / "directory.ldif")},
        "web": {"session": {"cookie_secure": False}},  # plain http on 127.0.0.1 only
        # Per-card admin credentials (PIV management key and PUK, OpenPGP admin PIN) from the HSM.
        "card_admin": {"enabled": True},
        # The encryption key is escrowed (docs/key-escrow.md): made on the server, sealed under the
        # key-recovery key in the HSM, imported onto the card; the logon key is made on the card.
        "personalization": {"certificates": [
            {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048", "key_id": "01",
             "usage": "sign"},
            {"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02",
             "usage": "decrypt", "key_origin": "escrowed"},
        ]},
    }
    (base / "config.yaml").write_text("# made by `make demo`\n" + yaml.safe_dump(settings, sort_keys=False))
    accounts = {USER: PASSWORD, **{login: login for login, _ in OPERATORS.values()}}
    (base / "htpasswd").write_text("".join(
        f"{login}:{{SHA}}{base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()}\n"
        for login, password in accounts.items()))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(APACHE_USER)
        for path in (base, *base.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return ca_env


def demo_roles(ldif: Path) -> dict[str, Any]:
    """User for everyone; each operator role for its directory group, checked in the LDIF file.

    The roles' "External Static" handler is contrib/auth/check-ldif-group, the
    embedded directory's counterpart of check-ldap-group (docs/sso.md).
    """
    roles: dict[str, Any] = {"User": {"command": ["/bin/true"]}}
    for role, (_, group) in OPERATORS.items():
        roles[role] = {"command": [str(CHECK_LDIF_GROUP), str(ldif), group]}
    return roles


class Browser:
    """alice's browser, as far as the demo needs one: Basic auth, cookies, forms."""

    def __init__(self, site: str) -> None:
        self.site = site
        passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
        passwords.add_password(None, site, USER, PASSWORD)
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPBasicAuthHandler(passwords),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.url = site

    def open(self, path_or_url: str, form: dict[str, str] | None = None) -> str:
        url = urllib.parse.urljoin(self.url, path_or_url)
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        with self.opener.open(url, data=data, timeout=60) as response:
            self.url = response.geturl()
            return str(response.read().decode())

    @staticmethod
    def field(page: str, name: str) -> str:
        match = re.search(rf'name="{name}" value="([^"]*)"', page)
        if not match:
            fail(f"the page has no {name} field")
        return match.group(1)  # type: ignore[union-attr]


def personalize(site: str, base: Path, venv: Path, env: dict[str, str], card: Any = None) -> None:
    browser = Browser(site)
    page = browser.open("/token")
    print(f"    {USER} opened {site}/token → {browser.url}")
    page_url = browser.url  # …/deeplink/workflow/<id>: the page without menu
    actions_url = page_url.replace("/deeplink/workflow/", "/personalize/")
    page = browser.open(actions_url + "/code", {"csrf_token": browser.field(page, "csrf_token"), "mode": "deeplink"})
    code = re.search(r'<code id="enrollment-code">([A-Z0-9-]+)</code>', page)
    command = re.search(r'<pre id="agent-command">([^<]+)</pre>', page)
    if not code or not command:
        fail("the page shows no enrollment code")
    print(f"    the page shows the enrollment code {code.group(1)} and the command:\n"  # type: ignore[union-attr]
          f"      {command.group(1)}")  # type: ignore[union-attr]

    argv = command.group(1).split()  # type: ignore[union-attr]
    argv[0] = str(venv / "bin" / "openxpki-py-token")
    if card is None:
        card_env = {**env, "SOFTHSM2_CONF": str(softhsm(base / "card"))}  # the user's PC: its own SoftHSM
        run(["softhsm2-util", "--init-token", "--free", "--label", CARD_TOKEN, "--so-pin", CARD_SO_PIN,
             "--pin", CARD_PIN], card_env)
        write_private(base / "card" / "pin", CARD_PIN)
        argv += ["--module", SOFTHSM_MODULE, "--token-label", CARD_TOKEN, "--pin-file", str(base / "card" / "pin"),
                 "--card-profile", "generic", "--state-dir", str(base / "card" / "agent-state")]
        step(f"token agent, talking PKCS#11 to the card '{CARD_TOKEN}' (progress below)")
    else:
        card_env = {k: v for k, v in env.items() if k != "SOFTHSM2_CONF"}
        argv += [*card.agent_options(), "--state-dir", str(base / "card" / "agent-state")]
        step(f"token agent, talking to the virtual {card.kind} card through pcscd (progress below)")
    agent = subprocess.Popen(argv, env=card_env, text=True)
    deadline = time.monotonic() + 120
    confirmed = False
    while agent.poll() is None:
        if time.monotonic() > deadline:
            agent.kill()
            fail("the personalization did not finish within two minutes")
        page = browser.open(page_url)
        if not confirmed and "Is this your card?" in page:
            serial = re.search(r'id="card-serial">([^<]+)<', page)
            phrase = re.search(r'id="pairing-phrase">([^<]+)<', page)
            print(f"    browser: the page shows card {serial.group(1) if serial else '?'} and the phrase "
                  f"\"{phrase.group(1) if phrase else '?'}\" (the agent printed it above); alice confirms both")
            for line in card_plan(page):
                print(f"    browser: plan for this card: {line}")
            browser.open(actions_url + "/action", {
                "csrf_token": browser.field(page, "csrf_token"), "version": browser.field(page, "version"),
                "agent": browser.field(page, "agent"), "mode": "deeplink", "action": "confirm_token"})
            confirmed = True
        time.sleep(0.3)
    if agent.returncode != 0:
        fail(f"the token agent exited with {agent.returncode}")
    page = browser.open(page_url)
    ready = re.search(r'id="status-message"[^>]*>(Your card is ready[^<]*)<', page)
    if not ready:
        fail("the page does not say the card is ready")
    print(f"    browser: \"{html.unescape(ready.group(1))}\" ({page_url})")  # type: ignore[union-attr]


def card_plan(page: str) -> list[str]:
    """The page's list of what the card will get (and what not, why)."""
    section = re.search(r'<section[^>]*id="card-plan".*?</section>', page, re.S)
    items = re.findall(r'<li[^>]*>.*?</span>\s*(.*?)<span class="visually-hidden">', section.group(0) if section
                       else "", re.S)
    return [" ".join(html.unescape(item).split()) for item in items]


def show_issued(cli: list[str], ca_env: dict[str, str]) -> None:
    step("issued certificates")
    listing = run(cli + ["ca", "list", "--owner", USER], ca_env, as_apache=True).stdout
    print("    " + listing.strip().replace("\n", "\n    "))
    step(f"escrowed keys of {USER} (the encryption key; openxpki-py escrow list — no key material)")
    listing = run(cli + ["escrow", "list", "--owner", USER], ca_env, as_apache=True).stdout
    print("    " + listing.strip().replace("\n", "\n    "))
    print("    two Key Recovery Officers can release it to its owner after a lost card (openxpki-py escrow "
          "recover|approve|release); the owner collects it on My certificates")


def personalize_and_show(args: argparse.Namespace, site: str, base: Path, venv: Path, env: dict[str, str],
                         cli: list[str], ca_env: dict[str, str]) -> None:
    """alice's personalization on the chosen card, then what was issued and what the card holds."""
    if args.card == "softhsm":
        step(f"personalization of {USER}'s card")
        personalize(site, base, venv, env)
        show_issued(cli, ca_env)
        step(f"objects on {USER}'s card (pkcs11-tool --list-objects)")
        card_env = {**env, "SOFTHSM2_CONF": str(base / "card" / "softhsm2.conf")}
        print(run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", CARD_TOKEN, "--login",
                   "--pin", CARD_PIN, "--list-objects"], card_env).stdout)
    else:
        from virtual_card import VirtualCardStack  # the tests' smartcard stack: only for --card openpgp|piv

        step(f"a virtual {args.card} card in vpcd's reader, pcscd {'as it runs' if args.pcscd_running else 'started'}")
        try:
            with VirtualCardStack(args.card, base / "card", own_pcscd=not args.pcscd_running) as card:
                step(f"personalization of {USER}'s card")
                personalize(site, base, venv, env, card)
                show_issued(cli, ca_env)
                step(f"objects on {USER}'s card, through OpenSC (pkcs11-tool --list-objects)")
                print(card.list_objects())
        except RuntimeError as exc:
            fail(str(exc))
        print("The virtual card is removed" + ("" if args.pcscd_running else " and pcscd stopped")
              + " again (only one pcscd can run on a machine).")


def main() -> None:
    parser = argparse.ArgumentParser(description="openxpki-py demo")
    parser.add_argument("--dir", default="/var/tmp/openxpki-py-demo", type=Path)
    parser.add_argument("--venv", default=Path(sys.executable).parent.parent, type=Path)
    parser.add_argument("--port", default=8080, type=int)
    parser.add_argument("--card", default="softhsm", choices=("softhsm", "openpgp", "piv"),
                        help="alice's card: a SoftHSM token (default), or a software OpenPGP or PIV card "
                             "behind pcscd + vpcd (needs `make test-deps`)")
    parser.add_argument("--pcscd-running", action="store_true",
                        help="use the pcscd that runs already (a test's) instead of starting one")
    args = parser.parse_args()
    base: Path = args.dir.resolve()
    venv: Path = args.venv
    if (base / "httpd" / "apachectl").exists():
        subprocess.run([str(base / "httpd" / "apachectl"), "stop"], capture_output=True, check=False)
        time.sleep(1)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True, mode=0o755)
    base.chmod(0o755)
    if os.geteuid() == 0 and subprocess.run(["test", "-x", str(base)], user=APACHE_USER, check=False).returncode:
        fail(f"Apache's user {APACHE_USER} cannot reach {base}; choose a --dir below a world-readable folder "
             "such as /var/tmp")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    cli = [str(venv / "bin" / "openxpki-py"), "--config", str(base / "config.yaml"), "--actor", "demo"]

    port = free_port(args.port)
    step(f"instance in {base}: SQLite, LDIF directory, SoftHSM token '{CA_TOKEN}' for the CA key")
    ca_env = make_instance(base, env, port)
    print("    " + run(cli + ["config", "check"], ca_env, as_apache=True).stdout.strip())
    print("    " + run(cli + ["init"], ca_env, as_apache=True).stdout.strip())

    step("CA key generated inside the HSM token, self-signed root")
    print("    " + run(cli + ["ca", "init", "--out", str(base / "db" / "ca.pem")], ca_env,
                       as_apache=True).stderr.strip())
    print("    " + run(cli + ["ca", "card-admin-init"], ca_env, as_apache=True).stdout.strip())
    print("    " + run(cli + ["ca", "crl"], ca_env, as_apache=True).stdout.strip().replace("\n", "\n    "))

    step(f"Apache (mod_wsgi-express) on 127.0.0.1:{port}, Basic auth standing in for the SSO")
    print("    " + run(cli + ["serve", "--port", str(port), "--htpasswd", str(base / "htpasswd"),
                             "--server-root", str(base / "httpd"), "--apache-dir", str(REPO / "apache")],
                       ca_env).stdout.strip())
    site = f"http://127.0.0.1:{port}"

    personalize_and_show(args, site, base, venv, env, cli, ca_env)

    print(f"The server keeps running: open {site}/token (user {USER}, password {PASSWORD}),\n"
          f"the CRL is at {site}/crl/demo-pki.crl.  Stop it with: {base / 'httpd' / 'apachectl'} stop")
    print("Operators' console: open " + f"{site}/openxpki/console" + " and log in as")
    for role, (login, group) in OPERATORS.items():
        print(f"    user {login}, password {login}: pick the role {role} (member of {group.split(',')[0]})")
    print(f"e.g. as bob (RA Operator) search for {USER}, open her card, suspend and resume it; "
          "Audit log → Verify chain.")


if __name__ == "__main__":
    main()
