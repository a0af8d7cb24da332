"""The PKCS#11 key backend against a real SoftHSM2 token."""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import NameOID
from openxpki_py_token.pkcs11.module import get_module
from support.softhsm import SoftHSMToken

from openxpki_py.configreader import Reader
from openxpki_py.crypto.keys import KeySpec, open_key_backend, parse_key_config
from openxpki_py.crypto.keys.pkcs11_backend import Pkcs11KeyBackend
from openxpki_py.errors import (
    ConfigError,
    TokenError,
    TokenKeyNotFound,
    TokenModuleError,
    TokenNotFound,
    TokenPinError,
)

pytestmark = pytest.mark.usefixtures("pkcs11_session_leak_check")

NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HSM Test CA")])


@pytest.fixture
def token(make_token: Callable[..., SoftHSMToken]) -> SoftHSMToken:
    return make_token("openxpki-ca")


def backend_for(token: SoftHSMToken, key_label: str = "ca-signing", **kwargs: Any) -> Pkcs11KeyBackend:
    if "pin" not in kwargs:
        kwargs["pin"] = token.pin_ref()
    return Pkcs11KeyBackend(module=token.module, token_label=token.label, key_label=key_label, **kwargs)


def self_signed(key: Any, algorithm: Any, rsa_padding: Any = None) -> x509.Certificate:
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    if rsa_padding is None:
        return builder.sign(key, algorithm)
    return builder.sign(key, algorithm, rsa_padding=rsa_padding)


def verify(public_key: Any, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm,
           rsa_padding: Any = None) -> None:
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(signature, data, rsa_padding or padding.PKCS1v15(), algorithm)
    else:
        public_key.verify(signature, data, ec.ECDSA(algorithm))


# --- generation -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["rsa-2048", pytest.param("rsa-3072", marks=pytest.mark.slow),
                                  "ec-p256", "ec-p384"])
def test_generated_key_never_leaves_the_token(token: SoftHSMToken, name: str) -> None:
    spec = KeySpec.parse(name)
    with backend_for(token, key_id=b"\x01", spec=spec) as backend:
        assert not backend.key_exists()
        key = backend.generate_private_key(spec)
        assert backend.key_exists()
        assert KeySpec.of(key) == spec
        assert backend.key_protection() == {
            "token": True, "private": True, "sensitive": True, "always_sensitive": True,
            "extractable": False, "never_extractable": True, "local": True,
            "sign": True, "decrypt": False, "unwrap": False, "derive": False,
        }
        loaded = backend.load_private_key()
        assert loaded.public_key() == key.public_key()
        with pytest.raises(TokenError, match="lives in the HSM and never leaves it: private_bytes"):
            loaded.private_bytes(None, None, None)  # type: ignore[arg-type]
        with pytest.raises(TokenError, match="never leaves it: private_numbers"):
            loaded.private_numbers()
        with pytest.raises(TokenError, match="never leaves it: pickling"):
            pickle.dumps(loaded)


def test_generate_refuses_to_overwrite(token: SoftHSMToken) -> None:
    with backend_for(token) as backend:
        backend.generate_private_key(KeySpec.parse("ec-p256"))
        with pytest.raises(TokenError, match="already exists; an existing CA key is never overwritten"):
            backend.generate_private_key(KeySpec.parse("ec-p256"))


# --- signing ------------------------------------------------------------------------------------

SIGNING_CASES = [
    ("rsa-2048", hashes.SHA256(), padding.PKCS1v15()),
    ("rsa-2048", hashes.SHA256(), padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)),
    ("rsa-2048", hashes.SHA384(), padding.PSS(padding.MGF1(hashes.SHA384()), padding.PSS.MAX_LENGTH)),
    ("rsa-2048", hashes.SHA512(), padding.PSS(padding.MGF1(hashes.SHA512()), 20)),
    ("ec-p256", hashes.SHA256(), None),
    ("ec-p384", hashes.SHA384(), None),
]


@pytest.mark.parametrize(("name", "algorithm", "rsa_padding"), SIGNING_CASES,
                         ids=["pkcs1v15", "pss-digest", "pss-max", "pss-salt-20", "p256", "p384"])
def test_certificate_csr_crl_signed_in_token_verify(token: SoftHSMToken, name: str,
                                                   algorithm: Any, rsa_padding: Any) -> None:
    with backend_for(token) as backend:
        backend.generate_private_key(KeySpec.parse(name))
        key = backend.load_private_key()
        public = key.public_key()
        cert = self_signed(key, algorithm, rsa_padding)
        verify(public, cert.signature, cert.tbs_certificate_bytes, algorithm, rsa_padding)
        if rsa_padding is None or isinstance(rsa_padding, padding.PKCS1v15):
            cert.verify_directly_issued_by(cert)

        csr_builder = x509.CertificateSigningRequestBuilder().subject_name(NAME)
        csr = (csr_builder.sign(key, algorithm, rsa_padding=rsa_padding) if rsa_padding
               else csr_builder.sign(key, algorithm))
        assert csr.is_signature_valid

        now = datetime.now(timezone.utc)
        crl_builder = (x509.CertificateRevocationListBuilder().issuer_name(NAME)
                       .last_update(now).next_update(now + timedelta(hours=1)))
        crl = (crl_builder.sign(key, algorithm, rsa_padding=rsa_padding) if rsa_padding
               else crl_builder.sign(key, algorithm))
        assert crl.is_signature_valid(public)


@pytest.mark.parametrize("name", ["rsa-2048", "ec-p256"])
def test_prehashed_signatures_verify(token: SoftHSMToken, name: str) -> None:
    with backend_for(token) as backend:
        key = backend.generate_private_key(KeySpec.parse(name))
        digest = hashes.Hash(hashes.SHA256())
        digest.update(b"to be signed")
        prehashed = utils.Prehashed(hashes.SHA256())
        if isinstance(key, rsa.RSAPrivateKey):
            pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
            for pad in (padding.PKCS1v15(), pss):
                signature = key.sign(digest.copy().finalize(), pad, prehashed)
                key.public_key().verify(signature, b"to be signed", pad, hashes.SHA256())
        else:
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            signature = key.sign(digest.finalize(), ec.ECDSA(prehashed))
            key.public_key().verify(signature, b"to be signed", ec.ECDSA(hashes.SHA256()))


def test_rsa_sign_refuses_what_the_token_must_not_do(token: SoftHSMToken) -> None:
    with backend_for(token) as backend:
        key = backend.generate_private_key(KeySpec.parse("rsa-2048"))
        assert isinstance(key, rsa.RSAPrivateKey)
        with pytest.raises(ValueError, match="AUTO is only for verifying"):
            key.sign(b"x", padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO), hashes.SHA256())
        with pytest.raises(Exception, match="SHA-256, SHA-384 or SHA-512, not sha1"):
            key.sign(b"x", padding.PKCS1v15(), hashes.SHA1())
        with pytest.raises(TokenError, match="decrypt"):
            key.decrypt(b"x", padding.PKCS1v15())


@pytest.mark.parametrize("name", ["rsa-2048", "ec-p256"])
def test_two_threads_sign_at_once(token: SoftHSMToken, name: str) -> None:
    """Without CKF_OS_LOCKING_OK SoftHSM corrupts its heap here (GeneralError or a crash)."""
    with backend_for(token) as backend:
        backend.generate_private_key(KeySpec.parse(name))
        key = backend.load_private_key()
        results: list[list[tuple[bytes, bytes]]] = [[], []]
        errors: list[BaseException] = []
        deadline = time.monotonic() + 2.0

        def work(index: int) -> None:
            try:
                n = 0
                while time.monotonic() < deadline:
                    data = f"{index}:{n}".encode()
                    if isinstance(key, rsa.RSAPrivateKey):
                        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
                    else:
                        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
                    results[index].append((data, signature))
                    n += 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert all(len(r) > 50 for r in results), [len(r) for r in results]
        for data, signature in results[0] + results[1]:
            verify(key.public_key(), signature, data, hashes.SHA256())


def test_forked_child_signs(token: SoftHSMToken) -> None:
    """mod_wsgi daemons fork: the child initialises the module again and logs in itself."""
    with backend_for(token) as backend:
        key = backend.generate_private_key(KeySpec.parse("rsa-2048"))
        assert isinstance(key, rsa.RSAPrivateKey)
        key.sign(b"parent before", padding.PKCS1v15(), hashes.SHA256())
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            status = 1
            try:
                os.close(read_end)
                signature = key.sign(b"child", padding.PKCS1v15(), hashes.SHA256())
                key.public_key().verify(signature, b"child", padding.PKCS1v15(), hashes.SHA256())
                os.write(write_end, b"ok")
                status = 0
            except BaseException as exc:  # noqa: BLE001 - reported through the pipe
                os.write(write_end, repr(exc).encode()[:500])
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert message == b"ok" and os.waitstatus_to_exitcode(status) == 0, message
        signature = key.sign(b"parent after", padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, b"parent after", padding.PKCS1v15(), hashes.SHA256())


# --- sharing, losing and closing ------------------------------------------------------------------

def test_two_backends_on_one_token_share_the_login(token: SoftHSMToken) -> None:
    first = backend_for(token)
    key = first.generate_private_key(KeySpec.parse("ec-p256"))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    with backend_for(token) as second:
        other = second.load_private_key()
        first.close()  # must not log the second backend out
        assert isinstance(other, ec.EllipticCurvePrivateKey)
        other.public_key().verify(other.sign(b"x", ec.ECDSA(hashes.SHA256())), b"x",
                                  ec.ECDSA(hashes.SHA256()))
    with pytest.raises(TokenError, match="the key backend was closed; open it again"):
        key.sign(b"x", ec.ECDSA(hashes.SHA256()))


def test_lost_sessions_are_recovered(token: SoftHSMToken) -> None:
    """An HSM restart kills every session: the pool logs in again and retries once."""
    with backend_for(token) as backend:
        key = backend.generate_private_key(KeySpec.parse("ec-p256"))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        key.sign(b"before", ec.ECDSA(hashes.SHA256()))
        pool = backend._session_pool()
        # Pull the sessions out from under the pool, as a restarted HSM would.
        for pooled in [*pool._idle, pool._login]:
            assert pooled is not None
            pooled.session.close()
        signature = key.sign(b"after", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(signature, b"after", ec.ECDSA(hashes.SHA256()))


def test_threads_finding_sessions_dead_after_a_restart_keep_the_new_login(token: SoftHSMToken) -> None:
    """After an HSM restart each signing thread finds its session dead; all of them must sign on their retry.

    Each such thread reset the pool, whichever login was current: a thread
    late to notice logged out the login another thread had just made, and
    that thread's retry failed with UserNotLoggedIn (a TokenError for a
    certificate while the HSM was back).  Only the login the dead session
    belonged to is dropped now.
    """
    threads, rounds = 8, 200
    failures: list[str] = []
    with backend_for(token) as backend:
        key = backend.generate_private_key(KeySpec.parse("ec-p256"))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        pool = backend._session_pool()

        def sign_at_once(barrier: threading.Barrier) -> None:
            barrier.wait()
            try:
                signature = key.sign(b"after", ec.ECDSA(hashes.SHA256()))
                key.public_key().verify(signature, b"after", ec.ECDSA(hashes.SHA256()))
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                failures.append(f"{type(exc).__name__}: {exc}")

        def all_sign_at_once() -> None:
            barrier = threading.Barrier(threads)
            workers = [threading.Thread(target=sign_at_once, args=(barrier,)) for _ in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(timeout=60)

        all_sign_at_once()  # the pool now holds several idle sessions
        for _ in range(rounds):
            # The HSM restarts: every session the pool holds dies under it.
            for pooled in [*pool._idle, pool._login]:
                if pooled is not None:
                    pooled.session.close()
            all_sign_at_once()
    assert failures == []


@pytest.mark.parametrize(("timeout", "thread"), [(None, "pkcs11-call"), (0, "MainThread")])
def test_calls_into_the_token_run_on_a_helper_unless_the_bound_is_off(token: SoftHSMToken, timeout: float | None,
                                                                       thread: str) -> None:
    """ca.key.timeout: a bounded call is made by a helper thread (its caller can stop waiting); 0 turns that off."""
    with backend_for(token, call_seconds=timeout) as backend:
        key = backend.generate_private_key(KeySpec.parse("ec-p256"))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert backend._run(lambda _pooled: threading.current_thread().name) == thread
        key.public_key().verify(key.sign(b"m", ec.ECDSA(hashes.SHA256())), b"m", ec.ECDSA(hashes.SHA256()))


def test_a_new_session_without_the_login_logs_in_again(token: SoftHSMToken) -> None:
    """The HSM restarts: every session dies, and with the last one the login.

    A thread that found no idle session opened a new one.  It is alive but
    public, the pool still believed it was logged in, and the key looked
    "gone from the token" (TokenKeyNotFound) instead of a new login.  (A
    dead idle session held by another thread is what leaves it none.)
    """
    with backend_for(token) as backend:
        key = backend.generate_private_key(KeySpec.parse("ec-p256"))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        key.sign(b"before", ec.ECDSA(hashes.SHA256()))
        pool = backend._session_pool()
        for pooled in [*pool._idle, pool._login]:  # the restart
            assert pooled is not None
            pooled.session.close()
        held = pool._borrow()  # another thread holds the one idle (dead) session
        try:
            signature = key.sign(b"after", ec.ECDSA(hashes.SHA256()))
        finally:
            pool._give_back(held)
        key.public_key().verify(signature, b"after", ec.ECDSA(hashes.SHA256()))


def test_a_login_hanging_in_the_hsm_does_not_hang_every_signing_thread(token: SoftHSMToken) -> None:
    """The HSM hangs inside C_OpenSession while one thread logs in again (the pool's lock held).

    PKCS#11 has no timeout: every other signing thread waited for that lock
    for ever.  Now they give up after the pool's wait with an error naming
    the HSM.  (SoftHSM does not hang: the module's ``open_session`` is held
    here, where the real call would be.)
    """
    with backend_for(token) as backend:
        key = backend.generate_private_key(KeySpec.parse("ec-p256"))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        pool = backend._session_pool()
        pool.wait_seconds = 1.0
        module = pool.module
        real_open = module.open_session
        inside, hang_ends = threading.Event(), threading.Event()

        def hanging_open(*args: Any, **kwargs: Any) -> Any:
            inside.set()
            hang_ends.wait(30)
            return real_open(*args, **kwargs)

        pool._reset("test: the HSM restarted", pool._epoch)  # the next signature logs in again
        module.open_session = hanging_open  # type: ignore[method-assign]
        first_error: list[BaseException] = []
        first = threading.Thread(target=lambda: _sign_or_keep(key, first_error))
        try:
            first.start()
            assert inside.wait(10)
            started = time.monotonic()
            with pytest.raises(TokenError, match="is the HSM hanging"):
                key.sign(b"meanwhile", ec.ECDSA(hashes.SHA256()))
            assert time.monotonic() - started < 10
        finally:
            del module.open_session  # the class's own again
            hang_ends.set()
            first.join(timeout=30)
        assert first_error == []  # the login that hung goes on once the HSM answers


def _sign_or_keep(key: ec.EllipticCurvePrivateKey, errors: list[BaseException]) -> None:
    try:
        key.sign(b"first", ec.ECDSA(hashes.SHA256()))
    except BaseException as exc:  # noqa: BLE001 - asserted by the test
        errors.append(exc)


def test_token_removed_mid_use(token: SoftHSMToken) -> None:
    with backend_for(token) as backend:
        key = backend.generate_private_key(KeySpec.parse("ec-p256"))
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        token.delete()
        with pytest.raises(TokenError, match="private key is gone from the token"):
            key.sign(b"x", ec.ECDSA(hashes.SHA256()))


# --- errors an operator must be able to act on -----------------------------------------------------

def test_missing_module(token: SoftHSMToken, tmp_path: Path) -> None:
    missing = tmp_path / "libnothing.so"
    with Pkcs11KeyBackend(module=missing, token_label=token.label, key_label="k",
                          pin=token.pin_ref()) as backend:
        with pytest.raises(TokenModuleError,
                           match=rf"^PKCS#11 module {missing} does not exist \(check ca\.key\.module\)$"):
            backend.load_private_key()


def test_not_a_pkcs11_module(token: SoftHSMToken, tmp_path: Path) -> None:
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not a shared library")
    with Pkcs11KeyBackend(module=bogus, token_label=token.label, key_label="k",
                          pin=token.pin_ref()) as backend:
        with pytest.raises(TokenModuleError, match=rf"^{bogus} is not a usable PKCS#11 module"):
            backend.key_exists()
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6")
    if libc.exists():
        with Pkcs11KeyBackend(module=libc, token_label=token.label, key_label="k",
                              pin=token.pin_ref()) as backend:
            with pytest.raises(TokenModuleError, match="is not a usable PKCS#11 module"):
                backend.key_exists()


def test_wrong_token_label_lists_the_labels(token: SoftHSMToken) -> None:
    with Pkcs11KeyBackend(module=token.module, token_label="no-such-token", key_label="k",
                          pin=token.pin_ref()) as backend:
        with pytest.raises(TokenNotFound, match=r"^no token labelled 'no-such-token' in .*libsofthsm2\.so "
                                                r"\(tokens present: 'openxpki-ca'\)$"):
            backend.load_private_key()


def test_wrong_pin_is_refused_and_never_echoed(token: SoftHSMToken, monkeypatch: pytest.MonkeyPatch) -> None:
    with backend_for(token, pin=token.pin_ref("97531")) as backend:
        with pytest.raises(TokenPinError, match=r"token 'openxpki-ca' via .*: wrong PIN \(read from "
                                                r"ca\.key\.pin_file\)") as info:
            backend.load_private_key()
        assert "97531" not in str(info.value)
        # A refused PIN is not tried again (a real HSM locks after a few tries) ...
        calls: list[str] = []
        module_type = type(get_module(token.module))
        login = module_type.login

        def counting_login(self: Any, session: Any, pin: str) -> int:
            calls.append(pin)
            return login(self, session, pin)

        monkeypatch.setattr(module_type, "login", counting_login)
        with pytest.raises(TokenPinError, match="was refused before and is not tried again"):
            backend.load_private_key()
        assert calls == []
        # ... until it is corrected.
        token.write_pin(backend.pin.file)
        with pytest.raises(TokenKeyNotFound):
            backend.load_private_key()
        assert calls == ["1234"]


def test_locked_pin_is_named(token: SoftHSMToken, monkeypatch: pytest.MonkeyPatch) -> None:
    # SoftHSM never locks a PIN: make the module answer CKR_PIN_LOCKED.
    monkeypatch.setattr(type(get_module(token.module)), "login", lambda self, session, pin: 0x0A4)
    with backend_for(token) as backend:
        with pytest.raises(TokenPinError, match="the user PIN is locked; the security officer must reset it"):
            backend.key_exists()


def test_missing_key_label_lists_the_keys(token: SoftHSMToken) -> None:
    with backend_for(token) as backend:
        backend.generate_private_key(KeySpec.parse("ec-p256"))
    with backend_for(token, key_label="no-such-key") as backend:
        with pytest.raises(TokenKeyNotFound, match=r"^no private key 'no-such-key' on token 'openxpki-ca' "
                                                   r"\(private keys present: 'ca-signing'\); "
                                                   r"check ca\.key\.key_label$"):
            backend.load_private_key()
    with backend_for(token, key_id=b"\x07") as backend:
        with pytest.raises(TokenKeyNotFound, match=r"no private key 'ca-signing' \(id 07\)"):
            backend.load_private_key()


def test_key_of_another_algorithm_than_configured(token: SoftHSMToken) -> None:
    with backend_for(token) as backend:
        backend.generate_private_key(KeySpec.parse("ec-p256"))
    with backend_for(token, spec=KeySpec.parse("rsa-2048")) as backend:
        with pytest.raises(ConfigError, match=r"^ca\.key\.algorithm: says rsa-2048, but PKCS#11 key "
                                              r"'ca-signing' on token 'openxpki-ca' .* is ec-p256$"):
            backend.load_private_key()


def test_backend_from_config(token: SoftHSMToken) -> None:
    pin_file = token.write_pin()
    reader = Reader({"backend": "pkcs11", "algorithm": "ec-p384", "module": str(token.module),
                     "token_label": token.label, "key_label": "ca-signing", "key_id": "0a0b",
                     "pin_file": str(pin_file)}, "ca.key")
    with open_key_backend(parse_key_config(reader)) as backend:
        assert backend.describe() == (f"PKCS#11 key 'ca-signing' (id 0a0b) on token 'openxpki-ca' "
                                      f"via {token.module}")
        key = backend.generate_private_key(KeySpec.parse("ec-p384"))
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert "1234" not in repr(backend) + repr(key)
