"""The OpenPGP card key import's own encodings: the v4 fingerprint and the DO lookup (openpgp_import)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from openxpki_py_token.openpgp_import import _find, _mpi, _tlv, v4_fingerprint


def test_v4_fingerprint_is_the_one_gnupg_computes(tmp_path: Path) -> None:
    """GnuPG's key ID of the same public-key packet is the fingerprint's last 8 bytes (RFC 4880 §12.2)."""
    gpg = shutil.which("gpg")
    if gpg is None:
        pytest.fail("gpg is not installed (Debian gnupg)")
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    created = 1_700_000_000
    numbers = public.public_numbers()
    body = b"\x04" + created.to_bytes(4, "big") + b"\x01" + _mpi(numbers.n) + _mpi(numbers.e)
    (tmp_path / "key.gpg").write_bytes(b"\x99" + len(body).to_bytes(2, "big") + body)  # old-format packet, tag 6
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    listing = subprocess.run([gpg, "--homedir", str(home), "--list-packets", str(tmp_path / "key.gpg")],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    key_id = re.search(r"keyid: ([0-9A-F]{16})", listing)
    assert key_id is not None, listing
    assert v4_fingerprint(public, created)[-8:].hex().upper() == key_id.group(1)
    assert "created 1700000000" in listing and "pkey[1]: [17 bits]" in listing  # e as a 17-bit MPI


def test_algorithm_attributes_are_found_inside_the_application_related_data() -> None:
    c2 = bytes.fromhex("010800002000")
    discretionary = _tlv(0x73, _tlv(0xC1, b"\x01\x08\x00\x00\x20\x00") + _tlv(0xC2, c2) + _tlv(0xC5, bytes(60)))
    data = _tlv(0x6E, _tlv(0x4F, bytes(16)) + _tlv(0x5F52, bytes(10)) + discretionary)
    assert _find(data, 0xC2) == c2
    assert _find(data, 0xC3) is None
    assert _tlv(0x5F48, bytes(300))[:5] == bytes.fromhex("5f4882012c")
