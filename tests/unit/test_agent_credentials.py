"""The agent's admin-credential seam: which source applies, the server's answer checked, nothing shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openxpki_py_token.cli import describe_failure
from openxpki_py_token.credentials import CardCredentials, DerivedCredentials
from openxpki_py_token.errors import ProtocolError, TokenError, unknown_admin_credential
from openxpki_py_token.secret import SecretRef

KEY = "a1" * 24
PIV_ANSWER = {"card_type": "piv", "serial": "123", "credentials": {"management_key": KEY, "puk": "01234567"}}


def test_server_is_asked_only_without_local_options() -> None:
    assert CardCredentials().from_server("piv") and CardCredentials().from_server("pkcs11")
    keyed = CardCredentials(management_key=SecretRef("--management-key-env", env="K"))
    assert not keyed.from_server("piv") and keyed.from_server("pkcs11")
    assert not CardCredentials(rotate_to=Path("/tmp/x")).from_server("piv")
    so = CardCredentials(so_pin_given=True)
    assert so.from_server("piv") and not so.from_server("pkcs11")


def test_server_is_asked_once_per_run() -> None:
    calls: list[int] = []
    derived = DerivedCredentials.from_api(PIV_ANSWER, serial="123")

    def ask() -> DerivedCredentials:
        calls.append(1)
        return derived

    credentials = CardCredentials(server=ask)
    assert credentials.derived("piv") is derived and credentials.derived("piv") is derived
    assert calls == [1]
    assert CardCredentials(so_pin_given=True, server=ask).derived("pkcs11") is None  # local option wins
    assert CardCredentials().derived("piv") is None  # no server session yet


def test_answer_is_parsed_and_never_shown() -> None:
    derived = DerivedCredentials.from_api(PIV_ANSWER, serial="123")
    assert derived.management_key == bytes.fromhex(KEY) and derived.puk == "01234567"
    assert KEY not in repr(derived) and "01234567" not in str(derived)
    pgp = DerivedCredentials.from_api({"card_type": "openpgp", "serial": "9",
                                       "credentials": {"admin_pin": "87654321"}}, serial="9")
    assert pgp.admin_pin == "87654321" and pgp.management_key is None


@pytest.mark.parametrize("answer", [
    {**PIV_ANSWER, "serial": "other"},  # another card's
    {**PIV_ANSWER, "credentials": {"management_key": "zz" * 24}},
    {**PIV_ANSWER, "credentials": {"management_key": "a1" * 16}},  # not 24 bytes
    {**PIV_ANSWER, "credentials": {"management_key": KEY, "puk": "12ab"}},
    {**PIV_ANSWER, "credentials": {"admin_pin": 12345678}},
    {"serial": "123", "credentials": {}},
    {"card_type": "piv", "serial": "123", "credentials": "x"},
])
def test_answer_not_in_the_documented_shape_is_refused(answer: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        DerivedCredentials.from_api(answer, serial="123")


def test_unknown_admin_credential_is_shown_with_its_code() -> None:
    refusal = unknown_admin_credential("PIV card serial 1", "management key", "(with 'ykman piv reset')")
    line = describe_failure(refusal)
    assert line.endswith("[card.admin_credential_unknown]") and "an operator must reset the card" in line
    assert "[" not in describe_failure(TokenError("the card went away"))  # other card errors as before


# --- the new PIN of an unblock (pins.new_pin) -------------------------------------------------


def test_new_pin_is_asked_twice_and_checked_before_anything_is_spent(tmp_path: Path) -> None:
    from openxpki_py_token.errors import UsageError
    from openxpki_py_token.pins import new_pin

    typed = iter(["24681357", "24681357"])
    assert new_pin(None, lambda prompt: next(typed), card="card 1") == "24681357"
    differing = iter(["24681357", "24681358"])
    with pytest.raises(UsageError, match="differ"):
        new_pin(None, lambda prompt: next(differing), card="card 1")
    with pytest.raises(UsageError, match="no terminal"):
        new_pin(None, None, card="card 1")
    for bad in ("12345", "123456789", "1234\t567"):
        (tmp_path / "pin").write_text(bad + "\n")
        with pytest.raises(UsageError, match="6 to 8 characters"):
            new_pin(SecretRef("--new-pin-file", file=tmp_path / "pin"), None, card="card 1")
    (tmp_path / "pin").write_text("654321\n")
    assert new_pin(SecretRef("--new-pin-file", file=tmp_path / "pin"), None, card="card 1") == "654321"
