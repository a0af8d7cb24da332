"""Every configuration shipped in contrib/ loads (STYLE: examples are complete and tested)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from openxpki_py.config import load_config, parse_config
from openxpki_py.errors import ConfigError

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "config" / "config.yaml"


def test_example_config_loads() -> None:
    cfg = load_config(CONTRIB)
    assert cfg.instance.name == "example-pki"
    assert cfg.ca.key.algorithm == "rsa-2048" and cfg.ca.key.backend == "pkcs11"
    assert cfg.ca.crl.url == "http://pki.example.com/crl/example-pki.crl"
    assert [t.name for t in cfg.personalization.certificates] == ["authentication", "encryption"]
    assert cfg.personalization.certificates[0].keep_valid_days == 30
    assert cfg.directory.backend == "ldif"
    assert set(cfg.auth.roles) == {"User", "RA Operator", "CA Operator", "Key Recovery Officer"}
    # The encryption key survives a lost card: escrowed under its own HSM key, not the CA key.
    assert [t.key_origin for t in cfg.personalization.certificates] == ["card", "escrowed"]
    assert cfg.escrow is not None and cfg.escrow.key is not None
    assert cfg.escrow.key.key_label == "ca-signing-escrow" != cfg.ca.key.key_label
    assert cfg.escrow.history_keys == 3


@pytest.mark.parametrize(("path", "value", "message"), [
    (("ca", "crl", "validity_hours"), "two days", "ca.crl.validity_hours: expected an integer, got 'two days'"),
    (("ca", "key", "backend"), "pkcs12", "ca.key.backend: expected one of pkcs11, software, got 'pkcs12'"),
    (("personalization", "enrollment", "code_lifetime"), 5, "personalization.enrollment.code_lifetime: "
     "expected an integer between 30 and 3600, got 5"),
    (("instance", "base_url"), "pki.example.com", "instance.base_url: expected an http(s) URL"),
    (("database", "url"), "mysql://x", "database.url: expected an SQLAlchemy URL"),
    (("escrow", "key", "key_label"), "ca-signing", "escrow.key.key_label: names the CA key"),
])
def test_broken_values_name_their_key(path: tuple[str, ...], value: object, message: str) -> None:
    data = yaml.safe_load(CONTRIB.read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as info:
        parse_config(data, CONTRIB)
    assert message in str(info.value)


def test_typo_is_refused_and_unreadable_file_named(tmp_path: Path) -> None:
    data = yaml.safe_load(CONTRIB.read_text())
    data["ca"]["validty_days"] = 10
    with pytest.raises(ConfigError, match=r"^ca\.validty_days: unknown key$"):
        parse_config(data, CONTRIB)
    with pytest.raises(ConfigError, match="config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("instance: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+, column \d+: not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(("index", "changes", "message"), [
    (0, {"key_origin": "escrowed"}, "key_origin: expected card, unless usage is decrypt"),
    (1, {"key_origin": "server"}, "key_origin: expected one of card, escrowed"),
])
def test_escrowed_types_are_decryption_keys(index: int, changes: dict[str, str], message: str) -> None:
    data = yaml.safe_load(CONTRIB.read_text())
    data["personalization"]["certificates"][index].update(changes)
    with pytest.raises(ConfigError, match=message):
        parse_config(data, CONTRIB)


@pytest.mark.parametrize("key", ["rsa-3072", "ec-p256", "ec-p384"])
def test_an_escrowed_type_may_be_rsa_or_ec(key: str) -> None:
    """RSA is proved by a decryption on the card, EC by ECDH; both for the type and per card type."""
    data = yaml.safe_load(CONTRIB.read_text())
    data["personalization"]["certificates"][1]["key"] = key
    data["personalization"]["card_types"] = {"piv": {"key": {"encryption": key}}}
    cfg = parse_config(data, CONTRIB)
    assert cfg.personalization.certificates[1].key.name == key
    assert cfg.personalization.for_card("piv").key_for(cfg.personalization.certificates[1]).name == key


def test_escrowed_type_needs_an_escrow_key() -> None:
    """With a software CA key there is no HSM to derive the key-recovery key from: say so at load time."""
    data = yaml.safe_load(CONTRIB.read_text())
    del data["escrow"]
    data["card_admin"] = {"enabled": False}  # it would refuse the software key first, for its own reason
    data["ca"]["key"] = {"backend": "software", "algorithm": "rsa-2048", "path": "ca.pem", "password_env": "X"}
    with pytest.raises(ConfigError, match="escrow.key: certificate types encryption are escrowed"):
        parse_config(data, CONTRIB)
    data["personalization"]["certificates"][1]["key_origin"] = "card"
    assert parse_config(data, CONTRIB).escrow.key is None  # type: ignore[union-attr]
