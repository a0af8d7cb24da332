"""Config errors name the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from openxpki_py.configreader import Reader
from openxpki_py.errors import ConfigError


def test_error_names_full_key() -> None:
    r = Reader({"ca": {"crl": {"validity_hours": "soon"}}}).section("ca").section("crl")
    with pytest.raises(ConfigError, match=r"^ca\.crl\.validity_hours: expected an integer, got 'soon'$"):
        r.int("validity_hours")


def test_missing_and_unknown_keys() -> None:
    r = Reader({"nmae": "x"}, "instance")
    with pytest.raises(ConfigError, match=r"^instance\.name: required key is missing$"):
        r.str("name")
    with pytest.raises(ConfigError, match=r"^instance\.nmae: unknown key$"):
        r.finish()


def test_choice_lists_options() -> None:
    r = Reader({"backend": "pkcs12"}, "ca.key")
    with pytest.raises(ConfigError, match="ca.key.backend: expected one of pkcs11, software, got 'pkcs12'"):
        r.choice("backend", ("pkcs11", "software"))


def test_secret_never_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="secrets are never written into the config"):
        Reader({"pin": "1234"}, "ca.key").secret("pin")
    pin_file = tmp_path / "pin"
    pin_file.write_text("1234\n")
    ref = Reader({"pin_file": "pin"}, "ca.key", tmp_path).secret("pin")
    assert ref is not None and ref.reveal() == "1234"
    assert "1234" not in repr(ref) and "1234" not in str(ref)
    env_ref = Reader({"pin_env": "OXP_TEST_PIN"}, "ca.key").secret("pin")
    assert env_ref is not None
    with pytest.raises(ConfigError, match="ca.key.pin_env: environment variable OXP_TEST_PIN is not set"):
        env_ref.reveal()
    monkeypatch.setenv("OXP_TEST_PIN", "9876")
    assert env_ref.reveal() == "9876"
    missing = Reader({"pin_file": "nope"}, "ca.key", tmp_path).secret("pin")
    assert missing is not None
    with pytest.raises(ConfigError, match="cannot read secret file .*nope"):
        missing.reveal()
