"""The software (development) key backend, key specs and the ``ca.key`` config."""

from __future__ import annotations

import logging
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from openxpki_py_token.secret import SecretRef

from openxpki_py.configreader import Reader
from openxpki_py.crypto.keys import (
    KeySpec,
    Pkcs11KeyConfig,
    SoftwareKeyConfig,
    open_key_backend,
    parse_key_config,
)
from openxpki_py.crypto.keys.software import SoftwareKeyBackend
from openxpki_py.errors import ConfigError, TokenError, TokenKeyNotFound, TokenPinError

NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Software Test CA")])
PSS = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)


def secret(tmp_path: Path, value: str, name: str = "key.password") -> SecretRef:
    path = tmp_path / name
    path.write_text(value + "\n", encoding="utf-8")
    return SecretRef("ca.key.password_file", file=path)


@pytest.fixture
def backend(tmp_path: Path) -> SoftwareKeyBackend:
    return SoftwareKeyBackend(path=tmp_path / "ca-key.pem", password=secret(tmp_path, "s3cret"))


# --- the backend ------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "rsa_padding"), [("rsa-2048", padding.PKCS1v15()), ("rsa-2048", PSS),
                                                   ("ec-p256", None), ("ec-p384", None)],
                         ids=["rsa-pkcs1v15", "rsa-pss", "ec-p256", "ec-p384"])
def test_sign_certificate_and_csr(backend: SoftwareKeyBackend, name: str, rsa_padding: Any) -> None:
    backend.generate_private_key(KeySpec.parse(name))
    key = backend.load_private_key()
    assert KeySpec.of(key) == KeySpec.parse(name)
    kwargs = {"rsa_padding": rsa_padding} if rsa_padding is not None else {}
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256(), **kwargs))
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        public.verify(cert.signature, cert.tbs_certificate_bytes, rsa_padding, hashes.SHA256())
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    csr = x509.CertificateSigningRequestBuilder().subject_name(NAME).sign(key, hashes.SHA256(), **kwargs)
    assert csr.is_signature_valid


def test_every_open_logs_a_loud_warning(backend: SoftwareKeyBackend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="openxpki_py.crypto.keys")
    backend.generate_private_key(KeySpec.parse("ec-p256"))
    backend.load_private_key()
    backend.load_private_key()
    warnings = [r for r in caplog.records
                if r.name == "openxpki_py.crypto.keys" and r.levelno == logging.WARNING]
    assert len(warnings) == 3
    for record in warnings:
        text = record.getMessage()
        assert "software CA key" in text and "development only" in text and "not an HSM" in text
        assert "s3cret" not in text


def test_generate_writes_0600_encrypted_pkcs8_and_never_overwrites(backend: SoftwareKeyBackend) -> None:
    assert not backend.key_exists()
    backend.generate_private_key(KeySpec.parse("ec-p256"))
    assert backend.key_exists()
    assert stat.S_IMODE(backend.path.stat().st_mode) == 0o600
    data = backend.path.read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TokenError, match=r"already exists; an existing CA key is never overwritten"):
        backend.generate_private_key(KeySpec.parse("ec-p256"))
    assert backend.path.read_bytes() == data


def test_wrong_password_is_a_clear_error(backend: SoftwareKeyBackend, tmp_path: Path) -> None:
    backend.generate_private_key(KeySpec.parse("ec-p256"))
    wrong = SoftwareKeyBackend(path=backend.path, password=secret(tmp_path, "guess", "wrong.password"))
    with pytest.raises(TokenPinError, match=r"^cannot decrypt software CA key .*ca-key\.pem: wrong password "
                                            r"\(read from ca\.key\.password_file\)") as info:
        wrong.load_private_key()
    assert "guess" not in str(info.value)


def test_missing_and_unencrypted_files(backend: SoftwareKeyBackend) -> None:
    with pytest.raises(TokenKeyNotFound, match=r"software CA key file .*ca-key\.pem does not exist; "
                                               r"check ca\.key\.path"):
        backend.load_private_key()
    plain = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    backend.path.write_bytes(plain)
    with pytest.raises(TokenError, match="is not an encrypted PKCS#8 PEM key"):
        backend.load_private_key()


def test_empty_password_is_refused(tmp_path: Path) -> None:
    empty = SoftwareKeyBackend(path=tmp_path / "k.pem", password=secret(tmp_path, ""))
    with pytest.raises(TokenPinError, match="the software key password is empty"):
        empty.generate_private_key(KeySpec.parse("ec-p256"))
    assert not (tmp_path / "k.pem").exists()


def test_key_must_match_configured_algorithm(backend: SoftwareKeyBackend) -> None:
    backend.generate_private_key(KeySpec.parse("ec-p256"))
    strict = SoftwareKeyBackend(path=backend.path, password=backend.password, spec=KeySpec.parse("ec-p384"))
    with pytest.raises(ConfigError, match=r"^ca\.key\.algorithm: says ec-p384, but .* holds ec-p256$"):
        strict.load_private_key()
    other = SoftwareKeyBackend(path=backend.path.with_name("other.pem"), password=backend.password,
                               spec=KeySpec.parse("ec-p384"))
    with pytest.raises(ConfigError, match=r"says ec-p384; refusing to generate a rsa-2048 key"):
        other.generate_private_key(KeySpec.parse("rsa-2048"))
    assert not other.key_exists()


# --- KeySpec ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"])
def test_key_spec_round_trip(text: str) -> None:
    spec = KeySpec.parse(text)
    assert str(spec) == spec.name == text
    assert KeySpec.parse(spec) is spec


def test_key_spec_fields_and_refusals() -> None:
    assert KeySpec.parse("rsa-3072") == KeySpec("rsa", rsa_bits=3072)
    assert KeySpec.parse("ec-p384") == KeySpec("ec", curve="P-384")
    assert isinstance(KeySpec.parse("ec-p256").ec_curve(), ec.SECP256R1)
    with pytest.raises(ValueError, match="at least 2048 bits, not 1024"):
        KeySpec.parse("rsa-1024")
    with pytest.raises(ValueError, match="must be one of 2048, 3072, 4096, not 8192"):
        KeySpec("rsa", rsa_bits=8192)
    with pytest.raises(ValueError, match="unknown key algorithm 'ed25519'"):
        KeySpec.parse("ed25519")
    with pytest.raises(ValueError, match="P-256 or P-384"):
        KeySpec("ec", curve="P-521")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="secp256k1 is not supported"):
        KeySpec.of(ec.generate_private_key(ec.SECP256K1()))


# --- the ca.key section -----------------------------------------------------------------------------

def test_parse_pkcs11_config(tmp_path: Path) -> None:
    cfg = parse_key_config(Reader({
        "backend": "pkcs11", "algorithm": "rsa-3072", "module": "/usr/lib/softhsm/libsofthsm2.so",
        "token_label": "openxpki-ca", "key_label": "ca-signing", "key_id": "01",
        "pin_file": "ca-token.pin",
    }, "ca.key", tmp_path))
    assert isinstance(cfg, Pkcs11KeyConfig)
    assert (cfg.backend, cfg.algorithm, cfg.origin) == ("pkcs11", "rsa-3072", "ca.key")
    assert cfg.spec == KeySpec("rsa", rsa_bits=3072)
    assert cfg.key_id == b"\x01" and cfg.token_label == "openxpki-ca"
    assert cfg.pin.file == tmp_path / "ca-token.pin"
    backend = open_key_backend(cfg)
    assert backend.describe() == ("PKCS#11 key 'ca-signing' (id 01) on token 'openxpki-ca' via "
                                  "/usr/lib/softhsm/libsofthsm2.so")
    backend.close()  # nothing was opened


def test_parse_software_config(tmp_path: Path) -> None:
    cfg = parse_key_config(Reader({"backend": "software", "algorithm": "ec-p256", "path": "ca-key.pem",
                                   "password_env": "OPENXPKI_CA_KEY_PASSWORD"}, "ca.key", tmp_path))
    assert isinstance(cfg, SoftwareKeyConfig)
    assert cfg.path == tmp_path / "ca-key.pem" and cfg.password.env == "OPENXPKI_CA_KEY_PASSWORD"
    assert "development only" in open_key_backend(cfg).describe()


@pytest.mark.parametrize(("changes", "message"), [
    ({"algorithm": "rsa-1024"}, r"^ca\.key\.algorithm: expected one of rsa-2048, .*, got 'rsa-1024'$"),
    ({"key_id": 1}, r'^ca\.key\.key_id: expected a quoted hex string .* e\.g\. "01", got 1$'),
    ({"key_id": "0g"}, r"^ca\.key\.key_id: expected a quoted hex string"),
    ({"pin": "1234"}, r"^ca\.key\.pin: secrets are never written into the config"),
    ({"path": "ca-key.pem"}, r"^ca\.key\.path: unknown key$"),
    ({"token_label": "x" * 33}, r"^ca\.key\.token_label: expected a token label of at most 32 bytes"),
    ({"backend": "pkcs12"}, r"^ca\.key\.backend: expected one of pkcs11, software"),
])
def test_config_errors_name_the_key(changes: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {"backend": "pkcs11", "algorithm": "rsa-2048", "module": "/m.so",
                            "token_label": "t", "key_label": "k", "pin_env": "PIN"}
    data.update(changes)
    with pytest.raises(ConfigError, match=message):
        parse_key_config(Reader(data, "ca.key"))


def test_shipped_example_config_parses() -> None:
    import yaml  # type: ignore[import-untyped]

    path = Path(__file__).resolve().parents[2] / "contrib" / "config" / "config.yaml"
    ca = yaml.safe_load(path.read_text(encoding="utf-8"))["ca"]
    cfg = parse_key_config(Reader(ca["key"], "ca.key", path.parent))
    assert isinstance(cfg, Pkcs11KeyConfig) and cfg.spec == KeySpec.parse("rsa-2048")
