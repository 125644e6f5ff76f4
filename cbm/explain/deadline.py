"""Reading an HTTP request against a deadline for the whole request, not only for each read.

A socket timeout bounds one read; a client that sends a byte just inside it, again and again,
would hold its connection (and the thread serving it) for as long as it likes. A
:class:`DeadlineReader` gives every read only the time left until the request's deadline, so the
request as a whole must arrive in time; ``cbm serve`` answers :class:`RequestTimedOut` with a 408
and closes the connection.
"""

from __future__ import annotations

import io
import math
import socket
import time
from typing import Any

__all__ = ["DeadlineReader", "RequestTimedOut"]


class RequestTimedOut(Exception):
    """A request that stalled, or ran past its deadline, while it was being read."""


class DeadlineReader(io.RawIOBase):
    """A connection's reading end, with a deadline for each request on top of the stall timeout:
    every read waits at most until the deadline, so a client that trickles a byte at a time is
    cut off there too. ``received`` counts the bytes of the current request read so far."""

    def __init__(self, sock: socket.socket, stall_s: float) -> None:
        super().__init__()
        self._sock = sock
        self._stall_s = stall_s
        self._seconds = self.deadline = math.inf
        self.received = 0

    def start(self, seconds: float) -> None:
        """A new request begins: it must have arrived ``seconds`` from now."""
        self._seconds, self.deadline, self.received = seconds, time.monotonic() + seconds, 0

    def readable(self) -> bool:
        return True

    def _timed_out(self) -> RequestTimedOut:
        if time.monotonic() < self.deadline:
            return RequestTimedOut(f"the request stalled for {self._stall_s:g} s; send it again")
        return RequestTimedOut(f"the request did not arrive within {self._seconds:g} s; "
                               "send it again over a faster connection")

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        self._sock.settimeout(min(self._stall_s, left))
        try:
            n = self._sock.recv_into(buffer)
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            self._sock.settimeout(self._stall_s)  # writes keep the stall timeout
        self.received += n
        return n
