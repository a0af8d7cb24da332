"""A complete openxpki-py instance for a test (a pytest plugin).

``make_instance(db=engine, algorithm="rsa-2048", init_ca=True)`` writes a
config file in a fresh world-readable folder (Apache's www-data may serve
it), with the CA key in a new SoftHSM token, the demo LDIF directory and the
given database; it returns an :class:`Instance` with loaded config and
:class:`~openxpki_py.services.Services`.  With ``init_ca`` the CA is
initialised inside the token.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import Engine

from openxpki_py.config import Config, load_config
from openxpki_py.services import Services

REPO = Path(__file__).resolve().parents[2]
DEMO_LDIF = REPO / "contrib" / "ldap" / "demo.ldif"


@dataclass
class Instance:
    folder: Path
    config_path: Path
    config: Config
    services: Services
    ca_token: Any
    settings: dict[str, Any] = field(default_factory=dict)

    def reload(self) -> Instance:
        """A new Services from the same file (as a second process would build)."""
        self.services.close()
        self.config = load_config(self.config_path)
        self.services = Services(self.config)
        return self


def instance_settings(folder: Path, *, db_url: str, token: Any, algorithm: str) -> dict[str, Any]:
    pin_file = token.write_pin(folder / "ca-token.pin")
    return {
        "instance": {"name": "test-pki", "base_url": "http://pki.test.example"},
        "database": {"url": db_url},
        "ca": {
            "key": {
                "backend": "pkcs11",
                "algorithm": algorithm,
                "module": str(token.module),
                "token_label": token.label,
                "key_label": "ca-signing",
                "pin_file": str(pin_file),
            },
            "subject": "CN=Test Smartcard CA,O=Example Corp,C=DE",
            "crl": {"publish_dir": str(folder / "crl"), "validity_hours": 48},
            "profile_variables": {"organization": "Example Corp", "country": "DE"},
        },
        "directory": {"backend": "ldif", "ldif_file": str(DEMO_LDIF), "base_dn": "dc=example,dc=com",
                      "required": ["cn", "mail", "upn"]},
        "auth": {"roles": {"User": {"command": ["/bin/true"]}}},
        "web": {"session": {"cookie_secure": False}},
    }


@pytest.fixture
def make_instance(make_token: Callable[..., Any]) -> Iterator[Callable[..., Instance]]:
    made: list[Instance] = []

    def make(db: Engine, *, algorithm: str = "rsa-2048", init_ca: bool = True,
             overrides: Callable[[dict[str, Any]], None] | None = None) -> Instance:
        folder = Path(tempfile.mkdtemp(prefix="openxpki-instance-"))
        folder.chmod(0o755)
        token = make_token(f"ca-{secrets.token_hex(4)}")
        settings = instance_settings(folder, db_url=db.url.render_as_string(hide_password=False),
                                     token=token, algorithm=algorithm)
        if overrides is not None:
            overrides(settings)
        config_path = folder / "config.yaml"
        config_path.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
        config = load_config(config_path)
        inst = Instance(folder, config_path, config, Services(config), token, settings)
        made.append(inst)
        if init_ca:
            with inst.services.db.begin() as conn:
                inst.services.ca.initialize(conn, actor="test")
            if inst.services.card_admin is not None:  # as `openxpki-py ca card-admin-init` does at setup
                inst.services.card_admin.create()
        return inst

    yield make
    for inst in made:
        inst.services.close()
        shutil.rmtree(inst.folder, ignore_errors=True)
