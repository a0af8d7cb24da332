"""The card lifecycle as data: the shipped file, a site's overrides, and clear errors for bad ones."""

from __future__ import annotations

from typing import Any

import pytest

from openxpki_py.configreader import Reader
from openxpki_py.console.lifecycle import HOLD, parse_cards_config
from openxpki_py.errors import ConfigError


def cards(data: Any) -> Any:
    return parse_cards_config(Reader(data, "cards"))


def test_shipped_lifecycle_and_site_overrides_field_by_field() -> None:
    shipped = cards({})
    life = shipped.lifecycle
    assert shipped.temporary_validity_days == 7
    assert (life.get("forgotten").effect, life.get("forgotten").reason) == ("hold", HOLD)  # type: ignore[union-attr]
    returned = life.get("returned")
    assert returned is not None and returned.effect == "release" and returned.temporary_card is not None
    assert (returned.temporary_card.target, returned.temporary_card.certificates.reason) == (
        "retired", "cessationOfOperation")
    assert life.get("lost").owner_may and not life.get("forgotten").owner_may  # type: ignore[union-attr]

    # A site forbids the self-report, lets users say "forgotten", and adds a state and a transition.
    site = cards({"temporary": {"validity_days": 3}, "lifecycle": {
        "states": {"in_repair": {"label": "At the vendor"}},
        "transitions": {"lost": {"owner_may": False}, "forgotten": {"owner_may": True},
                        "repair": {"from": ["active"], "to": "in_repair", "certificates": "hold",
                                   "roles": ["RA Operator"]}}}})
    lost = site.lifecycle.get("lost")
    assert site.temporary_validity_days == 3 and lost is not None and not lost.owner_may
    assert lost.reason == "keyCompromise" and lost.sources == life.get("lost").sources  # type: ignore[union-attr]
    assert site.lifecycle.get("forgotten").owner_may  # type: ignore[union-attr]
    assert site.lifecycle.get("repair").reason == HOLD and "in_repair" in site.lifecycle.states  # type: ignore[union-attr]


@pytest.mark.parametrize("site,message", [
    ({"transitions": {"lost": {"reason": "stolen"}}}, "cards.lifecycle.transitions.lost.reason: expected one of"),
    ({"transitions": {"lost": {"reason": "certificateHold"}}}, "cards.lifecycle.transitions.lost.reason"),
    ({"transitions": {"suspend": {"reason": "keyCompromise"}}},
     "cards.lifecycle.transitions.suspend.reason: expected no reason with 'certificates: hold'"),
    ({"transitions": {"lost": {"to": "gone"}}}, "cards.lifecycle.transitions.lost.to: expected one of active"),
    ({"transitions": {"lost": {"from": ["active", "mislaid"]}}}, "cards.lifecycle.transitions.lost.from"),
    ({"transitions": {"lost": {"roles": ["Help Desk"]}}}, "cards.lifecycle.transitions.lost.roles"),
    ({"transitions": {"lost": {"roles": ["User"]}}},
     "cards.lifecycle.transitions.lost.roles: expected a list of CA Operator, RA Operator (a User acts on their own"),
    ({"transitions": {"lost": {"owner_may": "yes"}}}, "cards.lifecycle.transitions.lost.owner_may: expected true"),
    ({"transitions": {"lost": {"ownr_may": True}}}, "cards.lifecycle.transitions.lost.ownr_may: unknown key"),
    ({"transitions": {"lost": {"certificates": "shred"}}}, "cards.lifecycle.transitions.lost.certificates"),
    ({"transitions": {"x": {"from": ["active"], "to": "lost", "certificates": "revoke", "roles": ["RA Operator"]}}},
     "cards.lifecycle.transitions.x.reason: required key is missing"),
    ({"transitions": {"returned": {"temporary_card": {"from": ["active"], "to": "retired", "certificates": "revoke",
                                                      "reason": "nope"}}}},
     "cards.lifecycle.transitions.returned.temporary_card.reason"),
    ({"transitions": {"forgotten": {"cards": ["loaner"]}}}, "cards.lifecycle.transitions.forgotten.cards"),
    ({"transitions": ["lost"]}, "cards.lifecycle.transitions: expected a mapping"),
    ({"transitions": {"forgotten": {"certificates": "keep"}}},
     "cards.lifecycle.transitions.forgotten.certificates: expected hold or revoke: 'forgotten' leads to"),
    ({"transitons": {}}, "cards.lifecycle.transitons: unknown key"),
    # Invariants a site cannot break: only an operator lifts a hold; never two working cards.
    ({"transitions": {"resume": {"owner_may": True}}},
     "cards.lifecycle.transitions.resume.owner_may: expected false: 'resume' releases certificates from hold"),
    ({"transitions": {"returned": {"owner_may": True}}},
     "cards.lifecycle.transitions.returned.owner_may: expected false: 'returned' releases"),
    ({"transitions": {"resume": {"from": ["suspended", "forgotten"]}}},
     "cards.lifecycle.transitions.resume.temporary_card: expected a temporary_card effect that revokes ('resume' "
     "makes a card usable again after forgotten"),
    ({"transitions": {"returned": {"temporary_card": None}}},
     "cards.lifecycle.transitions.returned.temporary_card: expected a temporary_card effect that revokes"),
    ({"transitions": {"returned": {"temporary_card": {"from": ["active"], "to": "active", "certificates": "keep"}}}},
     "cards.lifecycle.transitions.returned.temporary_card.certificates: expected revoke"),
    ({"transitions": {"returned": {"temporary_card": {"from": ["active", "suspended"], "to": "active",
                                                      "certificates": "revoke", "reason": "superseded"}}}},
     "cards.lifecycle.transitions.returned.temporary_card.to: expected a state where the temporary card does not"),
    ({"transitions": {"returned": {"temporary_card": {"from": ["active"], "to": "retired", "certificates": "revoke",
                                                      "reason": "superseded"}}}},
     "cards.lifecycle.transitions.returned.temporary_card.from: expected a list with suspended"),
    ({"states": {"suspended": {"stand_in": True}}},
     "cards.lifecycle.transitions.resume.temporary_card: expected a temporary_card effect that revokes ('resume' "
     "makes a card usable again after suspended"),
])
def test_bad_site_lifecycle_names_the_key(site: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        cards({"lifecycle": site})


def test_an_owner_may_make_things_stricter() -> None:
    """Revoking or holding their own certificates harms nobody else: owner_may on terminate or suspend is accepted."""
    life = cards({"lifecycle": {"transitions": {"terminate": {"owner_may": True}, "suspend": {"owner_may": True}}}})
    assert life.lifecycle.get("terminate").owner_may and life.lifecycle.get("suspend").owner_may  # type: ignore[union-attr]


def test_bad_temporary_validity() -> None:
    with pytest.raises(ConfigError, match=r"^cards\.temporary\.validity_days: expected an integer between 1"):
        cards({"temporary": {"validity_days": 0}})
