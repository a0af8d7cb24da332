"""The instance configuration: one YAML file → typed, validated objects.

Each part of the system parses its own section with a
:class:`~openxpki_py.configreader.Reader` (``directory/config.py``,
``auth/config.py`` …); this module reads the file, hands out the sections and
assembles :class:`Config`.  Every error names the offending key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from openxpki_py_token.secret import SecretRef

from .configreader import Reader
from .errors import ConfigError

if TYPE_CHECKING:
    from .audit.config import AuditConfig
    from .escrow.config import EscrowConfig
    from .auth.config import AuthConfig
    from .console.lifecycle import CardsConfig
    from .crypto.card_admin import CardAdminConfig
    from .crypto.keys.config import KeyConfig
    from .directory.config import DirectoryConfig
    from .personalization.policy import PersonalizationPolicy
    from .web.config import WebConfig
    from .workflow.config import WorkflowConfig

DEFAULT_CONFIG_PATH = Path("/etc/openxpki-py/config.yaml")
CONFIG_ENV = "OPENXPKI_PY_CONFIG"


@dataclass(frozen=True)
class InstanceConfig:
    name: str
    base_url: str


@dataclass(frozen=True)
class DatabaseConfig:
    url: str
    password: SecretRef | None

    def connect_url(self) -> str:
        """The URL with the password filled in (never log the result)."""
        if self.password is None:
            return self.url
        from sqlalchemy.engine import make_url

        return make_url(self.url).set(password=self.password.reveal()).render_as_string(hide_password=False)


@dataclass(frozen=True)
class CRLConfig:
    validity_hours: int
    publish_dir: Path | None
    url: str


RSA_PADDINGS: tuple[Literal["pkcs1v15", "pss"], ...] = ("pkcs1v15", "pss")
HASHES: tuple[Literal["sha256", "sha384", "sha512"], ...] = ("sha256", "sha384", "sha512")


@dataclass(frozen=True)
class OcspConfig:
    """The OCSP responder (crypto/ocsp.py): where it is announced, how long an answer holds."""

    url: str  # AIA id-ad-ocsp in every certificate
    validity_minutes: int = 60  # nextUpdate of each answer


@dataclass(frozen=True)
class CAConfig:
    key: KeyConfig
    subject: str
    validity_days: int
    rsa_padding: Literal["pkcs1v15", "pss"]
    hash: Literal["sha256", "sha384", "sha512"]
    crl: CRLConfig
    issuer_url: str  # AIA caIssuers
    profiles_dir: Path | None
    profile_variables: dict[str, str]
    ocsp: OcspConfig | None = None  # None: no responder, no OCSP URL in certificates


@dataclass(frozen=True)
class Config:
    path: Path
    instance: InstanceConfig
    database: DatabaseConfig
    ca: CAConfig
    directory: DirectoryConfig
    auth: AuthConfig
    web: WebConfig
    workflow: WorkflowConfig
    personalization: PersonalizationPolicy
    audit: AuditConfig
    card_admin: CardAdminConfig
    escrow: EscrowConfig | None = None  # the key-recovery key (openxpki_py.escrow); None in hand-built configs
    cards: CardsConfig = field(default_factory=lambda: _default_cards())  # the card lifecycle (console/lifecycle.py)


def _default_cards() -> CardsConfig:
    from .console.lifecycle import CardsConfig

    return CardsConfig()


def _parse_instance(r: Reader) -> InstanceConfig:
    base_url = r.str("base_url").rstrip("/")
    if not base_url.startswith(("https://", "http://")):
        raise r.error("base_url", "an http(s) URL such as https://pki.example.com")
    cfg = InstanceConfig(name=r.str("name"), base_url=base_url)
    r.finish()
    return cfg


def _parse_database(r: Reader) -> DatabaseConfig:
    url = r.str("url")
    if not url.startswith(("sqlite://", "postgresql", "oracle")):
        raise r.error("url", "an SQLAlchemy URL for sqlite, postgresql+psycopg or oracle+oracledb")
    cfg = DatabaseConfig(url=url, password=r.secret("password", required=False))
    r.finish()
    return cfg


def _parse_ca(r: Reader, instance: InstanceConfig) -> CAConfig:
    from .crypto.keys.config import parse_key_config

    key = parse_key_config(r.section("key", required=True))
    publication = _publication_url(r, instance)
    crl_r = r.section("crl")
    crl = CRLConfig(
        validity_hours=crl_r.int("validity_hours", 48, minimum=1),
        publish_dir=crl_r.filepath("publish_dir", None),
        url=crl_r.str("url", f"{publication}/{instance.name}.crl"),
    )
    crl_r.finish()
    cfg = CAConfig(
        key=key,
        subject=r.str("subject"),
        validity_days=r.int("validity_days", 3650, minimum=1),
        rsa_padding=r.choice("rsa_padding", RSA_PADDINGS, "pkcs1v15"),
        hash=r.choice("hash", HASHES, "sha256"),
        crl=crl,
        issuer_url=r.str("issuer_url", f"{publication}/{instance.name}.crt"),
        profiles_dir=r.filepath("profiles_dir", None, must_exist=True),
        profile_variables=r.str_map("profile_variables", {}),
        ocsp=_parse_ocsp(r.section("ocsp"), instance),
    )
    r.finish()
    return cfg


def _parse_ocsp(r: Reader, instance: InstanceConfig) -> OcspConfig | None:
    """``ca.ocsp``: on by default, served by the application at /openxpki/ocsp over plain http."""
    if not r.bool("enabled", True):
        r.finish()
        return None
    default_url = "http://" + instance.base_url.split("://", 1)[1] + "/openxpki/ocsp"
    url = r.str("url", default_url)
    if not url.startswith(("http://", "https://")):
        raise r.error("url", "an http URL such as http://pki.example.com/openxpki/ocsp")
    cfg = OcspConfig(url=url, validity_minutes=r.int("validity_minutes", OcspConfig.validity_minutes,
                                                     minimum=1, maximum=7 * 24 * 60))
    r.finish()
    return cfg


def _publication_url(r: Reader, instance: InstanceConfig) -> str:
    """Where relying parties fetch the CRL and the CA certificate: plain http by default.

    Many relying parties (Windows CAPI among them) fetch CRLs over http only,
    and checking revocation of the https server that serves the CRL can
    deadlock; the objects are signed, so http loses nothing.  Defaults to the
    web base URL's host over http, with ``/crl``.
    """
    default = "http://" + instance.base_url.split("://", 1)[1] + "/crl"
    url = r.str("publication_url", default).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise r.error("publication_url", "an http URL such as http://pki.example.com/crl")
    return url


def parse_config(data: Any, path: Path) -> Config:
    """Validate a parsed YAML document; ``path`` anchors relative paths."""
    from .audit.config import parse_audit_config
    from .auth.config import parse_auth_config
    from .console.lifecycle import parse_cards_config
    from .crypto.card_admin import parse_card_admin_config
    from .directory.config import parse_directory_config
    from .escrow.config import parse_escrow_config
    from .personalization.policy import parse_personalization_config
    from .web.config import parse_web_config
    from .workflow.config import parse_workflow_config

    root = Reader(data, "", path.parent)
    instance = _parse_instance(root.section("instance", required=True))
    ca = _parse_ca(root.section("ca", required=True), instance)
    personalization = parse_personalization_config(root.section("personalization"))
    cfg = Config(
        path=path,
        instance=instance,
        database=_parse_database(root.section("database", required=True)),
        ca=ca,
        directory=parse_directory_config(root.section("directory")),
        auth=parse_auth_config(root.section("auth")),
        web=parse_web_config(root.section("web")),
        workflow=parse_workflow_config(root.section("workflow")),
        personalization=personalization,
        audit=parse_audit_config(root.section("audit"), ca.key),
        card_admin=parse_card_admin_config(root.section("card_admin"), ca.key),
        escrow=parse_escrow_config(root.section("escrow"), ca.key, personalization),
        cards=parse_cards_config(root.section("cards")),
    )
    root.finish()
    return cfg


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the instance config from ``path``, ``$OPENXPKI_PY_CONFIG`` or the default."""
    p = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist (give --config PATH or set {CONFIG_ENV})") from None
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {p}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    return parse_config(data, p.resolve())
