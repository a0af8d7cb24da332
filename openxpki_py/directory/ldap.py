"""The LDAP backend (python-ldap): one reused connection per process.

Opening a TLS connection and binding costs more than the search itself, so
the connection is kept between requests.  When the server restarts, the
kept connection is dead; the next operation notices (SERVER_DOWN), connects
again once and repeats the operation, so one restart costs no failed login.
Operations on the connection are serialized by a lock: python-ldap
connections are not meant for concurrent use, and directory lookups are
short next to everything else a request does.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import ldap
from ldap.controls import SimplePagedResultsControl
from ldap.ldapobject import LDAPObject

from ..errors import DirectoryError
from .base import DirectoryCredentialsError, DirectoryUnavailable
from .config import DirectoryConfig, LdapConfig
from .core import RawEntry, Scope, SearchingDirectory, text_values

log = logging.getLogger(__name__)

_SCOPES = {"base": ldap.SCOPE_BASE, "subtree": ldap.SCOPE_SUBTREE}
# Errors that mean "this connection is gone": reconnect and try once more.
_CONNECTION_LOST = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR, ldap.UNAVAILABLE)


def _describe(exc: ldap.LDAPError) -> str:
    """python-ldap's error text: ``desc`` plus the server's or libldap's ``info``."""
    detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    desc = str(detail.get("desc") or type(exc).__name__)
    info = str(detail.get("info") or "").strip()
    return f"{desc} ({info})" if info else desc


class LdapDirectory(SearchingDirectory):
    """A :class:`~openxpki_py.directory.base.Directory` on an LDAP server."""

    def __init__(self, config: DirectoryConfig) -> None:
        super().__init__(config)
        if config.ldap is None:
            raise DirectoryError("directory.ldap is not configured")
        self.ldap: LdapConfig = config.ldap
        self._conn: LDAPObject | None = None
        self._pid = 0
        # One connection per process, one operation on it at a time.  A connect
        # that failed slowly (a server that does not answer) is not tried again
        # by each waiting thread in turn, for one timeout: eight page requests
        # waited up to eight timeouts, and a workflow step holding the
        # database's write lock among them.
        self._lock = threading.Lock()
        self._slow_failure: tuple[float, str] | None = None  # (until, message)

    # ---- connection --------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pid == os.getpid():
            try:
                conn.unbind_s()
            except ldap.LDAPError:
                pass  # the connection is being thrown away anyway

    def _connect(self) -> LDAPObject:
        cfg = self.ldap
        _ldaps_answers(cfg.uri, cfg.timeout)
        conn = ldap.initialize(cfg.uri)
        try:
            conn.set_option(ldap.OPT_PROTOCOL_VERSION, ldap.VERSION3)
            # Active Directory returns referrals that libldap would chase anonymously.
            conn.set_option(ldap.OPT_REFERRALS, 0)
            conn.set_option(ldap.OPT_NETWORK_TIMEOUT, cfg.timeout)
            conn.set_option(ldap.OPT_TIMEOUT, cfg.timeout)
            conn.timeout = cfg.timeout  # python-ldap's default for every *_s call
            if cfg.ca_file is not None:
                conn.set_option(ldap.OPT_X_TLS_CACERTFILE, str(cfg.ca_file))
            conn.set_option(ldap.OPT_X_TLS_REQUIRE_CERT, ldap.OPT_X_TLS_DEMAND)
            conn.set_option(ldap.OPT_X_TLS_PROTOCOL_MIN, ldap.OPT_X_TLS_PROTOCOL_TLS1_2)
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # apply the TLS options above; must come last
            if cfg.starttls:
                conn.start_tls_s()
            if cfg.bind_dn is not None and cfg.bind_password is not None:
                conn.simple_bind_s(cfg.bind_dn, cfg.bind_password.reveal())
            else:
                conn.simple_bind_s("", "")
        except BaseException:
            try:
                conn.unbind_s()
            except ldap.LDAPError:
                pass
            raise
        return conn

    def _connection(self) -> tuple[LDAPObject, bool]:
        """The kept connection (``True``: reused) or a new one."""
        if self._conn is not None and self._pid != os.getpid():
            # Inherited across fork(): the socket is shared with the parent; never touch it.
            self._conn = None
        if self._conn is not None:
            return self._conn, True
        self._conn = self._connect()
        self._pid = os.getpid()
        return self._conn, False

    # ---- searching ---------------------------------------------------------

    def _search(self, base: str, scope: Scope, filterstr: str, attributes: Sequence[str]) -> list[RawEntry]:
        # Requests queue for the one connection without a limit of their own: a
        # healthy but busy server must not look dead.  Each operation is bounded
        # (the timeout per connect, bind and page), and a connect that failed
        # slowly answers the queue at once.
        with self._lock:
            return self._search_locked(base, scope, filterstr, attributes)

    def _search_locked(self, base: str, scope: Scope, filterstr: str, attributes: Sequence[str]) -> list[RawEntry]:
        failed = self._slow_failure
        if failed is not None and time.monotonic() < failed[0]:
            raise DirectoryUnavailable(f"{failed[1]} (a moment ago; tried again after {self.ldap.timeout:g} s)")
        while True:
            started = time.monotonic()
            try:
                conn, reused = self._connection()
            except ldap.LDAPError as exc:
                self._conn = None
                error = self._translate(exc, "connect")
                if isinstance(error, DirectoryUnavailable) and time.monotonic() - started >= self.ldap.timeout / 2:
                    self._slow_failure = (time.monotonic() + self.ldap.timeout, error.message)
                raise error from exc
            self._slow_failure = None
            try:
                return self._run(conn, base, scope, filterstr, attributes)
            except _CONNECTION_LOST as exc:
                self._drop()
                if reused:
                    log.info("LDAP connection to %s was lost (%s); reconnecting", self.ldap.uri, _describe(exc))
                    continue
                raise self._translate(exc, "search") from exc
            except ldap.NO_SUCH_OBJECT as exc:
                if scope == "base":
                    return []
                raise DirectoryError(f"the search base {base} does not exist on {self.ldap.uri}") from exc
            except ldap.LDAPError as exc:
                if isinstance(exc, (ldap.TIMEOUT, ldap.TIMELIMIT_EXCEEDED)):
                    self._drop()  # a late answer must not be read as the next one's
                raise self._translate(exc, "search") from exc

    def _run(self, conn: LDAPObject, base: str, scope: Scope, filterstr: str,
             attributes: Sequence[str]) -> list[RawEntry]:
        timeout = self.ldap.timeout
        page_size = self.ldap.page_size if scope == "subtree" else 0
        controls: list[Any] = []
        paging = SimplePagedResultsControl(criticality=False, size=page_size, cookie="") if page_size else None
        results: list[RawEntry] = []
        while True:
            if paging is not None:
                controls = [paging]
            msgid = conn.search_ext(
                base, _SCOPES[scope], filterstr, list(attributes),
                serverctrls=controls, timeout=timeout,
            )
            _type, data, _msgid, reply_controls = conn.result3(msgid, all=1, timeout=timeout)
            for dn, values in data:
                if dn is None or not isinstance(values, dict):
                    continue  # search references (Active Directory), not entries
                results.append((dn, text_values(values)))
            cookie = _next_cookie(reply_controls)
            if paging is None or not cookie:
                return results
            paging.cookie = cookie

    def _translate(self, exc: ldap.LDAPError, step: str) -> DirectoryError:
        uri = self.ldap.uri
        if isinstance(exc, ldap.INVALID_CREDENTIALS):
            who = self.ldap.bind_dn or "anonymous"
            return DirectoryCredentialsError(
                f"the LDAP server {uri} refused the bind as {who}: wrong password, or the account is locked"
            )
        if isinstance(exc, (ldap.INAPPROPRIATE_AUTH, ldap.STRONG_AUTH_REQUIRED, ldap.CONFIDENTIALITY_REQUIRED)):
            who = self.ldap.bind_dn or "anonymous"
            return DirectoryCredentialsError(f"the LDAP server {uri} does not accept a bind as {who}: {_describe(exc)}")
        if isinstance(exc, (ldap.TIMEOUT, ldap.TIMELIMIT_EXCEEDED)):
            return DirectoryUnavailable(f"the LDAP server {uri} did not answer within {self.ldap.timeout:g} s ({step})")
        if isinstance(exc, _CONNECTION_LOST):
            return DirectoryUnavailable(f"cannot reach the LDAP server {uri}: {_describe(exc)}")
        return DirectoryError(f"the LDAP server {uri} refused the {step}: {_describe(exc)}")


def _ldaps_answers(uris: str, timeout: float) -> None:
    """Raise ``ldap.TIMEOUT`` unless some ldaps:// server of ``uris`` completes a TLS handshake in time.

    libldap's OPT_NETWORK_TIMEOUT covers the TCP connect only: a server that
    accepts and never answers the ClientHello would hang the request (and
    the page) for ever.  Certificates are not checked here; libldap checks
    them on the real connection right after.
    """
    tls_uris = [u for u in uris.split() if u.lower().startswith("ldaps://")]
    if not tls_uris or len(tls_uris) != len(uris.split()):
        return  # ldap:// (StartTLS runs inside an operation, which OPT_TIMEOUT bounds) or a mix
    probe = ssl.create_default_context()
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    for uri in tls_uris:
        parts = urllib.parse.urlsplit(uri)
        try:
            with socket.create_connection((parts.hostname or "localhost", parts.port or 636), timeout=timeout) as raw:
                with probe.wrap_socket(raw, server_hostname=parts.hostname):
                    return
        except (OSError, ValueError):
            continue
    raise ldap.TIMEOUT({"desc": "no TLS handshake", "info": f"no ldaps server answered within {timeout:g} s"})


def _next_cookie(reply_controls: Sequence[Any] | None) -> bytes:
    for control in reply_controls or ():
        if control.controlType == SimplePagedResultsControl.controlType:
            return bytes(control.cookie or b"")
    return b""
