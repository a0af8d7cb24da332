"""The embedded directory: users and groups in one LDIF file.

For demos and small sites that run no LDAP server.  The file is read with
python-ldap's ``ldif`` parser and re-read when it changes (checked on every
lookup by size and mtime, which costs one ``stat``), so an operator can edit
it without restarting Apache.  Searches evaluate the same filters an LDAP
server would get (see :mod:`.filters` for the limits of local matching).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ldif

from ..errors import DirectoryError
from .base import DirectoryUnavailable
from .config import DirectoryConfig
from .core import RawEntry, Scope, SearchingDirectory, text_values
from .dn import NormalDN, is_within, normalize_dn
from .filters import parse_filter


@dataclass(frozen=True)
class _Entry:
    dn: str
    normal_dn: NormalDN
    values: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class _Snapshot:
    stamp: tuple[int, int]
    entries: tuple[_Entry, ...]
    by_dn: Mapping[NormalDN, _Entry]


class LdifDirectory(SearchingDirectory):
    """A :class:`~openxpki_py.directory.base.Directory` backed by an LDIF file."""

    def __init__(self, config: DirectoryConfig) -> None:
        super().__init__(config)
        if config.ldif_file is None:
            raise DirectoryError("directory.ldif_file is not configured")
        self.path: Path = config.ldif_file
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._snapshot = None

    def _current(self) -> _Snapshot:
        try:
            info = os.stat(self.path)
        except OSError as exc:
            raise DirectoryUnavailable(f"cannot read the directory file {self.path}: {exc.strerror}") from exc
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            if self._snapshot is None or self._snapshot.stamp != stamp:
                self._snapshot = _load(self.path, stamp)
            return self._snapshot

    def _search(self, base: str, scope: Scope, filterstr: str, attributes: Sequence[str]) -> list[RawEntry]:
        snapshot = self._current()
        base_dn = normalize_dn(base)
        if scope == "base":
            entry = snapshot.by_dn.get(base_dn)
            candidates: Sequence[_Entry] = (entry,) if entry is not None else ()
        else:
            if base_dn not in snapshot.by_dn:
                raise DirectoryError(f"search base {base} is not in the directory file {self.path}")
            candidates = [e for e in snapshot.entries if is_within(e.normal_dn, base_dn)]
        wanted = {name.lower() for name in attributes if name != "1.1"}
        matcher = parse_filter(filterstr)
        return [
            (entry.dn, {name: values for name, values in entry.values.items() if name in wanted})
            for entry in candidates
            if matcher.matches(entry.values)
        ]


def _load(path: Path, stamp: tuple[int, int]) -> _Snapshot:
    try:
        with open(path, "rb") as stream:
            parser = ldif.LDIFRecordList(stream)
            try:
                parser.parse()
            except ValueError as exc:
                raise DirectoryUnavailable(
                    f"the directory file {path} is not valid LDIF (near line {parser.line_counter}): {exc}"
                ) from exc
    except OSError as exc:
        raise DirectoryUnavailable(f"cannot read the directory file {path}: {exc.strerror}") from exc
    entries: list[_Entry] = []
    by_dn: dict[NormalDN, _Entry] = {}
    for dn, record in parser.all_records:
        try:
            normal = normalize_dn(dn)
        except ValueError as exc:
            raise DirectoryUnavailable(f"the directory file {path} has an invalid DN {dn!r}") from exc
        if normal in by_dn:
            raise DirectoryUnavailable(f"the directory file {path} has the entry {dn} twice")
        entry = _Entry(dn, normal, text_values(record))
        entries.append(entry)
        by_dn[normal] = entry
    return _Snapshot(stamp, tuple(entries), by_dn)
