"""A key of ours in an HSM token, reached through the shared session pool.

The CA key, the card admin master secret and the escrow key-recovery key
each live in a token and are used the same way: the pool is opened on first
use (building the object touches nothing), shared by threads, released on
``close``, and a token's failure comes back worded for an operator, naming
the config key to check.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from openxpki_py_token.pkcs11.session import TokenSessionPool, acquire_pool, release_pool
from openxpki_py_token.secret import SecretRef
from pkcs11 import exceptions as p11_exc

from ...errors import TokenError, TokenModuleError


class PooledTokenKey:
    """One key on one token; subclasses say what it is (:meth:`describe`) and use :meth:`_run`."""

    def __init__(self, *, module: os.PathLike[str] | str, token_label: str, pin: SecretRef,
                 max_sessions: int, origin: str, call_seconds: float | None = None) -> None:
        self.module_path = Path(module)
        self.token_label = token_label
        self.pin = pin
        self.max_sessions = max_sessions
        self.origin = origin  # the config section, for messages
        # How long a request waits for one call into the token (None: the pool's 10 s); past it, a TokenError.
        self.call_seconds = call_seconds
        self._pool: TokenSessionPool | None = None
        self._lock = threading.Lock()

    def describe(self) -> str:
        raise NotImplementedError

    def _session_pool(self) -> TokenSessionPool:
        with self._lock:
            if self._pool is None:
                self._pool = acquire_pool(self.module_path, self.token_label, self.pin, self.max_sessions)
            return self._pool

    def _run(self, operation: Any, *, rw: bool = False) -> Any:
        try:
            return self._session_pool().run(operation, rw=rw, seconds=self.call_seconds)
        except TokenModuleError as exc:
            raise TokenModuleError(f"{exc.message} (check {self.origin}.module)") from None
        except p11_exc.PKCS11Error as exc:
            raise TokenError(f"{self.describe()}: {type(exc).__name__} from the token") from None

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            release_pool(pool)
