#!/usr/bin/env python3
"""`make demo`: an openxpki-py instance on embedded defaults, and its main job.

    python contrib/demo/run_demo.py [--dir /var/tmp/openxpki-py-demo] [--venv /opt/openxpki-py/venv]

Builds everything in one folder (wiped first): a SoftHSM2 token holding the
CA key, a second SoftHSM2 token standing in for alice's smartcard, a SQLite
database and the demo LDIF directory.  Then it initialises the CA inside the
HSM token, generates two key pairs on the "card", has the CA issue alice's
smart card logon and encryption certificates (subject, UPN and mail from the
directory), writes them to the card next to their keys, issues a CRL, and
prints what was issued and the card's objects.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
CA_TOKEN = "openxpki-ca"
CARD_TOKEN = "alice-card"
USER = "alice"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def run(argv: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, env=env, text=True, capture_output=True, check=False, **kw)
    if result.returncode != 0:
        sys.exit(f"demo failed: {' '.join(argv[:4])} …: {result.stderr.strip() or result.stdout.strip()}")
    return result


def write_secret(path: Path, value: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return path


def make_instance(base: Path, env: dict[str, str]) -> Path:
    softhsm = base / "softhsm"
    (softhsm / "tokens").mkdir(parents=True)
    conf = softhsm / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {softhsm / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env["SOFTHSM2_CONF"] = str(conf)
    ca_pin = secrets.token_hex(8)
    run(["softhsm2-util", "--init-token", "--free", "--label", CA_TOKEN, "--so-pin", secrets.token_hex(8),
         "--pin", ca_pin], env)
    run(["softhsm2-util", "--init-token", "--free", "--label", CARD_TOKEN, "--so-pin", "12345678",
         "--pin", "123456"], env)
    write_secret(base / "ca-token.pin", ca_pin)
    write_secret(base / "card.pin", "123456")
    shutil.copy(REPO / "contrib" / "ldap" / "demo.ldif", base / "directory.ldif")
    settings = {
        "instance": {"name": "demo-pki", "base_url": "http://localhost:8080"},
        "database": {"url": f"sqlite:///{base / 'openxpki.db'}"},
        "ca": {
            "key": {"backend": "pkcs11", "algorithm": "rsa-2048", "module": SOFTHSM_MODULE,
                    "token_label": CA_TOKEN, "key_label": "ca-signing", "pin_file": "ca-token.pin"},
            "subject": "CN=Demo Smartcard CA,O=Example Corp,C=DE",
            "crl": {"publish_dir": "crl"},
            "profile_variables": {"organization": "Example Corp", "country": "DE"},
        },
        "directory": {"backend": "ldif", "ldif_file": "directory.ldif", "base_dn": "dc=example,dc=com",
                      "required": ["cn", "mail", "upn"]},
        "auth": {"roles": {"User": {"command": ["/bin/true"]}}},
        "web": {"session": {"cookie_secure": False}},
    }
    path = base / "config.yaml"
    path.write_text("# made by `make demo`\n" + yaml.safe_dump(settings, sort_keys=False))
    return path


def personalize_card(base: Path, cli: list[str], env: dict[str, str]) -> list[Path]:
    """Keys made on the card, CSRs signed on the card, certificates back onto it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from openxpki_py.configreader import SecretRef
    from openxpki_py.crypto.keys import KeySpec
    from openxpki_py.crypto.keys.pkcs11_backend import Pkcs11KeyBackend

    os.environ["SOFTHSM2_CONF"] = env["SOFTHSM2_CONF"]
    pin = SecretRef("demo.card_pin", file=base / "card.pin")
    issued = []
    for key_id, label, profile in (("01", "authentication", "smartcard_logon"), ("02", "encryption", "encryption")):
        with Pkcs11KeyBackend(module=SOFTHSM_MODULE, token_label=CARD_TOKEN, key_label=label,
                              key_id=bytes.fromhex(key_id), pin=pin) as card:
            key = card.generate_private_key(KeySpec.parse("rsa-2048"))
            csr = (x509.CertificateSigningRequestBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, USER)]))
                   .sign(key, hashes.SHA256()))
        csr_path = base / f"{label}.csr"
        csr_path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
        print(f"    key pair {label} generated on the card (CKA_ID {key_id}), CSR signed on the card")
        cert_path = base / f"{label}.pem"
        result = run(cli + ["ca", "issue", "--profile", profile, "--csr", str(csr_path), "--user", USER,
                            "--out", str(cert_path)], env)
        print("    " + result.stderr.strip().splitlines()[-1])
        der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
        (base / f"{label}.der").write_bytes(der)
        run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", CARD_TOKEN, "--login",
             "--pin", "123456", "--write-object", str(base / f"{label}.der"), "--type", "cert",
             "--id", key_id, "--label", label], env)
        issued.append(cert_path)
    return issued


def main() -> None:
    parser = argparse.ArgumentParser(description="openxpki-py demo")
    parser.add_argument("--dir", default="/var/tmp/openxpki-py-demo", type=Path)
    parser.add_argument("--venv", default=Path(sys.executable).parent.parent, type=Path)
    args = parser.parse_args()
    base: Path = args.dir.resolve()
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True, mode=0o755)
    env = {**os.environ}
    cli = [str(args.venv / "bin" / "openxpki-py"), "--config", str(base / "config.yaml"), "--actor", "demo"]

    step(f"instance in {base}: SQLite, LDIF directory, SoftHSM tokens '{CA_TOKEN}' (CA) and '{CARD_TOKEN}' (card)")
    make_instance(base, env)
    print(run(cli + ["config", "check"], env).stdout.strip())

    step("CA key generated inside the HSM token, self-signed root")
    print("    " + run(cli + ["ca", "init", "--out", str(base / "ca.pem")], env).stderr.strip())

    step(f"{USER}'s card: two key pairs on the card, two certificates from the CA")
    certs = personalize_card(base, cli, env)

    step("CRL")
    print("    " + run(cli + ["ca", "crl"], env).stdout.strip().replace("\n", "\n    "))

    step("issued certificates")
    for cert in certs:
        text = run(["openssl", "x509", "-in", str(cert), "-noout", "-subject", "-serial", "-enddate", "-ext",
                    "subjectAltName,extendedKeyUsage"], env).stdout
        print(f"  {cert.name}:\n    " + text.strip().replace("\n", "\n    "))
        print("    " + run(["openssl", "verify", "-CAfile", str(base / "ca.pem"), str(cert)], env).stdout.strip())

    step(f"objects on {USER}'s card (pkcs11-tool --list-objects)")
    print(run(["pkcs11-tool", "--module", SOFTHSM_MODULE, "--token-label", CARD_TOKEN, "--login", "--pin",
               "123456", "--list-objects"], env).stdout)
    print(f"Instance: {base}  (config {base / 'config.yaml'}; SOFTHSM2_CONF={env['SOFTHSM2_CONF']})")


if __name__ == "__main__":
    main()
