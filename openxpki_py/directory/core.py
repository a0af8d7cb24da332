"""User lookup and group membership, written once on top of one search primitive.

A backend (LDAP server, LDIF file) only has to implement :meth:`_search`;
everything a caller sees — which filter is sent, how several matches or a
missing attribute are reported, how membership is decided — lives here, so
both backends answer every question the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal

from .base import (
    DirectoryAmbiguous,
    DirectoryAttributeMissing,
    DirectoryGroupNotFound,
    DirectoryUser,
    DirectoryUserNotFound,
    describe_login,
)
from .config import DirectoryConfig
from .dn import NormalDN, first_rdn_value, is_dn, is_within, normalize_dn
from .filters import escape_value, render_filter

Scope = Literal["base", "subtree"]
# One search result: the DN and its values by lower-case attribute name.
RawEntry = tuple[str, Mapping[str, Sequence[str]]]


class SearchingDirectory:
    """The :class:`~openxpki_py.directory.base.Directory` logic over ``_search``."""

    def __init__(self, config: DirectoryConfig) -> None:
        self.config = config

    # ---- backend primitive -------------------------------------------------

    def _search(self, base: str, scope: Scope, filterstr: str, attributes: Sequence[str]) -> list[RawEntry]:
        """Entries at/under ``base`` matching ``filterstr``.

        A missing ``base`` yields ``[]`` for a base-scope search and raises
        :class:`DirectoryError` for a subtree search (a misconfigured base).
        """
        raise NotImplementedError

    def close(self) -> None:
        pass

    # ---- users -------------------------------------------------------------

    def find_user(self, login: str) -> DirectoryUser:
        user = self._lookup(login)
        for name in self.config.required:
            if name not in user.attributes:
                attribute = self.config.attributes[name]
                raise DirectoryAttributeMissing(
                    f"the directory entry of login {describe_login(login)} ({user.dn}) has no "
                    f"{attribute} attribute, which is required (as {name!r})"
                )
        return user

    def find_person(self, login: str) -> DirectoryUser:
        return self._lookup(login)

    def _lookup(self, login: str) -> DirectoryUser:
        cfg = self.config
        if not login or login != login.strip() or any(ord(c) < 32 for c in login):
            # Servers ignore surrounding spaces; refuse rather than match "alice " as alice.
            raise DirectoryUserNotFound(f"login {describe_login(login)} is not a valid user name")
        filterstr = render_filter(cfg.user_filter, login=login, login_attribute=cfg.login_attribute)
        wanted = [*cfg.attributes.values(), cfg.login_attribute]
        if cfg.membership == "memberOf":
            wanted.append(cfg.groups.member_of_attribute)
        entries = self._search(cfg.base_dn, "subtree", filterstr, _unique(wanted))
        if not entries:
            raise DirectoryUserNotFound(
                f"no directory entry for login {describe_login(login)} "
                f"({cfg.login_attribute} under {cfg.base_dn})"
            )
        if len(entries) > 1:
            dns = "; ".join(sorted(dn for dn, _ in entries)[:5])
            raise DirectoryAmbiguous(
                f"login {describe_login(login)} matches {len(entries)} directory entries "
                f"({cfg.login_attribute} under {cfg.base_dn}): {dns}"
            )
        dn, values = entries[0]
        every: dict[str, tuple[str, ...]] = {}
        for name, attribute in cfg.attributes.items():
            found = tuple(values.get(attribute.lower(), ()))
            if found:
                every[name] = found
        member_of = tuple(values.get(cfg.groups.member_of_attribute.lower(), ()))
        return DirectoryUser(
            login=_own_spelling(login, values.get(cfg.login_attribute.lower(), ())),
            dn=dn,
            attributes=MappingProxyType({name: found[0] for name, found in every.items()}),
            all_values=MappingProxyType(every),
            member_of=member_of if cfg.membership == "memberOf" else (),
        )

    def find_people(self, text: str, *, limit: int = 25) -> list[DirectoryUser]:
        """People whose login, name (cn) or mail contains ``text``: the help desk's search box.

        At most ``limit`` entries, sorted by login; a person's ``login`` is
        the directory's own spelling.  ``text`` is escaped, never a filter.
        """
        cfg = self.config
        text = text.strip()
        if not text or any(ord(c) < 32 for c in text):
            return []
        needle = f"*{escape_value(text)}*"
        names = _unique([cfg.login_attribute, *(cfg.attributes[k] for k in ("cn", "mail") if k in cfg.attributes)])
        filterstr = "(&(objectClass=person)(|" + "".join(f"({a}={needle})" for a in names) + "))"
        wanted = _unique([*cfg.attributes.values(), cfg.login_attribute])
        people = []
        for dn, values in self._search(cfg.base_dn, "subtree", filterstr, wanted):
            logins = values.get(cfg.login_attribute.lower(), ())
            if not logins:
                continue
            every = {name: tuple(values[a.lower()]) for name, a in cfg.attributes.items() if values.get(a.lower())}
            people.append(DirectoryUser(login=logins[0], dn=dn,
                                        attributes=MappingProxyType({n: v[0] for n, v in every.items()}),
                                        all_values=MappingProxyType(every), member_of=()))
        return sorted(people, key=lambda u: u.login.lower())[:limit]

    def _user(self, user: DirectoryUser | str) -> DirectoryUser:
        return user if isinstance(user, DirectoryUser) else self._lookup(user)

    # ---- groups ------------------------------------------------------------

    def _group_dn(self, group: str) -> str:
        """The DN of a group given by name or DN; it must exist and pass the group filter."""
        groups = self.config.groups
        if is_dn(group):
            if not self._search(group, "base", groups.filter, ["1.1"]):
                raise DirectoryGroupNotFound(f"group {group} does not exist (or is not a group)")
            return group
        filterstr = f"(&{groups.filter}({groups.name_attribute}={escape_value(group)}))"
        entries = self._search(groups.base_dn, "subtree", filterstr, ["1.1"])
        if not entries:
            raise DirectoryGroupNotFound(
                f"no group named {group!r} ({groups.name_attribute} under {groups.base_dn})"
            )
        if len(entries) > 1:
            raise DirectoryAmbiguous(
                f"group name {group!r} matches {len(entries)} groups under {groups.base_dn}: "
                + "; ".join(sorted(dn for dn, _ in entries)[:5])
            )
        return entries[0][0]

    def _member_filter(self, user_dn: str) -> str:
        groups = self.config.groups
        tests = "".join(f"({attr}={escape_value(user_dn)})" for attr in groups.member_attributes)
        return f"(&{groups.filter}(|{tests}))"

    def is_member(self, user: DirectoryUser | str, group: str) -> bool:
        who = self._user(user)
        group_dn = self._group_dn(group)
        if self.config.membership == "memberOf":
            wanted = normalize_dn(group_dn)
            return any(_normal_or_none(dn) == wanted for dn in who.member_of)
        return bool(self._search(group_dn, "base", self._member_filter(who.dn), ["1.1"]))

    def groups(self, user: DirectoryUser | str) -> list[str]:
        who = self._user(user)
        groups = self.config.groups
        if self.config.membership == "memberOf":
            return sorted({name for dn in who.member_of if (name := self._group_name(dn)) is not None})
        entries = self._search(
            groups.base_dn, "subtree", self._member_filter(who.dn), [groups.name_attribute]
        )
        names = set()
        for dn, values in entries:
            found = values.get(groups.name_attribute.lower())
            names.add(found[0] if found else dn)
        return sorted(names)

    def _group_name(self, dn: str) -> str | None:
        """The name of a group from a memberOf value, or None if outside groups.base_dn."""
        groups = self.config.groups
        normal = _normal_or_none(dn)
        if normal is None or not is_within(normal, normalize_dn(groups.base_dn)):
            return None
        name = first_rdn_value(dn, groups.name_attribute)
        if name is not None:
            return name
        entries = self._search(dn, "base", groups.filter, [groups.name_attribute])
        if not entries:
            return None
        found = entries[0][1].get(groups.name_attribute.lower())
        return found[0] if found else dn


def _own_spelling(login: str, own_values: Sequence[str]) -> str:
    """The entry's own value for ``login``: the server matched it without regard to case.

    Callers compare it with what they asked for when spelling matters (the
    SSO login must be the entry's value exactly, see auth.person).
    """
    if login in own_values:
        return login
    folded = login.casefold()
    return next((value for value in own_values if value.casefold() == folded), login)


def _unique(names: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.lower(), name)
    return list(seen.values())


def _normal_or_none(dn: str) -> NormalDN | None:
    try:
        return normalize_dn(dn)
    except ValueError:
        return None


def text_values(record: Mapping[str, Sequence[bytes]]) -> dict[str, tuple[str, ...]]:
    """Values by lower-case attribute name (options such as ``;lang-de`` dropped).

    Binary values are left out: only text attributes (names, mail, UPN …) are
    ever asked for, and a ``jpegPhoto`` must not make a lookup fail.
    """
    values: dict[str, list[str]] = {}
    for name, raw_values in record.items():
        attribute = name.split(";", 1)[0].lower()
        bucket = values.setdefault(attribute, [])
        for raw in raw_values:
            if attribute == "objectsid":
                # Active Directory hands the SID over in binary; profiles need "S-1-5-21-…".
                try:
                    bucket.append(sid_from_binary(raw))
                    continue
                except ValueError:
                    pass  # other directories store the string form
            try:
                bucket.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                continue
    return {name: tuple(found) for name, found in values.items() if found}


def sid_from_binary(raw: bytes) -> str:
    """The string form of a binary SID (AD's objectSid, MS-DTYP §2.4.2)."""
    if len(raw) < 8 or raw[0] != 1 or len(raw) != 8 + 4 * raw[1]:
        raise ValueError("not a binary SID")
    authority = int.from_bytes(raw[2:8], "big")
    subs = [int.from_bytes(raw[8 + 4 * i:12 + 4 * i], "little") for i in range(raw[1])]
    return "S-1-" + "-".join(str(v) for v in [authority, *subs])
