"""The PIV route's pure parts: management key credentials, CHUID and CCC."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from openxpki_py_token.credentials import FACTORY_MANAGEMENT_KEY, CardCredentials
from openxpki_py_token.errors import UsageError
from openxpki_py_token.piv_card import new_ccc, new_chuid
from openxpki_py_token.secret import SecretRef


def test_management_key_defaults_to_the_factory_key_and_reads_hex(tmp_path: Path) -> None:
    assert CardCredentials().current_management_key() == FACTORY_MANAGEMENT_KEY
    source = tmp_path / "mgmt.hex"
    source.write_text("aa" * 24 + "\n")
    assert CardCredentials(SecretRef("--management-key-file", file=source)).current_management_key() == b"\xaa" * 24
    source.write_text("not hex")
    with pytest.raises(UsageError, match="hex"):
        CardCredentials(SecretRef("--management-key-file", file=source)).current_management_key()


def test_escrow_never_overwrites_and_is_private(tmp_path: Path) -> None:
    target = tmp_path / "new-key.hex"
    credentials = CardCredentials(rotate_to=target)
    credentials.check_rotation_target()
    credentials.escrow(b"\x01" * 24)
    assert target.read_text() == "01" * 24 + "\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(UsageError, match="exists"):
        credentials.check_rotation_target()


def test_every_chuid_and_ccc_is_new() -> None:
    first, second = new_chuid(), new_chuid()
    assert first != second
    assert first.startswith(b"\x30\x19") and b"\x34\x10" in first and first.endswith(b"\xfe\x00")
    assert new_ccc() != new_ccc()
