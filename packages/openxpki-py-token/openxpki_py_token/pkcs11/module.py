"""Loading a PKCS#11 module once per process, safe for threads and forks.

python-pkcs11 0.10.1 initialises every module with ``C_Initialize(NULL)``,
which tells the library that the application is single threaded: SoftHSM
then takes no locks and two threads signing at once corrupt its heap.  Right
after python-pkcs11 has loaded the module (and before any session exists) we
therefore finalise it and initialise it again ourselves, through ctypes and
the *same* function list, with ``CKF_OS_LOCKING_OK``.  ``dlopen`` of the same
path returns the same handle, so python-pkcs11 keeps using the re-initialised
library.  If a module refuses OS locking (``CKR_CANT_LOCK``) we fall back to
``C_Initialize(NULL)`` and serialise every call with one lock.

After ``fork`` the child must initialise the library again (PKCS#11 §6.6.1)
and must not touch the parent's sessions; mod_wsgi daemon processes fork, so
this is done lazily on the first use in the new process.

Sessions are opened and closed only through :class:`Pkcs11Module`, which
counts them: the count tells tests whether a session leaked, and tells
:meth:`Pkcs11Module.find_token` whether the module may be re-initialised to
see a token created after it was loaded (SoftHSM scans its token folder only
in ``C_Initialize``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import exceptions as p11_exc

from ..errors import TokenError, TokenModuleError, TokenNotFound

log = logging.getLogger("openxpki_py.crypto.keys")

_CKR_OK = 0x000
_CKR_CANT_LOCK = 0x00A
_CKR_CRYPTOKI_NOT_INITIALIZED = 0x190
_CKF_OS_LOCKING_OK = 0x002
_CKU_SO, _CKU_USER = 0, 1

_ENTRY = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)


class _InitializeArgs(ctypes.Structure):
    """CK_C_INITIALIZE_ARGS (no custom mutex callbacks: the OS's are used)."""

    _fields_ = [
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("pReserved", ctypes.c_void_p),
    ]


_LOGIN = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong)
_LOGOUT = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong)


class _SessionInfo(ctypes.Structure):
    _fields_ = [("slotID", ctypes.c_ulong), ("state", ctypes.c_ulong), ("flags", ctypes.c_ulong),
                ("ulDeviceError", ctypes.c_ulong)]


_SESSION_INFO = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(_SessionInfo))
# CKS_RO_PUBLIC_SESSION, CKS_RW_PUBLIC_SESSION: the application is not logged in.
_PUBLIC_STATES = frozenset({0, 2})


class _FunctionListHead(ctypes.Structure):
    """CK_FUNCTION_LIST up to C_Logout, in the order the spec fixes.

    Not packed on Unix (pack(1) is a Windows-only convention of the spec).
    """

    _fields_ = [
        ("major", ctypes.c_ubyte),
        ("minor", ctypes.c_ubyte),
        ("C_Initialize", _ENTRY),
        ("C_Finalize", _ENTRY),
        *[(name, ctypes.c_void_p) for name in (
            "C_GetInfo", "C_GetFunctionList", "C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo",
            "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken", "C_InitPIN", "C_SetPIN",
            "C_OpenSession", "C_CloseSession", "C_CloseAllSessions")],
        ("C_GetSessionInfo", _SESSION_INFO),
        *[(name, ctypes.c_void_p) for name in ("C_GetOperationState", "C_SetOperationState")],
        ("C_Login", _LOGIN),
        ("C_Logout", _LOGOUT),
    ]


class Pkcs11Module:
    """One PKCS#11 shared library in this process (use :func:`get_module`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lib: Any = None
        self._head: Any = None
        self._pid = 0
        self._open_sessions = 0
        #: Bumped whenever the library is re-initialised: every session and
        #: object handle from an older generation is dead.
        self.generation = 0
        #: Set when the module cannot lock itself: callers serialise on it.
        self.serial_lock: threading.Lock | None = None

    # --- loading ---------------------------------------------------------------

    def lib(self) -> Any:
        """The python-pkcs11 ``lib``, initialised for threads in this process."""
        with self._lock:
            if self._pid != os.getpid():
                self._load()
            return self._lib

    def _load(self) -> None:
        if not self.path.is_file():
            raise TokenModuleError(f"PKCS#11 module {self.path} does not exist")
        fresh = self._lib is None
        if fresh:
            try:
                self._lib = pkcs11.lib(str(self.path))
                dll = ctypes.CDLL(str(self.path))
                head = ctypes.POINTER(_FunctionListHead)()
                rv = dll.C_GetFunctionList(ctypes.byref(head))
            except (p11_exc.PKCS11Error, OSError, AttributeError) as exc:
                raise TokenModuleError(
                    f"{self.path} is not a usable PKCS#11 module: {_reason(exc)}"
                ) from None
            if rv != _CKR_OK:
                raise TokenModuleError(f"{self.path}: C_GetFunctionList failed (CKR 0x{rv:x})")
            self._head = head.contents
        # In a forked child the parent's sessions are not ours to close.
        self._open_sessions = 0
        self._reinitialize(after_fork=not fresh)
        self._pid = os.getpid()

    def _reinitialize(self, *, after_fork: bool) -> None:
        """C_Finalize + C_Initialize with OS locking (the lock is held by the caller)."""
        rv = self._head.C_Finalize(None)
        if rv not in (_CKR_OK, _CKR_CRYPTOKI_NOT_INITIALIZED):
            log.warning("PKCS#11 module %s: C_Finalize returned 0x%x", self.path, rv)
        args = _InitializeArgs(flags=_CKF_OS_LOCKING_OK)
        rv = self._head.C_Initialize(ctypes.cast(ctypes.pointer(args), ctypes.c_void_p))
        if rv == _CKR_CANT_LOCK:
            log.warning("PKCS#11 module %s cannot lock for threads; all calls are serialised", self.path)
            rv = self._head.C_Initialize(None)
            self.serial_lock = threading.Lock()
        else:
            self.serial_lock = None
        if rv != _CKR_OK:
            raise TokenModuleError(f"{self.path}: C_Initialize failed (CKR 0x{rv:x})")
        self.generation += 1
        log.debug("PKCS#11 module %s initialised for threads (pid %d, after fork: %s)",
                  self.path, os.getpid(), after_fork)

    def forget_after_fork(self) -> None:
        """In a forked child: fresh lock, re-initialise on next use."""
        self._lock = threading.Lock()
        self._pid = 0

    # --- tokens ----------------------------------------------------------------

    def find_token(self, label: str) -> Any:
        """The one token with this label; re-scans once if none is open."""
        lib = self.lib()
        found = self._tokens(lib, label)
        if not found:
            with self._lock:
                # Only with no session open may the library be re-initialised.
                if self._open_sessions == 0:
                    self._reinitialize(after_fork=False)
                    rescanned = True
                else:
                    rescanned = False
            found = self._tokens(lib, label)
            if not found:
                present = sorted({t.label for t in self._all_tokens(lib) if t.label})
                listed = ", ".join(repr(p) for p in present) if present else "none"
                hint = "" if rescanned else (
                    "; the module was loaded before this token appeared: restart the service")
                raise TokenNotFound(
                    f"no token labelled {label!r} in {self.path} (tokens present: {listed}){hint}"
                )
        if len(found) > 1:
            raise TokenNotFound(f"{len(found)} tokens are labelled {label!r} in {self.path}; "
                                "give each token a unique label")
        return found[0]

    def _tokens(self, lib: Any, label: str) -> list[Any]:
        return [t for t in self._all_tokens(lib) if t.label == label]

    def _all_tokens(self, lib: Any) -> list[Any]:
        try:
            slots = lib.get_slots(token_present=True)
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{self.path}: cannot list slots: {_reason(exc)}") from None
        tokens = []
        for slot in slots:
            # A slot whose token vanished (e.g. SoftHSM's files deleted) must not
            # hide the others: skip it, as a re-scan will.
            with contextlib.suppress(p11_exc.PKCS11Error):
                tokens.append(slot.get_token())
        return tokens

    # --- sessions --------------------------------------------------------------

    def open_session(self, token: Any, *, rw: bool = False) -> Any:
        """Open (and count) a PIN-less session; PKCS#11 exceptions pass through."""
        with self._lock:
            session = token.open(rw=rw)
            self._open_sessions += 1
            return session

    def login(self, session: Any, pin: str, *, security_officer: bool = False) -> int:
        """C_Login as the user (or the SO: cards that need it to make keys) on an open session.

        Returns the CKR code.  python-pkcs11 only logs in while opening a
        session and leaks that session when the PIN is refused; logging in
        on a session we already count avoids the leak and lets a wrong PIN
        be reported cleanly.
        """
        buffer = ctypes.create_string_buffer(pin.encode("utf-8"))
        user_type = _CKU_SO if security_officer else _CKU_USER
        try:
            return int(self._head.C_Login(session.handle, user_type, buffer, len(buffer) - 1))
        finally:
            ctypes.memset(buffer, 0, len(buffer))  # do not leave the PIN in freed memory

    def reinitialize(self) -> None:
        """C_Finalize + C_Initialize now; refused while sessions are open.

        Some card drivers (OpenSC 0.23) hand out unusable objects right after
        C_GenerateKeyPair until the library is initialised again.
        """
        with self._lock:
            if self._open_sessions:
                raise TokenError(f"{self.path}: cannot re-initialise with {self._open_sessions} session(s) open")
            self._reinitialize(after_fork=False)

    def logout(self, session: Any) -> int:
        return int(self._head.C_Logout(session.handle))

    def public_session(self, session: Any) -> bool:
        """Is ``session`` alive but without the application's login (C_GetSessionInfo says a public state)?

        A token restarted behind the pool's back, or one that logged the
        application out (some HSMs do after a while), opens new sessions
        that are public: they see no private key at all.  Any other answer
        (a dead session, a module without the function, an error) is left
        to the operation itself to find out.
        """
        if not ctypes.cast(self._head.C_GetSessionInfo, ctypes.c_void_p).value:
            return False  # a NULL entry: the module does not offer it
        info = _SessionInfo()
        rv = int(self._head.C_GetSessionInfo(session.handle, ctypes.byref(info)))
        return rv == _CKR_OK and info.state in _PUBLIC_STATES

    def close_session(self, session: Any, generation: int) -> None:
        """Close a session of this generation; a dead one is just forgotten."""
        with self._lock:
            if generation != self.generation or self._pid != os.getpid():
                return  # the library was re-initialised: the handle is gone already
            self._open_sessions -= 1
            with contextlib.suppress(p11_exc.PKCS11Error):
                session.close()

    @property
    def open_sessions(self) -> int:
        return self._open_sessions if self._pid == os.getpid() else 0

    @contextlib.contextmanager
    def serialised(self) -> Iterator[None]:
        """Hold the module lock only when the library cannot lock itself."""
        lock = self.serial_lock
        if lock is None:
            yield
        else:
            with lock:
                yield


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


_modules: dict[str, Pkcs11Module] = {}
_registry_lock = threading.Lock()


def get_module(path: os.PathLike[str] | str) -> Pkcs11Module:
    """The process-wide :class:`Pkcs11Module` for this library path.

    Any code in this project that talks PKCS#11 in-process should get the
    library here, so that it is initialised once, for threads.
    """
    key = os.path.realpath(path)
    with _registry_lock:
        module = _modules.get(key)
        if module is None:
            module = _modules[key] = Pkcs11Module(Path(path))
        return module


def open_session_count() -> int:
    """Sessions this process opened through :func:`get_module` and not closed."""
    with _registry_lock:
        return sum(m.open_sessions for m in _modules.values())


_after_fork_hooks: weakref.WeakSet[Any] = weakref.WeakSet()


def register_fork_hook(obj: Any) -> None:
    """``obj.forget_after_fork()`` is called in every forked child."""
    _after_fork_hooks.add(obj)


def _after_fork_in_child() -> None:
    # Locks held by other threads at fork time would stay locked forever.
    global _registry_lock
    _registry_lock = threading.Lock()
    for module in _modules.values():
        module.forget_after_fork()
    for obj in list(_after_fork_hooks):
        obj.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
