"""The card lifecycle as data: states and transitions from ``lifecycle.yaml``, overridable by the site.

The shipped file is read, the site's ``cards.lifecycle`` is laid over it
field by field (a transition the site names keeps every field it does not
give), and the result is checked once, at start: every error names the key
to fix (``cards.lifecycle.transitions.lost.reason``).  :mod:`.cards` applies
a transition; this module only says what the transitions are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import roles
from ..configreader import Reader
from ..errors import ConfigError

SHIPPED = Path(__file__).with_name("lifecycle.yaml")
HOLD = "certificateHold"
EFFECTS = ("hold", "release", "revoke", "keep")
KINDS = ("permanent", "temporary")
# RFC 5280 reasons a card's certificate may be revoked for (certificateHold is the `hold` effect).
REVOKE_REASONS = ("unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation",
                  "privilegeWithdrawn")
USABLE = "active"  # the state a card is registered in and may be personalized in (personalization/tokens.py)


@dataclass(frozen=True)
class CertificateEffect:
    """What a transition does to a card's certificates."""

    effect: str  # hold | release | revoke | keep
    reason: str | None = None  # certificateHold for hold; the revocation's reason for revoke


@dataclass(frozen=True)
class TemporaryCardEffect:
    """What a transition of the permanent card does to the temporary card standing in for it."""

    sources: frozenset[str]
    target: str
    certificates: CertificateEffect


@dataclass(frozen=True)
class Transition:
    name: str
    label: str
    sources: frozenset[str]
    target: str
    certificates: CertificateEffect
    roles: frozenset[str]
    owner_may: bool = False  # the card's owner (role User) may do it on their own card
    kinds: frozenset[str] = frozenset(KINDS)
    temporary_card: TemporaryCardEffect | None = None

    @property
    def effect(self) -> str:
        return self.certificates.effect

    @property
    def reason(self) -> str | None:
        return self.certificates.reason


@dataclass(frozen=True)
class Lifecycle:
    states: Mapping[str, str]  # name → label
    stand_in: frozenset[str]  # states in which a temporary card may stand in for the card
    transitions: Mapping[str, Transition]

    def get(self, name: str) -> Transition | None:
        return self.transitions.get(name)


@dataclass(frozen=True)
class CardsConfig:
    """``cards``: the lifecycle and the temporary card's validity."""

    lifecycle: Lifecycle = field(default_factory=lambda: shipped_lifecycle())
    temporary_validity_days: int = 7


def shipped_lifecycle() -> Lifecycle:
    return _parse(Reader(_read_shipped(), "lifecycle.yaml"))


def _read_shipped() -> dict[str, Any]:
    data = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def parse_cards_config(r: Reader) -> CardsConfig:
    temporary = r.section("temporary")
    days = temporary.int("validity_days", CardsConfig.temporary_validity_days, minimum=1, maximum=366)
    temporary.finish()
    site = r.section("lifecycle")
    merged = _overlay(_read_shipped(), site.data)
    lifecycle = _parse(Reader(merged, site.path, r.base_dir))
    r.finish()
    return CardsConfig(lifecycle=lifecycle, temporary_validity_days=days)


def _overlay(shipped: dict[str, Any], site: Mapping[str, Any]) -> dict[str, Any]:
    """The site's states and transitions over the shipped ones, field by field."""
    merged = dict(shipped)
    for section in ("states", "transitions"):
        given = site.get(section)
        if given is None:
            continue
        if not isinstance(given, Mapping):
            return {**merged, section: given}  # _parse names the bad key
        combined = dict(shipped[section])
        for name, fields in given.items():
            before = combined.get(name)
            combined[name] = ({**before, **fields} if isinstance(before, Mapping) and isinstance(fields, Mapping)
                              else fields)
        merged[section] = combined
    merged.update({k: v for k, v in site.items() if k not in ("states", "transitions")})  # unknown: refused below
    return merged


def _parse(r: Reader) -> Lifecycle:
    states: dict[str, str] = {}
    stand_in = set()
    for name, sr in r.sections("states").items():
        states[name] = sr.str("label", name)
        if sr.bool("stand_in", False):
            stand_in.add(name)
        sr.finish()
    if USABLE not in states:
        raise ConfigError(f"{r.key_path('states')}: the state '{USABLE}' (a usable card) must be there")
    readers = r.sections("transitions")
    transitions = {name: _parse_transition(tr, name, states, frozenset(stand_in)) for name, tr in readers.items()}
    for name, step in transitions.items():
        _check_leaving_stand_in(readers[name], step, frozenset(stand_in), transitions)
    r.finish()
    return Lifecycle(states, frozenset(stand_in), transitions)


def _check_leaving_stand_in(r: Reader, step: Transition, stand_in: frozenset[str],
                            transitions: Mapping[str, Transition]) -> None:
    """Never two working cards: a card that may work again after a stand-in state takes its temporary card's.

    A transition out of a stand-in state that makes the card usable, or lets
    its certificates work (release, keep), must revoke the temporary card and
    leave it unusable, from every state in which it works or could be made to
    work again (one a release leaves from).
    """
    leaves = step.sources & stand_in
    if not leaves or step.target in stand_in:
        return
    if step.target != USABLE and step.effect in ("hold", "revoke"):
        return  # the card stays out of use (lost, terminated): the temporary card may finish its days
    temporary = step.temporary_card
    why = (f"'{step.name}' makes a card usable again after {' or '.join(sorted(leaves))}, where a temporary card "
           "may stand in")
    if temporary is None:
        raise r.error("temporary_card", f"a temporary_card effect that revokes ({why})")
    tr = r.section("temporary_card")
    if temporary.certificates.effect != "revoke":
        raise tr.error("certificates", f"revoke ({why})")
    if temporary.target == USABLE or temporary.target in stand_in:
        raise tr.error("to", f"a state where the temporary card does not work ({why})")
    releasable = {s for t in transitions.values() if "temporary" in t.kinds and t.effect == "release"
                  for s in t.sources}
    missing = sorted(({USABLE} | releasable) - temporary.sources)
    if missing:
        raise tr.error("from", f"a list with {', '.join(missing)} ({why})")


def _state_list(r: Reader, key: str, states: Mapping[str, str]) -> frozenset[str]:
    names = r.str_list(key)
    unknown = [n for n in names if n not in states]
    if unknown or not names:
        raise r.error(key, "a list of the states " + ", ".join(states))
    return frozenset(names)


def _state(r: Reader, key: str, states: Mapping[str, str]) -> str:
    return r.choice(key, tuple(states))


def _certificate_effect(r: Reader) -> CertificateEffect:
    effect = r.choice("certificates", EFFECTS)
    if effect == "revoke":
        return CertificateEffect(effect, r.choice("reason", REVOKE_REASONS))
    if r.has("reason") and not (effect == "hold" and r.raw("reason") == HOLD):
        raise r.error("reason", f"no reason with 'certificates: {effect}'"
                      + (" (a hold is always certificateHold)" if effect == "hold" else ""))
    r.raw("reason", None)
    return CertificateEffect(effect, HOLD if effect == "hold" else None)


def _parse_transition(r: Reader, name: str, states: Mapping[str, str], stand_in: frozenset[str]) -> Transition:
    granted = r.str_list("roles")
    if any(role not in roles.OPERATORS for role in granted):  # a User: only their own card, by owner_may
        raise r.error("roles", "a list of " + ", ".join(sorted(roles.OPERATORS))
                      + " (a User acts on their own card only, through owner_may)")
    kinds = r.str_list("cards", list(KINDS))
    if not kinds or any(k not in KINDS for k in kinds):
        raise r.error("cards", "a list of " + ", ".join(KINDS))
    temporary: TemporaryCardEffect | None = None
    if r.has("temporary_card"):
        tr = r.section("temporary_card")
        temporary = TemporaryCardEffect(_state_list(tr, "from", states), _state(tr, "to", states),
                                        _certificate_effect(tr))
        tr.finish()
    else:
        r.raw("temporary_card", None)
    transition = Transition(
        name=name, label=r.str("label", name), sources=_state_list(r, "from", states), target=_state(r, "to", states),
        certificates=_certificate_effect(r), roles=frozenset(granted), owner_may=r.bool("owner_may", False),
        kinds=frozenset(kinds), temporary_card=temporary,
    )
    if transition.owner_may and "release" in (transition.effect, temporary.certificates.effect if temporary else ""):
        # a hold is security's (or the help desk's) to lift: the owner may only make things stricter
        raise r.error("owner_may", f"false: '{name}' releases certificates from hold; only an operator may")
    if transition.target in stand_in and transition.effect not in ("hold", "revoke"):
        # never two working cards: the one a temporary card stands in for must not work meanwhile
        raise r.error("certificates", f"hold or revoke: '{name}' leads to '{transition.target}', where a temporary "
                      "card may stand in")
    r.finish()
    return transition
