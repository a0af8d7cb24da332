"""LDAP search filters (RFC 4515): escaping, templates, and local evaluation.

A login comes from outside; put into a filter unescaped, ``*)(uid=*`` would
match everyone.  So every value goes through :func:`escape_value`, and
filters are only ever built from configured templates by
:func:`render_filter`.

The parser serves two purposes: configured templates are checked when the
config is loaded (a typo fails at start, naming the key), and the LDIF
backend evaluates the very same filters an LDAP server would, so both
backends answer alike.  Local matching approximates the usual matching rules
(case-insensitive strings, DN-valued attributes compared as DNs); it knows no
schema, so ``objectClass=person`` does not match an entry that lists only
``inetOrgPerson``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from .dn import fold, normalize_dn

# Attribute values an entry holds, by lower-case attribute name.
Entry = Mapping[str, Sequence[str]]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ATTRIBUTE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)(?:;[A-Za-z0-9-]+)*")

# Attributes of DN syntax commonly used in filters; compared as DNs locally.
DN_ATTRIBUTES = frozenset(
    {"member", "uniquemember", "memberof", "owner", "manager", "seealso", "secretary", "roleoccupant"}
)


class FilterSyntaxError(ValueError):
    """The text is not a valid RFC 4515 filter."""


class UnsupportedFilter(ValueError):
    """The filter is valid but cannot be evaluated locally (extensible match)."""


def escape_value_plain(value: str) -> str:
    """Escape an assertion value: ``\\ * ( )`` and NUL become ``\\XX`` (lower-case hex).

    The same output as python-ldap's ``escape_filter_chars`` (mode 0), for
    an LDIF-only install without python-ldap; a test holds the two equal.
    Other characters, non-ASCII included, stay as they are (RFC 4515 allows
    UTF-8 in a filter string).
    """
    out = []
    for char in value:
        if char in "\\*()\x00":
            out.append(f"\\{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)


def _python_ldap_escape() -> Callable[[str], str] | None:
    try:
        from ldap.filter import escape_filter_chars
    except ImportError:
        return None
    return cast(Callable[[str], str], escape_filter_chars)


# The LDAP library's own escaping where it is installed: one implementation
# for what the server will parse.
_LDAP_ESCAPE = _python_ldap_escape()


def escape_value(value: str) -> str:
    """Escape an assertion value for a filter (python-ldap's escaping, or the identical fallback)."""
    if _LDAP_ESCAPE is not None:
        return _LDAP_ESCAPE(value)
    return escape_value_plain(value)


def is_attribute_name(name: str) -> bool:
    return bool(_ATTRIBUTE.fullmatch(name))


def placeholders(template: str) -> set[str]:
    """The ``{name}`` placeholders a filter template uses."""
    return set(_PLACEHOLDER.findall(template))


def render_filter(template: str, **values: str) -> str:
    """Fill ``{name}`` placeholders with escaped values.

    Every value is escaped, so a template can never be broken out of; a
    placeholder without a value is a programming error (KeyError).
    """
    return _PLACEHOLDER.sub(lambda m: escape_value(values[m.group(1)]), template)


# ---- parsed filters --------------------------------------------------------


class Filter:
    """A parsed filter that can be matched against an entry."""

    def matches(self, entry: Entry) -> bool:
        raise NotImplementedError

    def local(self) -> bool:
        """Whether the filter can be evaluated without a server."""
        return True


@dataclass(frozen=True)
class And(Filter):
    parts: tuple[Filter, ...]

    def matches(self, entry: Entry) -> bool:
        return all(part.matches(entry) for part in self.parts)

    def local(self) -> bool:
        return all(part.local() for part in self.parts)


@dataclass(frozen=True)
class Or(Filter):
    parts: tuple[Filter, ...]

    def matches(self, entry: Entry) -> bool:
        return any(part.matches(entry) for part in self.parts)

    def local(self) -> bool:
        return all(part.local() for part in self.parts)


@dataclass(frozen=True)
class Not(Filter):
    part: Filter

    def matches(self, entry: Entry) -> bool:
        return not self.part.matches(entry)

    def local(self) -> bool:
        return self.part.local()


def _values(entry: Entry, attribute: str) -> Sequence[str]:
    return entry.get(attribute.split(";", 1)[0].lower(), ())


def _normal(attribute: str, value: str) -> object:
    if attribute.split(";", 1)[0].lower() in DN_ATTRIBUTES:
        try:
            # uniqueMember may carry "#'0101'B" (an optional UID): ignore it.
            return normalize_dn(value.split("#", 1)[0])
        except ValueError:
            return fold(value)
    return fold(value)


@dataclass(frozen=True)
class Present(Filter):
    attribute: str

    def matches(self, entry: Entry) -> bool:
        return bool(_values(entry, self.attribute))


@dataclass(frozen=True)
class Compare(Filter):
    attribute: str
    operator: str  # "=", "~=", ">=", "<="
    value: str

    def matches(self, entry: Entry) -> bool:
        wanted = _normal(self.attribute, self.value)
        for value in _values(entry, self.attribute):
            have = _normal(self.attribute, value)
            if self.operator in ("=", "~="):
                if have == wanted:
                    return True
            elif isinstance(have, str) and isinstance(wanted, str):
                if (have >= wanted) if self.operator == ">=" else (have <= wanted):
                    return True
        return False


@dataclass(frozen=True)
class Substring(Filter):
    attribute: str
    initial: str
    middle: tuple[str, ...]
    final: str

    def matches(self, entry: Entry) -> bool:
        initial, final = fold(self.initial), fold(self.final)
        middle = [fold(part) for part in self.middle]
        for raw in _values(entry, self.attribute):
            value = fold(raw)
            if not value.startswith(initial):
                continue
            pos = len(initial)
            for part in middle:
                found = value.find(part, pos)
                if found < 0:
                    break
                pos = found + len(part)
            else:
                if value.endswith(final) and len(value) - len(final) >= pos:
                    return True
        return False


@dataclass(frozen=True)
class Extensible(Filter):
    text: str

    def matches(self, entry: Entry) -> bool:
        raise UnsupportedFilter(f"extensible match {self.text!r} needs an LDAP server")

    def local(self) -> bool:
        return False


def parse_filter(text: str) -> Filter:
    """Parse an RFC 4515 filter string; raises :class:`FilterSyntaxError`."""
    parser = _Parser(text)
    node = parser.filter()
    if parser.pos != len(text):
        raise FilterSyntaxError(f"unexpected text after the filter at position {parser.pos}: {text!r}")
    return node


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> FilterSyntaxError:
        return FilterSyntaxError(f"{what} at position {self.pos} in {self.text!r}")

    def expect(self, char: str) -> None:
        if self.text[self.pos:self.pos + 1] != char:
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def filter(self) -> Filter:
        self.expect("(")
        head = self.text[self.pos:self.pos + 1]
        node: Filter
        if head in ("&", "|"):
            self.pos += 1
            parts = []
            while self.text[self.pos:self.pos + 1] == "(":
                parts.append(self.filter())
            node = And(tuple(parts)) if head == "&" else Or(tuple(parts))
        elif head == "!":
            self.pos += 1
            node = Not(self.filter())
        else:
            node = self.item()
        self.expect(")")
        return node

    def item(self) -> Filter:
        end = self.text.find(")", self.pos)
        if end < 0:
            raise self.fail("unclosed '('")
        body = self.text[self.pos:end]
        if "(" in body:
            raise self.fail("unescaped '(' in a value")
        self.pos = end
        match = re.match(r"([^=~<>]*?)(~=|>=|<=|=)(.*)\Z", body, re.S)
        if match is None:
            raise self.fail("expected attribute=value")
        attribute, operator, raw = match.groups()
        if ":" in attribute:
            if operator != "=":
                raise self.fail("extensible match must use ':='")
            _unescape(raw, self)
            return Extensible(body)
        if not is_attribute_name(attribute):
            raise self.fail(f"invalid attribute name {attribute!r}")
        if operator == "=" and raw == "*":
            return Present(attribute)
        if operator == "=" and "*" in raw:
            pieces = [_unescape(piece, self) for piece in raw.split("*")]
            if not all(pieces[1:-1]):
                raise self.fail("empty part between '*'")
            return Substring(attribute, pieces[0], tuple(pieces[1:-1]), pieces[-1])
        if "*" in raw:
            raise self.fail(f"'*' is not allowed with {operator}")
        return Compare(attribute, operator, _unescape(raw, self))


def _unescape(raw: str, parser: _Parser) -> str:
    if "\x00" in raw:
        raise parser.fail("NUL in a value")
    data = bytearray()
    i = 0
    while i < len(raw):
        char = raw[i]
        if char == "\\":
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in pair):
                raise parser.fail("a backslash must be followed by two hex digits")
            data.append(int(pair, 16))
            i += 3
        else:
            data.extend(char.encode("utf-8"))
            i += 1
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise parser.fail("escaped bytes are not UTF-8") from exc
