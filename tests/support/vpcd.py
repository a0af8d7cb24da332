"""vsmartcard's vpcd wire protocol: how a software card plugs into pcscd.

vpcd is a pcscd reader driver that listens on TCP 127.0.0.1:35963; a
program that connects *is* the card in that reader.  Each message is a
2-byte big-endian length and a payload.  A 1-byte payload is a control
message (power off, power on, reset, "send your ATR"); anything longer is a
command APDU, answered with the response APDU.

Standard library only: the OpenPGP emulator imports this module from its own
test-only virtualenv, the PIV emulator from the project's.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Protocol

VPCD_HOST, VPCD_PORT = "127.0.0.1", 35963
_POWER_OFF, _POWER_ON, _RESET, _GET_ATR = 0, 1, 2, 4


class VirtualCard(Protocol):
    """What the bridge needs from an emulated card."""

    def atr(self) -> bytes: ...

    def power_cycle(self) -> None:
        """Power off, on or reset: forget volatile state (PIN verified, selection)."""

    def transmit(self, apdu: bytes) -> bytes: ...


def _read_exact(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        # vpcd sends length and payload in two writes; without an immediate
        # ACK each APDU waits for the peer's delayed-ACK timer (~40 ms).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        if not chunk:
            raise EOFError("vpcd closed the connection")
        data += chunk
    return data


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">H", len(payload)) + payload)


def connect(host: str = VPCD_HOST, port: int = VPCD_PORT, *, wait: float = 10.0) -> socket.socket:
    """Insert the card: connect to vpcd, waiting a little for pcscd to open its port."""
    deadline = time.monotonic() + wait
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=2.0)
            break
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def serve(card: VirtualCard, sock: socket.socket) -> None:
    """Answer vpcd until it hangs up (pcscd stopped); the card is then removed."""
    try:
        while True:
            (length,) = struct.unpack(">H", _read_exact(sock, 2))
            message = _read_exact(sock, length)
            if length == 1:
                if message[0] == _GET_ATR:
                    _send(sock, card.atr())
                elif message[0] in (_POWER_OFF, _POWER_ON, _RESET):
                    card.power_cycle()
                continue
            _send(sock, card.transmit(message))
    except (EOFError, ConnectionError):
        pass
    finally:
        sock.close()
