"""The card plan: which certificate types a reported card gets, with which key, and why not."""

from __future__ import annotations

from typing import Any

import pytest
from openxpki_py_token.capabilities import CardCapabilities, SlotCapability
from openxpki_py_token.card_profiles import GENERIC, OPENPGP, PIV

from openxpki_py.configreader import Reader
from openxpki_py.errors import ConfigError
from openxpki_py.personalization.planning import (
    KEY_UNSUPPORTED,
    NO_SLOT,
    SLOT_CANNOT_IMPORT,
    SLOT_CANNOT_SIGN,
    plan_for_card,
)
from openxpki_py.personalization.policy import PersonalizationPolicy, parse_personalization_config

TWO_TYPES = [
    {"type": "authentication", "profile": "smartcard_logon", "key": "rsa-2048", "key_id": "01", "usage": "sign"},
    {"type": "encryption", "profile": "encryption", "key": "rsa-2048", "key_id": "02", "usage": "decrypt"},
]


def _policy(**section: Any) -> PersonalizationPolicy:
    return parse_personalization_config(Reader({"certificates": TWO_TYPES, **section}, "personalization"))


def _report(profile: Any) -> CardCapabilities:
    """What the agent reports for one of its profiles, read back as the server reads it."""
    body = {"card_profile": profile.name, "key_slots": [s.as_api() for s in profile.capabilities()]}
    return CardCapabilities.from_report(body)


def _summary(plan: Any) -> list[tuple[str, str, str | None]]:
    return [(t.cert_type.name, t.key.name, t.skip_reason) for t in plan.types]


def test_openpgp_card_gets_the_logon_type_and_skips_encryption_up_front() -> None:
    plan = plan_for_card(_policy(), _report(OPENPGP))
    assert _summary(plan) == [("authentication", "rsa-2048", None), ("encryption", "rsa-2048", SLOT_CANNOT_SIGN)]
    auth, enc = plan.as_context()["types"]
    assert (auth["status"], auth["key_id"], auth["key"]) == ("planned", "03", {"algorithm": "rsa", "size": 2048})
    assert enc["status"] == "skipped" and enc["skip_reason"] == "slot_cannot_sign"
    assert "Encryption key (slot 02) cannot sign" in enc["reason"]


def _escrowed_policy() -> PersonalizationPolicy:
    return parse_personalization_config(Reader({"certificates": [
        TWO_TYPES[0], {**TWO_TYPES[1], "key_origin": "escrowed"}]}, "personalization"))


def test_openpgp_card_gets_an_escrowed_encryption_key_in_its_decryption_slot_without_history() -> None:
    """The slot cannot sign a CSR, but an escrowed key needs none: the card imports it (was: skipped)."""
    plan = plan_for_card(_escrowed_policy(), _report(OPENPGP))
    assert _summary(plan) == [("authentication", "rsa-2048", None), ("encryption", "rsa-2048", None)]
    enc = plan.as_context()["types"][1]
    assert (enc["status"], enc["key_id"], enc["key_origin"], enc["key_history"]) == ("planned", "02", "escrowed",
                                                                                      False)
    assert plan.as_context()["types"][0].get("key_history") is None  # only escrowed types carry it
    assert plan_for_card(_escrowed_policy(), _report(PIV)).as_context()["types"][1]["key_history"] is True


def test_an_escrowed_ec_key_is_not_planned_for_the_openpgp_card_which_imports_rsa_only() -> None:
    policy = parse_personalization_config(Reader({"certificates": [
        TWO_TYPES[0], {**TWO_TYPES[1], "key_origin": "escrowed", "key": "ec-p256"}]}, "personalization"))
    plan = plan_for_card(policy, _report(OPENPGP))
    assert _summary(plan)[1] == ("encryption", "ec-p256", KEY_UNSUPPORTED)
    assert "cannot take an imported ec-p256 key (it takes rsa-2048, rsa-3072, rsa-4096)" in plan.types[1].reason
    assert _summary(plan_for_card(policy, _report(PIV)))[1] == ("encryption", "ec-p256", None)


def test_escrowed_type_on_a_slot_that_cannot_import_is_skipped_with_its_reason() -> None:
    report = {"card_profile": "openpgp", "key_slots": [
        {**s.as_api(), "can_import": False} for s in OPENPGP.capabilities()]}
    plan = plan_for_card(_escrowed_policy(), CardCapabilities.from_report(report))
    assert _summary(plan)[1] == ("encryption", "rsa-2048", SLOT_CANNOT_IMPORT)
    assert "Encryption key (slot 02) cannot take a key made on the server" in plan.types[1].reason
    # An older agent does not say: a slot that cannot sign is not offered an escrowed key either (as before).
    older = {"card_profile": "openpgp", "key_slots": [
        {k: v for k, v in s.as_api().items() if k not in ("can_import", "key_history")}
        for s in OPENPGP.capabilities()]}
    assert _summary(plan_for_card(_escrowed_policy(), CardCapabilities.from_report(older)))[1][2] == \
        SLOT_CANNOT_IMPORT


def test_piv_card_gets_both_with_the_keys_its_card_type_policy_chooses() -> None:
    policy = _policy(card_types={"piv": {"key": {"encryption": "ec-p256"}},
                                 "openpgp": {"key": {"authentication": "rsa-3072"}}})
    plan = plan_for_card(policy, _report(PIV))
    assert plan.policy == "piv"
    assert _summary(plan) == [("authentication", "rsa-2048", None), ("encryption", "ec-p256", None)]
    assert [t["key_id"] for t in plan.as_context()["types"]] == ["9a", "9d"]
    assert plan.as_context()["types"][1]["key"] == {"algorithm": "ec", "curve": "P-256"}
    assert _summary(plan_for_card(policy, _report(OPENPGP)))[0] == ("authentication", "rsa-3072", None)


def test_a_key_the_slot_cannot_make_is_skipped_with_its_reason() -> None:
    plan = plan_for_card(_policy(card_types={"piv": {"key": {"authentication": "rsa-4096"}}}), _report(PIV))
    assert _summary(plan)[0] == ("authentication", "rsa-4096", KEY_UNSUPPORTED)
    assert "cannot make rsa-4096 keys" in plan.types[0].reason


def test_card_type_policy_narrows_the_types_and_default_covers_unknown_cards() -> None:
    policy = _policy(card_types={"openpgp": {"types": ["authentication"]},
                                 "default": {"types": ["encryption"], "key": {"encryption": "ec-p384"}}})
    assert _summary(plan_for_card(policy, _report(OPENPGP))) == [("authentication", "rsa-2048", None)]
    unknown = CardCapabilities.from_report({"card_profile": "acme-token"})
    plan = plan_for_card(policy, unknown)
    assert plan.policy == "default" and _summary(plan) == [("encryption", "ec-p384", None)]


def test_a_generic_token_takes_every_type_under_the_configured_ids() -> None:
    plan = plan_for_card(_policy(), _report(GENERIC))
    assert _summary(plan) == [("authentication", "rsa-2048", None), ("encryption", "rsa-2048", None)]
    assert [t["key_id"] for t in plan.as_context()["types"]] == ["01", "02"]


def test_a_card_without_a_slot_for_a_type_skips_it() -> None:
    card = CardCapabilities("oddcard", (SlotCapability("01", "Only key", "sign", cert_types=("authentication",)),))
    assert _summary(plan_for_card(_policy(), card)) == [("authentication", "rsa-2048", None),
                                                         ("encryption", "rsa-2048", NO_SLOT)]


def test_an_older_report_reads_as_before() -> None:
    """Before the capability fields: no profile is generic; slots with only key_id/usage/can_sign still plan."""
    assert CardCapabilities.from_report({"serial": "1"}) == CardCapabilities("generic", ())
    assert CardCapabilities.from_report({"card_profile": "generic-pkcs11"}).profile == "generic"
    old = CardCapabilities.from_report({"card_profile": "openpgp", "key_slots": [
        {"key_id": "01", "label": "Signature key", "usage": "sign", "can_sign": True},
        {"key_id": "02", "label": "Encryption key", "usage": "decrypt", "can_sign": False},
        {"key_id": "03", "label": "Authentication key", "usage": "sign", "can_sign": True}]})
    assert _summary(plan_for_card(_policy(), old)) == [("authentication", "rsa-2048", None),
                                                        ("encryption", "rsa-2048", SLOT_CANNOT_SIGN)]


@pytest.mark.parametrize("report, problem", [
    ({"card_profile": "piv card"}, "card_profile"),
    ({"key_slots": {"01": {}}}, "key_slots must be a list"),
    ({"key_slots": [{"key_id": "zz"}]}, "key_slots[0].key_id"),
    ({"key_slots": [{"key_id": "01", "usage": "wrap"}]}, "usage"),
    ({"key_slots": [{"key_id": "01", "algorithms": ["dsa-1024"]}]}, "unknown key spec"),
    ({"key_slots": [{"key_id": "01", "can_sign": "yes"}]}, "can_sign"),
    ({"key_slots": [{"key_id": "01", "key_generation": "root"}]}, "key_generation"),
    ({"key_slots": [{"key_id": "01"}, {"key_id": "01"}]}, "each key_id once"),
])
def test_a_malformed_report_says_what_is_wrong(report: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        CardCapabilities.from_report(report)


@pytest.mark.parametrize("card_types, key", [
    ({"piv": {"types": ["signature"]}}, "personalization.card_types.piv.types"),
    ({"piv": {"key": {"authentication": "rsa-1024"}}}, "personalization.card_types.piv.key.authentication"),
    ({"piv": {"key": {"logon": "rsa-2048"}}}, "personalization.card_types.piv.key"),
    ({"PIV card": {}}, "personalization.card_types.PIV card"),
    ({"piv": {"typo": []}}, "personalization.card_types.piv.typo"),
])
def test_card_type_policy_errors_name_the_key(card_types: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _policy(card_types=card_types)
