"""The project's own software PIV card (NIST SP 800-73-4 + YubiKey extensions), for tests.

It answers what the agent (yubikit) and OpenSC's PIV driver send: SELECT,
GET/PUT DATA, VERIFY, CHANGE REFERENCE DATA, RESET RETRY COUNTER, GENERAL
AUTHENTICATE (management key mutual/external auth with 3DES or AES-192,
raw RSA, ECDSA, ECDH), GENERATE ASYMMETRIC KEY PAIR (RSA-2048, P-256,
P-384), Yubico's key import (RSA-2048, P-256, P-384; ``--no-ec-import``
for a card that takes RSA only), version, serial, attestation, set
management key and metadata.  Command chaining, extended APDUs and 61xx response chaining work
both ways.  State lives in memory: every start is a new card.  Not
emulated: touch, secure messaging, RSA-3072/4096, 25519 keys,
PIN-retry setting, biometrics.

    python tests/support/virtual_piv.py --attestation-root-key K --attestation-root-cert C
                                        [--firmware 5.4.3] [--port 35963]

Factory state: PIN 123456, PUK 12345678, management key 0102…08 ×3 (3DES
below firmware 5.7, AES-192 from 5.7, as on a YubiKey).
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

PIV_AID = bytes.fromhex("a000000308")
DEFAULT_MANAGEMENT_KEY = bytes.fromhex("010203040506070801020304050607080102030405060708")
DEFAULT_PIN, DEFAULT_PUK = b"123456", b"12345678"

OK, MORE = 0x9000, 0x6100
SW_WRONG_LENGTH, SW_SECURITY, SW_BLOCKED, SW_WRONG_DATA = 0x6700, 0x6982, 0x6983, 0x6A80
SW_NOT_FOUND, SW_P1P2, SW_REF_NOT_FOUND, SW_INS, SW_CLA = 0x6A82, 0x6A86, 0x6A88, 0x6D00, 0x6E00
SW_CONDITIONS = 0x6985

# Algorithm references (SP 800-78-4 and Yubico's).
TDES, AES128, AES192, AES256 = 0x03, 0x08, 0x0A, 0x0C
RSA2048, ECCP256, ECCP384 = 0x07, 0x11, 0x14
_CIPHER_KEY_LEN = {TDES: 24, AES128: 16, AES192: 24, AES256: 32}
_CURVES: dict[int, ec.EllipticCurve] = {ECCP256: ec.SECP256R1(), ECCP384: ec.SECP384R1()}
_PIN_NEVER, _PIN_ONCE, _PIN_ALWAYS = 1, 2, 3
_TOUCH_NEVER = 1
_ORIGIN_GENERATED, _ORIGIN_IMPORTED = 1, 2
# Key slot -> certificate data object (SP 800-73-4 Part 1, Table 3; 9f/f9 Yubico's).
CERT_OBJECTS = {0x9A: 0x5FC105, 0x9C: 0x5FC10A, 0x9D: 0x5FC10B, 0x9E: 0x5FC101, 0xF9: 0x5FFF01,
                **{0x82 + n: 0x5FC10D + n for n in range(20)}}
_DEFAULT_PIN_POLICY = {0x9C: _PIN_ALWAYS, 0x9E: _PIN_NEVER}
DISCOVERY = bytes.fromhex("7e124f0ba0000003080000100001005f2f024000")
YUBICO_OID = "1.3.6.1.4.1.41482.3."


# --- BER-TLV, just enough ---------------------------------------------------------------------


def tlv(tag: int, value: bytes = b"") -> bytes:
    tag_bytes = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    n = len(value)
    if n < 0x80:
        length = bytes((n,))
    elif n <= 0xFF:
        length = bytes((0x81, n))
    else:
        length = bytes((0x82,)) + n.to_bytes(2, "big")
    return tag_bytes + length + value


def parse_tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Top-level TLVs of ``data`` as (tag, value); multi-byte tags as one integer."""
    out, at = [], 0
    while at < len(data):
        tag = data[at]
        at += 1
        if tag & 0x1F == 0x1F:
            while True:
                tag = (tag << 8) | data[at]
                at += 1
                if not data[at - 1] & 0x80:
                    break
        length = data[at]
        at += 1
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[at:at + size], "big")
            at += size
        out.append((tag, data[at:at + length]))
        at += length
    return out


def first(data: bytes, tag: int) -> bytes | None:
    return next((value for t, value in parse_tlvs(data) if t == tag), None)


class CardError(Exception):
    """Ends a command with this status word."""

    def __init__(self, sw: int) -> None:
        super().__init__(f"{sw:04x}")
        self.sw = sw


@dataclass
class Apdu:
    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes
    le: int  # 0: as much as there is
    extended: bool


def parse_apdu(raw: bytes) -> Apdu:
    if len(raw) < 4:
        raise CardError(SW_WRONG_LENGTH)
    cla, ins, p1, p2 = raw[:4]
    body = raw[4:]
    if not body:
        return Apdu(cla, ins, p1, p2, b"", 256, False)
    if len(body) == 1:
        return Apdu(cla, ins, p1, p2, b"", body[0] or 256, False)
    if body[0] == 0 and len(body) >= 3:  # extended length
        if len(body) == 3:
            return Apdu(cla, ins, p1, p2, b"", int.from_bytes(body[1:3], "big") or 65536, True)
        lc = int.from_bytes(body[1:3], "big")
        data, rest = body[3:3 + lc], body[3 + lc:]
        return Apdu(cla, ins, p1, p2, data, int.from_bytes(rest, "big") or 65536 if rest else 0, True)
    lc = body[0]
    data, rest = body[1:1 + lc], body[1 + lc:]
    if len(data) != lc:
        raise CardError(SW_WRONG_LENGTH)
    return Apdu(cla, ins, p1, p2, data, (rest[0] or 256) if rest else 0, False)


# --- the card's state --------------------------------------------------------------------------


@dataclass
class KeySlot:
    algorithm: int
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    pin_policy: int
    generated: bool = True


@dataclass
class Counter:
    """A PIN or PUK with its retry counter."""

    value: bytes
    default: bytes
    tries: int = 3
    total: int = 3

    def check(self, given: bytes) -> None:
        if self.tries == 0:
            raise CardError(SW_BLOCKED)
        if not secrets.compare_digest(given.rstrip(b"\xff"), self.value):
            self.tries -= 1
            raise CardError(0x63C0 | self.tries if self.tries else SW_BLOCKED)
        self.tries = self.total


@dataclass
class PivState:
    firmware: tuple[int, int, int]
    serial: int
    management_algorithm: int
    management_key: bytes = DEFAULT_MANAGEMENT_KEY
    pin: Counter = field(default_factory=lambda: Counter(DEFAULT_PIN, DEFAULT_PIN))
    puk: Counter = field(default_factory=lambda: Counter(DEFAULT_PUK, DEFAULT_PUK))
    keys: dict[int, KeySlot] = field(default_factory=dict)
    objects: dict[int, bytes] = field(default_factory=dict)


class VirtualPivCard:
    """A PIV card as :class:`vpcd.VirtualCard`."""

    def __init__(self, state: PivState, attestation: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
                 *, ec_import: bool = True) -> None:
        self.state = state
        self.ec_import = ec_import  # False: a card that imports RSA keys only (6a80 for EC)
        self.attestation_key, self.attestation_cert = attestation
        self.objects = state.objects
        self.objects[CERT_OBJECTS[0xF9]] = (tlv(0x70, self.attestation_cert.public_bytes(serialization.Encoding.DER))
                                            + tlv(0x71, b"\x00") + tlv(0xFE))
        self.power_cycle()

    # vpcd.VirtualCard
    def atr(self) -> bytes:
        history = b"\x80\x73oxpy-PIV"  # category 80, then a name
        body = bytes((0x80 | len(history), 0x80, 0x01)) + history  # T0, TD1 (TD2 follows), TD2: T=1
        tck = 0
        for byte in body:
            tck ^= byte
        return b"\x3b" + body + bytes((tck,))

    def power_cycle(self) -> None:
        self.selected = False
        self.pin_verified = False
        self.pin_fresh = False  # for PIN policy "always": one use per VERIFY
        self.admin = False
        self.challenge: tuple[str, bytes] | None = None
        self.chain = b""
        self.pending = b""

    def transmit(self, raw: bytes) -> bytes:
        try:
            apdu = parse_apdu(raw)
            if apdu.ins == 0xC0:  # GET RESPONSE
                return self._respond(self.pending, apdu)
            self.pending = b""
            if apdu.cla & 0x10:  # command chaining: more data follows
                self.chain += apdu.data
                return OK.to_bytes(2, "big")
            if self.chain:
                apdu.data, self.chain = self.chain + apdu.data, b""
            if apdu.cla & 0xEF not in (0x00,):
                raise CardError(SW_CLA)
            return self._respond(self._dispatch(apdu), apdu)
        except CardError as exc:
            self.chain = b""
            return exc.sw.to_bytes(2, "big")

    def _respond(self, data: bytes, apdu: Apdu) -> bytes:
        limit = 65536 if apdu.extended else 256
        if apdu.le and not apdu.extended:
            limit = apdu.le
        if len(data) <= limit:
            self.pending = b""
            return data + OK.to_bytes(2, "big")
        self.pending = data[limit:]
        return data[:limit] + bytes((0x61, min(len(self.pending), 0xFF) & 0xFF))

    def _dispatch(self, apdu: Apdu) -> bytes:
        if apdu.ins == 0xA4:
            return self._select(apdu)
        if not self.selected:
            raise CardError(SW_INS)
        handler = {
            0xCB: self._get_data, 0xDB: self._put_data, 0x20: self._verify,
            0x24: self._change_reference, 0x2C: self._reset_retry_counter,
            0x87: self._general_authenticate, 0x47: self._generate,
            0xFD: self._version, 0xF8: self._serial, 0xF9: self._attest,
            0xFF: self._set_management_key, 0xF7: self._metadata, 0xFE: self._import_key,
        }.get(apdu.ins)
        if handler is None:
            raise CardError(SW_INS)
        return handler(apdu)

    # --- SELECT, GET/PUT DATA -------------------------------------------------------------

    def _select(self, apdu: Apdu) -> bytes:
        if apdu.p1 != 0x04 or not apdu.data or not (PIV_AID + bytes.fromhex("000010000100")).startswith(apdu.data):
            self.selected = False
            raise CardError(SW_NOT_FOUND)
        self.selected = True
        return tlv(0x61, tlv(0x4F, bytes.fromhex("000010000100")) + tlv(0x79, tlv(0x4F, PIV_AID)))

    def _get_data(self, apdu: Apdu) -> bytes:
        tag = first(apdu.data, 0x5C)
        if apdu.p1 != 0x3F or apdu.p2 != 0xFF or tag is None:
            raise CardError(SW_P1P2)
        object_id = int.from_bytes(tag, "big")
        if object_id == 0x7E:
            return DISCOVERY
        if object_id not in self.objects:
            raise CardError(SW_NOT_FOUND)
        return tlv(0x53, self.objects[object_id])

    def _put_data(self, apdu: Apdu) -> bytes:
        self._need_admin()
        parts = dict(parse_tlvs(apdu.data))
        if 0x5C not in parts or 0x53 not in parts:
            raise CardError(SW_WRONG_DATA)
        object_id = int.from_bytes(parts[0x5C], "big")
        if parts[0x53]:
            self.objects[object_id] = parts[0x53]
        else:
            self.objects.pop(object_id, None)
        return b""

    # --- PIN and PUK ------------------------------------------------------------------------

    def _verify(self, apdu: Apdu) -> bytes:
        if apdu.p2 != 0x80:
            raise CardError(SW_REF_NOT_FOUND)
        if apdu.p1 == 0xFF:
            self.pin_verified = self.pin_fresh = False
            return b""
        if not apdu.data:
            if self.pin_verified:
                return b""
            raise CardError(0x63C0 | self.state.pin.tries if self.state.pin.tries else SW_BLOCKED)
        if len(apdu.data) != 8:
            raise CardError(SW_WRONG_DATA)
        try:
            self.state.pin.check(apdu.data)
        except CardError:
            self.pin_verified = self.pin_fresh = False
            raise
        self.pin_verified = self.pin_fresh = True
        return b""

    def _change_reference(self, apdu: Apdu) -> bytes:
        counter = {0x80: self.state.pin, 0x81: self.state.puk}.get(apdu.p2)
        if counter is None:
            raise CardError(SW_REF_NOT_FOUND)
        if len(apdu.data) != 16:
            raise CardError(SW_WRONG_DATA)
        counter.check(apdu.data[:8])
        counter.value = apdu.data[8:].rstrip(b"\xff")
        return b""

    def _reset_retry_counter(self, apdu: Apdu) -> bytes:
        if apdu.p2 != 0x80 or len(apdu.data) != 16:
            raise CardError(SW_WRONG_DATA)
        self.state.puk.check(apdu.data[:8])
        self.state.pin.value = apdu.data[8:].rstrip(b"\xff")
        self.state.pin.tries = self.state.pin.total
        return b""

    # --- GENERAL AUTHENTICATE -------------------------------------------------------------

    def _general_authenticate(self, apdu: Apdu) -> bytes:
        template = first(apdu.data, 0x7C)
        if template is None:
            raise CardError(SW_WRONG_DATA)
        parts = dict(parse_tlvs(template))
        if apdu.p2 == 0x9B:
            return self._management_auth(apdu.p1, parts)
        slot = self.state.keys.get(apdu.p2)
        if slot is None or slot.algorithm != apdu.p1:
            raise CardError(SW_REF_NOT_FOUND if slot is None else SW_WRONG_DATA)
        self._need_pin(slot, apdu.p2)
        key = slot.key
        if parts.get(0x81):  # challenge: sign (RSA: raw exponentiation of a padded block)
            message = parts[0x81]
            if isinstance(key, rsa.RSAPrivateKey):
                result = _raw_rsa(key, message)
            else:
                result = key.sign(message, ec.ECDSA(Prehashed(_prehash(len(message)))))
        elif parts.get(0x85) and isinstance(key, ec.EllipticCurvePrivateKey):  # ECDH
            peer = ec.EllipticCurvePublicKey.from_encoded_point(key.curve, parts[0x85])
            result = key.exchange(ec.ECDH(), peer)
        else:
            raise CardError(SW_WRONG_DATA)
        return tlv(0x7C, tlv(0x82, result))

    def _management_auth(self, algorithm: int, parts: dict[int, bytes]) -> bytes:
        if algorithm != self.state.management_algorithm:
            raise CardError(SW_WRONG_DATA)
        block = 8 if algorithm == TDES else 16
        if 0x80 in parts and not parts[0x80]:  # mutual, step 1: our encrypted witness
            witness = os.urandom(block)
            self.challenge = ("witness", witness)
            return tlv(0x7C, tlv(0x80, self._cipher(witness, encrypt=True)))
        if 0x81 in parts and not parts[0x81]:  # external, step 1: a plain challenge
            challenge = os.urandom(block)
            self.challenge = ("challenge", challenge)
            return tlv(0x7C, tlv(0x81, challenge))
        expected, self.challenge = self.challenge, None
        if expected is None:
            raise CardError(SW_CONDITIONS)
        kind, value = expected
        if kind == "witness" and 0x80 in parts and 0x81 in parts:  # mutual, step 2
            if not secrets.compare_digest(parts[0x80], value):
                raise CardError(SW_SECURITY)
            self.admin = True
            return tlv(0x7C, tlv(0x82, self._cipher(parts[0x81], encrypt=True)))
        if kind == "challenge" and 0x82 in parts:  # external, step 2
            if not secrets.compare_digest(parts[0x82], self._cipher(value, encrypt=True)):
                raise CardError(SW_SECURITY)
            self.admin = True
            return b""
        raise CardError(SW_WRONG_DATA)

    def _cipher(self, data: bytes, *, encrypt: bool) -> bytes:
        key = self.state.management_key
        algorithm = (TripleDES(key) if self.state.management_algorithm == TDES else algorithms.AES(key))
        cipher = Cipher(algorithm, modes.ECB())
        ctx = cipher.encryptor() if encrypt else cipher.decryptor()
        return ctx.update(data) + ctx.finalize()

    def _need_admin(self) -> None:
        if not self.admin:
            raise CardError(SW_SECURITY)

    def _need_pin(self, slot: KeySlot, slot_id: int) -> None:
        if slot.pin_policy == _PIN_NEVER:
            return
        if not self.pin_verified or (slot.pin_policy == _PIN_ALWAYS and not self.pin_fresh):
            raise CardError(SW_SECURITY)
        self.pin_fresh = False

    # --- keys ---------------------------------------------------------------------------------

    def _generate(self, apdu: Apdu) -> bytes:
        self._need_admin()
        if apdu.p2 not in CERT_OBJECTS or apdu.p2 == 0xF9:
            raise CardError(SW_REF_NOT_FOUND)
        control = first(apdu.data, 0xAC)
        algorithm = first(control or b"", 0x80)
        if not algorithm or algorithm[0] not in (RSA2048, ECCP256, ECCP384):
            raise CardError(SW_WRONG_DATA)
        pin_policy = first(control or b"", 0xAA)
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        key = (rsa.generate_private_key(65537, 2048) if algorithm[0] == RSA2048
               else ec.generate_private_key(_CURVES[algorithm[0]]))
        policy = pin_policy[0] if pin_policy and pin_policy[0] else _DEFAULT_PIN_POLICY.get(apdu.p2, _PIN_ONCE)
        self.state.keys[apdu.p2] = KeySlot(algorithm[0], key, policy)
        return tlv(0x7F49, _public_key_tlvs(key))

    def _import_key(self, apdu: Apdu) -> bytes:
        """Yubico's IMPORT ASYMMETRIC KEY (INS FE): RSA-2048 from p, q, dp, dq, qinv; P-256/P-384 from d (tag 06)."""
        self._need_admin()
        if apdu.p2 not in CERT_OBJECTS or apdu.p2 == 0xF9:
            raise CardError(SW_REF_NOT_FOUND)
        if apdu.p1 not in (RSA2048, *_CURVES) or (apdu.p1 in _CURVES and not self.ec_import):
            raise CardError(SW_WRONG_DATA)
        parts = dict(parse_tlvs(apdu.data))
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        try:
            if apdu.p1 in _CURVES:
                key = ec.derive_private_key(int.from_bytes(parts[6], "big"), _CURVES[apdu.p1])
            else:
                p, q, dmp1, dmq1, iqmp = (int.from_bytes(parts[tag], "big") for tag in (1, 2, 3, 4, 5))
                d = pow(65537, -1, (p - 1) * (q - 1))
                key = rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp,
                                            rsa.RSAPublicNumbers(65537, p * q)).private_key()
        except (KeyError, ValueError):
            raise CardError(SW_WRONG_DATA) from None
        policy = parts.get(0xAA, b"\x00")[0] or _DEFAULT_PIN_POLICY.get(apdu.p2, _PIN_ONCE)
        self.state.keys[apdu.p2] = KeySlot(apdu.p1, key, policy, generated=False)
        return b""

    def _attest(self, apdu: Apdu) -> bytes:
        slot = self.state.keys.get(apdu.p1)
        if slot is None or not slot.generated:
            raise CardError(SW_WRONG_DATA)
        now = datetime.datetime.now(datetime.timezone.utc)
        version = bytes(self.state.firmware)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                            f"YubiKey PIV Attestation {apdu.p1:02x}")]))
                .issuer_name(self.attestation_cert.subject)
                .public_key(slot.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(YUBICO_OID + "3"), version),
                               critical=False)
                .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(YUBICO_OID + "7"),
                                                          _der_integer(self.state.serial)), critical=False)
                .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(YUBICO_OID + "8"),
                                                          bytes((slot.pin_policy, _TOUCH_NEVER))),
                               critical=False)
                .sign(self.attestation_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.DER)

    # --- Yubico's extensions ------------------------------------------------------------

    def _version(self, apdu: Apdu) -> bytes:
        return bytes(self.state.firmware)

    def _serial(self, apdu: Apdu) -> bytes:
        return self.state.serial.to_bytes(4, "big")

    def _set_management_key(self, apdu: Apdu) -> bytes:
        self._need_admin()
        if apdu.p1 != 0xFF or apdu.p2 not in (0xFF, 0xFE) or len(apdu.data) < 3:
            raise CardError(SW_P1P2)
        algorithm = apdu.data[0]
        key = first(apdu.data[1:], 0x9B)
        if algorithm not in _CIPHER_KEY_LEN or key is None or len(key) != _CIPHER_KEY_LEN[algorithm]:
            raise CardError(SW_WRONG_DATA)
        self.state.management_algorithm, self.state.management_key = algorithm, key
        return b""

    def _metadata(self, apdu: Apdu) -> bytes:
        state = self.state
        if apdu.p2 == 0x9B:
            return (tlv(0x01, bytes((state.management_algorithm,))) + tlv(0x02, bytes((0, _TOUCH_NEVER)))
                    + tlv(0x05, bytes((state.management_key == DEFAULT_MANAGEMENT_KEY,))))
        if apdu.p2 in (0x80, 0x81):
            counter = state.pin if apdu.p2 == 0x80 else state.puk
            return (tlv(0x05, bytes((counter.value == counter.default,)))
                    + tlv(0x06, bytes((counter.total, counter.tries))))
        slot = state.keys.get(apdu.p2)
        if slot is None:
            raise CardError(SW_REF_NOT_FOUND)
        return (tlv(0x01, bytes((slot.algorithm,))) + tlv(0x02, bytes((slot.pin_policy, _TOUCH_NEVER)))
                + tlv(0x03, bytes((_ORIGIN_GENERATED if slot.generated else _ORIGIN_IMPORTED,)))
                + tlv(0x04, _public_key_tlvs(slot.key)))


def _public_key_tlvs(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return tlv(0x81, numbers.n.to_bytes(256, "big")) + tlv(0x82, numbers.e.to_bytes(3, "big"))
    return tlv(0x86, public.public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint))


def _raw_rsa(key: rsa.RSAPrivateKey, block: bytes) -> bytes:
    """m^d mod n: PIV signs a block the host already padded (PKCS#1 v1.5 or PSS)."""
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    size = (n.bit_length() + 7) // 8
    if len(block) != size:
        raise CardError(SW_WRONG_DATA)
    m = int.from_bytes(block, "big")
    if m >= n:
        raise CardError(SW_WRONG_DATA)
    m1, m2 = pow(m, numbers.dmp1, numbers.p), pow(m, numbers.dmq1, numbers.q)
    h = (numbers.iqmp * (m1 - m2)) % numbers.p
    return (m2 + h * numbers.q).to_bytes(size, "big")


def _prehash(length: int) -> hashes.HashAlgorithm:
    # ECDSA over a hash of the key's size (the host truncates longer ones).
    return {20: hashes.SHA1(), 32: hashes.SHA256(), 48: hashes.SHA384(), 64: hashes.SHA512()}.get(
        length, hashes.SHA256())


def _der_integer(value: int) -> bytes:
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return bytes((0x02, len(body))) + body


# --- the attestation chain ---------------------------------------------------------------------


def make_attestation_root(folder: Path) -> tuple[Path, Path]:
    """A test stand-in for Yubico's PIV attestation root CA (key file, certificate file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test PIV Attestation Root CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_file, cert_file = folder / "attestation-root.key", folder / "attestation-root.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def _device_attestation(root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate,
                        serial: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Slot f9: this card's own attestation key, certified by the root (as at the factory)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test PIV Attestation {serial}")]))
            .issuer_name(root.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(root_key, hashes.SHA256()))
    return key, cert


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attestation-root-key", type=Path, required=True)
    parser.add_argument("--attestation-root-cert", type=Path, required=True)
    parser.add_argument("--firmware", default="5.4.3", help="version the card claims (5.7+: AES-192 key)")
    parser.add_argument("--serial", type=int, default=None)
    parser.add_argument("--no-ec-import", action="store_true", help="refuse EC key import (as some cards do)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=35963)
    args = parser.parse_args()
    # Run as a script: vpcd.py sits next to this file.
    from vpcd import connect, serve

    firmware = tuple(int(part) for part in args.firmware.split("."))
    assert len(firmware) == 3
    root_key = serialization.load_pem_private_key(args.attestation_root_key.read_bytes(), None)
    assert isinstance(root_key, ec.EllipticCurvePrivateKey)
    root = x509.load_pem_x509_certificate(args.attestation_root_cert.read_bytes())
    serial = args.serial if args.serial is not None else secrets.randbelow(90_000_000) + 10_000_000
    state = PivState(firmware=(firmware[0], firmware[1], firmware[2]), serial=serial,
                     management_algorithm=AES192 if firmware >= (5, 7, 0) else TDES)
    card = VirtualPivCard(state, _device_attestation(root_key, root, serial), ec_import=not args.no_ec_import)
    sock = connect(args.host, args.port)
    print(f"PIV card {serial} (firmware {args.firmware}) in vpcd {args.host}:{args.port}", flush=True)
    serve(card, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
