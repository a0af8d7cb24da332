"""Sessions on one token: one logged-in session for life, a pool for signing.

PKCS#11 login is per token and application, not per session: one C_Login
makes every session of this process on that token a user session, and
C_Logout (or closing the last session) ends it for all of them.  So a pool
keeps exactly one session that carries the login (never used for work,
logged out and closed last) and hands each concurrently signing thread its
own PIN-less session.

Pools are shared per (module, token label) and reference counted, so two
backends on the same token in one process do not log each other out.

When the token goes away (removed, HSM restarted, module re-initialised)
every handle is dead: :meth:`TokenSessionPool.run` drops the pool, logs in
again and retries the operation once, so a CA survives an HSM restart.

PKCS#11 has no timeouts, and a network HSM whose connection hangs keeps a
C_Sign waiting for as long as the vendor's client library likes (minutes,
or for ever).  The calls are therefore made on helper threads
(:class:`_Courier`): the caller stops waiting after a bound and gets a
TokenError, so it can roll back its transaction and free its request
thread, while the helper stays inside the library until the call returns
and only then gives its session back.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pkcs11 import exceptions as p11_exc

from ..errors import ConfigError, TokenError, TokenNotFound, TokenPinError
from ..secret import SecretRef
from .module import Pkcs11Module, get_module, register_fork_hook

log = logging.getLogger("openxpki_py.crypto.keys")

T = TypeVar("T")

# Errors after which no handle of this token can be trusted any more.
SESSION_LOST = (
    p11_exc.SessionHandleInvalid, p11_exc.SessionClosed, p11_exc.UserNotLoggedIn,
    p11_exc.DeviceRemoved, p11_exc.TokenNotPresent, p11_exc.TokenNotRecognised,
    p11_exc.DeviceError, p11_exc.KeyHandleInvalid, p11_exc.ObjectHandleInvalid,
    p11_exc.SlotIDInvalid,
)


class _Lost(Exception):
    """A session of the pool's login ``epoch`` was found dead (``cause``: one of :data:`SESSION_LOST`)."""

    def __init__(self, cause: Exception, epoch: int) -> None:
        super().__init__(type(cause).__name__)
        self.why = type(cause).__name__
        self.epoch = epoch


class _Overdue(Exception):
    """The helper's call has not returned in time (the caller stops waiting)."""


class _Errand:
    """One call into the library, made by a helper thread; its caller may stop waiting (``abandoned``)."""

    __slots__ = ("work", "reply", "finished", "abandoned")

    def __init__(self, work: Callable[[_Errand], Any]) -> None:
        self.work = work
        self.reply: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
        self.finished = False  # set with the courier's lock held, as is abandoned
        self.abandoned = False  # the caller gave up: work not begun yet is not done at all


class _Courier:
    """Helper threads (daemons, reused) that make the calls into the PKCS#11 library for their callers.

    A helper whose call hangs stays with it; the next caller gets another
    helper.  While any call is overdue (its caller gave up and it has not
    returned), :attr:`overdue` says so: the pool then fails new calls at
    once instead of making each of them wait the whole bound again.
    The hand-over is two C-level queues (no Python-level Condition): it
    costs a signature about two thread switches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[_Errand | None]] = []
        self.overdue = 0
        self.overdue_since = 0.0
        self._closed = False

    def run(self, work: Callable[[_Errand], T], seconds: float) -> T:
        """``work(errand)``'s result or exception; :class:`_Overdue` if it has not returned within ``seconds``."""
        errand = _Errand(work)
        self._inbox().put(errand)
        try:
            value, error = errand.reply.get(timeout=seconds)
        except queue.Empty:
            with self._lock:
                if not errand.finished:
                    errand.abandoned = True
                    if not self.overdue:
                        self.overdue_since = time.monotonic()
                    self.overdue += 1
                    raise _Overdue from None
            value, error = errand.reply.get_nowait()  # it finished just now
        if error is not None:
            raise error
        return value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Let the idle helpers end (a hung one ends when its call returns and finds no work after it)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for inbox in idle:
            inbox.put(None)

    def _inbox(self) -> queue.SimpleQueue[_Errand | None]:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        inbox: queue.SimpleQueue[_Errand | None] = queue.SimpleQueue()
        threading.Thread(target=self._serve, args=(inbox,), name="pkcs11-call", daemon=True).start()
        return inbox

    def _serve(self, inbox: queue.SimpleQueue[_Errand | None]) -> None:
        while (errand := inbox.get()) is not None:
            value: Any = None
            error: BaseException | None = None
            try:
                value = errand.work(errand)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, if it still waits
                error = exc
            with self._lock:
                errand.finished = True
                if errand.abandoned:
                    self.overdue -= 1
                    log.warning("a call into the token returned after its caller gave up")
                else:
                    errand.reply.put((value, error))
                if self._closed:
                    return
                self._idle.append(inbox)
            del errand, value, error


# CKR codes of C_Login (called through ctypes, see Pkcs11Module.login).
_CKR_OK = 0x000
_CKR_PIN_INCORRECT, _CKR_PIN_INVALID, _CKR_PIN_LEN_RANGE = 0x0A0, 0x0A1, 0x0A2
_CKR_PIN_EXPIRED, _CKR_PIN_LOCKED = 0x0A3, 0x0A4
_CKR_USER_ALREADY_LOGGED_IN, _CKR_USER_PIN_NOT_INITIALIZED = 0x100, 0x102


class PooledSession:
    """A session plus the key objects already found in it."""

    def __init__(self, session: Any, generation: int, epoch: int) -> None:
        self.session = session
        self.generation = generation  # of the module (re-initialisations)
        self.epoch = epoch  # of the pool (re-logins)
        self._objects: dict[Any, Any] = {}

    def cached(self, ref: Any, find: Callable[[Any], Any]) -> Any:
        """python-pkcs11 binds objects to a session: find each once per session."""
        obj = self._objects.get(ref)
        if obj is None:
            obj = self._objects[ref] = find(self.session)
        return obj


class TokenSessionPool:
    """Sessions on one token of one module (get one with :func:`acquire_pool`)."""

    def __init__(self, module: Pkcs11Module, token_label: str, pin: SecretRef,
                 max_sessions: int = 8) -> None:
        self.module = module
        self.token_label = token_label
        self.pin = pin
        self.max_sessions = max_sessions
        self.users = 0
        self.closed = False
        self._pin_key = os.urandom(32)
        # How long a thread waits for a session: for a free one, or for the thread that is
        # logging in or opening one (a hung HSM holds it there; the others must not hang too).
        self.wait_seconds = 30.0
        # How long a caller waits for one operation (session, login, the call itself) unless it says;
        # key generation (rw) gets RW_FACTOR times as long: slow tokens take minutes for RSA-4096.
        self.call_seconds = 10.0
        self._refused_pin: bytes | None = None
        self._cond = threading.Condition()
        self._reset_state()
        register_fork_hook(self)

    def _reset_state(self) -> None:
        self._token: Any = None
        self._login: PooledSession | None = None
        self._epoch = 0
        self._idle: list[PooledSession] = []
        self._borrowed = 0  # sessions out with threads, of any epoch
        self._owned = 0  # sessions of the current epoch (idle + borrowed)
        self._pid = os.getpid()
        self._courier = _Courier()  # helper threads do not survive a fork
        self._courier_pid = self._pid

    def describe(self) -> str:
        return f"token {self.token_label!r} via {self.module.path}"

    # --- the one entry point for work -------------------------------------------

    RW_FACTOR = 20

    def run(self, operation: Callable[[PooledSession], T], *, rw: bool = False, seconds: float | None = None) -> T:
        """Run ``operation`` on a logged-in session; retry once if the token was lost.

        ``rw`` gives a temporary read/write session (key generation) instead of
        a pooled read-only one.  ``seconds``: how long the caller waits for
        the whole of it, logging in again included (default
        :attr:`call_seconds`, times :attr:`RW_FACTOR` with ``rw``); past it
        the caller gets a TokenError and the call goes on without it.  0:
        no bound, the call is made on the caller's thread (it saves the
        hand-over to the helper, about 0.1 ms, and waits as long as the
        library does).
        """
        if self.closed:
            raise TokenError(f"{self.describe()}: the key backend was closed; open it again")
        limit = (self.call_seconds if seconds is None else seconds) * (self.RW_FACTOR if rw else 1)
        if limit <= 0:
            return self._run_retrying(operation, rw, None)
        if self._courier_pid != os.getpid():  # forked without the at-fork hooks: the parent's helpers are not here
            self._courier, self._courier_pid = _Courier(), os.getpid()
        courier = self._courier
        if courier.overdue:
            raise TokenError(f"{self.describe()}: a call into the token has not returned for "
                             f"{time.monotonic() - courier.overdue_since:.0f} s; the HSM or its network connection "
                             "is hanging (calls fail at once until it answers again)")
        try:
            return courier.run(lambda errand: self._run_retrying(operation, rw, errand), limit)
        except _Overdue:
            log.error("%s: a call into the token has not returned after %g s", self.describe(), limit)
            raise TokenError(f"{self.describe()}: the token did not answer within {limit:g} s; is the HSM or "
                             "its network connection hanging? (the call goes on without this request, and "
                             "its session is freed when it returns)") from None

    def _run_retrying(self, operation: Callable[[PooledSession], T], rw: bool, errand: _Errand | None) -> T:
        """One try, and after a lost session a new login and one more (on the helper, whose ``errand`` it is)."""
        try:
            return self._run_once(operation, rw, errand)
        except _Lost as lost:
            self._reset(lost.why, lost.epoch)
            log.warning("%s: session lost (%s); logging in again", self.describe(), lost.why)
        try:
            return self._run_once(operation, rw, errand)
        except _Lost as lost:
            self._reset(lost.why, lost.epoch)
            raise TokenError(
                f"{self.describe()}: the token was removed or the HSM restarted "
                f"({lost.why}); check the HSM and its connection"
            ) from None
        except TokenNotFound as exc:
            raise TokenNotFound(f"the token was removed while in use: {exc.message}") from None

    def _run_once(self, operation: Callable[[PooledSession], T], rw: bool, errand: _Errand | None) -> T:
        """One try; a dead session comes out as :class:`_Lost` with the login it belonged to."""
        pooled = self._open_rw() if rw else self._borrow()
        try:
            if errand is not None and errand.abandoned:  # the caller gave up meanwhile: sign (or make a key) for nobody
                raise TokenError(f"{self.describe()}: the caller stopped waiting")
            with self.module.serialised():
                if self.module.public_session(pooled.session):
                    # Alive without the login (the HSM restarted, or logged us out): its private
                    # objects would just be missing ("the key is gone") instead of a new login.
                    raise p11_exc.UserNotLoggedIn()
                return operation(pooled)
        except SESSION_LOST as exc:
            raise _Lost(exc, pooled.epoch) from exc
        finally:
            if rw:
                self.module.close_session(pooled.session, pooled.generation)
            else:
                self._give_back(pooled)

    # --- login and borrowing ------------------------------------------------------

    def _ensure_logged_in(self) -> None:
        """Called with ``self._cond`` held; cheap when nothing changed."""
        if self._pid != os.getpid():  # forked without the at-fork hooks running
            self._reset_state()
        elif self._login is not None and self._login.generation == self.module.generation:
            return
        self.module.lib()  # (re)initialises after fork
        if self._login is not None and self._login.generation == self.module.generation:
            return
        if self._login is not None:
            self._drop_all_locked()
        token = self.module.find_token(self.token_label)
        generation = self.module.generation
        session = self.module.open_session(token)
        try:
            self._log_in(session)
        except BaseException:
            self.module.close_session(session, generation)
            raise
        self._token = token
        self._login = PooledSession(session, generation, self._epoch)

    def _log_in(self, session: Any) -> None:
        pin = self.pin.reveal()
        where = self.describe()
        # A refused PIN is never tried again: every request of a busy CA would
        # otherwise count against the token's retry limit and lock it.  Only a
        # keyed digest is kept, never the PIN.
        fingerprint = hmac.digest(self._pin_key, pin.encode("utf-8"), "sha256")
        if self._refused_pin is not None and hmac.compare_digest(fingerprint, self._refused_pin):
            raise TokenPinError(f"{where}: the PIN from {self.pin.key} was refused before and is not "
                                "tried again (the token would lock); correct it")
        rv = self.module.login(session, pin)
        if rv in (_CKR_OK, _CKR_USER_ALREADY_LOGGED_IN):
            # Already logged in: other code in this process did it; the login
            # state is per token, so this session can sign all the same.
            self._refused_pin = None
            return
        if rv in (_CKR_PIN_INCORRECT, _CKR_PIN_INVALID, _CKR_PIN_LEN_RANGE):
            self._refused_pin = fingerprint
            raise TokenPinError(f"{where}: wrong PIN (read from {self.pin.key}); "
                                "further failures may lock the token")
        if rv == _CKR_PIN_LOCKED:
            raise TokenPinError(f"{where}: the user PIN is locked; the security officer must "
                                "reset it (softhsm2-util or pkcs11-tool --init-pin)")
        if rv == _CKR_PIN_EXPIRED:
            raise TokenPinError(f"{where}: the user PIN has expired; set a new one")
        if rv == _CKR_USER_PIN_NOT_INITIALIZED:
            raise TokenPinError(f"{where}: the token has no user PIN yet; initialise it")
        raise TokenError(f"{where}: login failed (CKR 0x{rv:x})")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The pool's lock, waited for at most ``wait_seconds``.

        Its holder may be inside C_Login or C_OpenSession, and PKCS#11 has
        no timeout of its own: with the HSM hanging there, every signing
        thread of the process waited for ever (a mod_wsgi daemon out of
        threads).  Now they give up with an error that says so.
        """
        if not self._cond.acquire(timeout=self.wait_seconds):
            raise TokenError(f"{self.describe()}: another thread has been logging in or opening a session for "
                             f"{self.wait_seconds:g} s; is the HSM hanging?")
        try:
            yield
        finally:
            self._cond.release()

    def _borrow(self) -> PooledSession:
        with self._locked():
            try:
                self._ensure_logged_in()
                deadline = time.monotonic() + self.wait_seconds
                while not self._idle and self._owned >= self.max_sessions:
                    if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                        raise TokenError(f"{self.describe()}: all {self.max_sessions} sessions stayed "
                                         f"busy for {self.wait_seconds:g} s; is the HSM hanging?")
                    self._ensure_logged_in()
                if self._idle:
                    pooled = self._idle.pop()
                else:
                    generation = self.module.generation
                    pooled = PooledSession(self.module.open_session(self._token), generation, self._epoch)
                    self._owned += 1
            except SESSION_LOST as exc:
                raise _Lost(exc, self._epoch) from exc
            self._borrowed += 1
            return pooled

    def _give_back(self, pooled: PooledSession) -> None:
        with self._cond:
            if self._pid != os.getpid():
                return
            self._borrowed -= 1
            if pooled.epoch == self._epoch and self._login is not None:
                self._idle.append(pooled)
            else:  # from before a re-login: close it (a no-op if the module was reset)
                self.module.close_session(pooled.session, pooled.generation)
            self._cond.notify_all()

    def _open_rw(self) -> PooledSession:
        """A read/write session of its own (closed after use, never pooled)."""
        with self._locked():
            try:
                self._ensure_logged_in()
                generation = self.module.generation
                return PooledSession(self.module.open_session(self._token, rw=True), generation, self._epoch)
            except SESSION_LOST as exc:
                raise _Lost(exc, self._epoch) from exc

    # --- losing and closing -------------------------------------------------------

    def _reset(self, why: str, epoch: int) -> None:
        """Drop the login of ``epoch`` and its sessions, if it is still the pool's.

        After an HSM restart every thread's session is dead: the first thread
        to see it logs in again, and the others, finding sessions of the old
        login dead, must not log out the new one (a thread signing with it
        would fail with UserNotLoggedIn and give up on its second try).
        """
        with self._cond:
            if self._login is not None and epoch == self._epoch:
                log.info("%s: dropping all sessions (%s)", self.describe(), why)
                self._drop_all_locked()

    def _drop_all_locked(self) -> None:
        """Close idle sessions and log out; borrowed ones are closed when given back."""
        for pooled in self._idle:
            self.module.close_session(pooled.session, pooled.generation)
        self._idle.clear()
        self._owned = 0
        self._epoch += 1
        login, self._login = self._login, None
        if login is not None:
            if login.generation == self.module.generation:
                self.module.logout(login.session)
            self.module.close_session(login.session, login.generation)

    def close(self, timeout: float = 30.0) -> None:
        """Wait for borrowed sessions, close the pool, log out."""
        with self._cond:
            self.closed = True
            if self._pid != os.getpid():
                self._reset_state()
                return
            deadline = time.monotonic() + timeout
            while self._borrowed:
                if not self._cond.wait(timeout=max(0.0, deadline - time.monotonic())):
                    log.warning("%s: closing with %d sessions still signing", self.describe(),
                                self._borrowed)
                    break
            self._drop_all_locked()
        self._courier.close()

    def forget_after_fork(self) -> None:
        """In a forked child the parent's sessions are not ours: start afresh."""
        self._cond = threading.Condition()
        self._reset_state()


_pools: dict[tuple[str, str], TokenSessionPool] = {}
_pools_lock = threading.Lock()


def acquire_pool(module_path: os.PathLike[str] | str, token_label: str, pin: SecretRef,
                 max_sessions: int = 8) -> TokenSessionPool:
    """The shared pool for this token; pair every call with :func:`release_pool`."""
    module = get_module(module_path)
    key = (str(module.path), token_label)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = TokenSessionPool(module, token_label, pin, max_sessions)
        elif pool.pin != pin and not _same_secret(pool.pin, pin):
            raise TokenPinError(
                f"{pool.describe()} is already open in this process with the PIN from "
                f"{pool.pin.key}; {pin.key} gives a different PIN"
            )
        pool.users += 1
        return pool


def release_pool(pool: TokenSessionPool) -> None:
    """Drop one user; the last one closes the sessions (and logs out)."""
    with _pools_lock:
        pool.users -= 1
        if pool.users > 0:
            return
        _pools.pop((str(pool.module.path), pool.token_label), None)
    pool.close()


def _same_secret(a: SecretRef, b: SecretRef) -> bool:
    try:
        return hmac.compare_digest(a.reveal().encode(), b.reveal().encode())
    except ConfigError:
        return False


def _forget_pools_after_fork() -> None:
    global _pools_lock
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_after_fork)
