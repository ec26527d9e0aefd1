"""Owns the limits on client connections: how many may be open, and how long a request head or a stalled body may take.

uvicorn has none of these for HTTP/1.1 by itself: its keep-alive timer starts only after a response,
and `limit_concurrency` answers 503 only once a request's headers are in. A client that never
finishes its headers (slowloris) or its body therefore held a connection, and a file descriptor,
for ever: enough of them and the process could not accept Alertmanager's webhook at all.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

# Bigger request heads are refused (431); httptools itself has no limit. h11's default is 16 KiB.
MAX_HEAD_BYTES = 64 * 1024
# File descriptors the service needs besides client connections: the database pool (SQLite keeps 3
# per connection), calls to targets, Prometheus and Alertmanager, log files. An idle server holds ~20.
RESERVED_FDS = 128


def fd_limit_too_low(max_connections: int) -> int | None:
    """This process's open-file limit if it leaves fewer than RESERVED_FDS beside `max_connections`, else None."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= max_connections + RESERVED_FDS:
        return None
    return soft


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout: float  # from connecting, or from a request's first byte, until its whole head is in
    body_timeout: float  # longest pause between two pieces of a request body


def _response(status: str, text: str, *, retry_after: int | None = None) -> bytes:
    """A whole response that also ends the connection, for when no application answers."""
    body = text.encode()
    retry = f"retry-after: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
        f"{retry}connection: close\r\n\r\n"
    )
    return head.encode() + body


TOO_MANY_CONNECTIONS = _response("503 Service Unavailable", "too many connections, retry later", retry_after=1)
BODY_TIMED_OUT = _response("408 Request Timeout", "the request body stalled")
HEAD_TOO_LARGE = _response("431 Request Header Fields Too Large", "request head over 64 KiB")


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the connection limits; one subclass per server (`protocol_for`).

    At the cap, a new connection evicts the one whose client owes a request head or body and has
    been quiet longest (a slow client, or an idle keep-alive one); only when the server itself is
    busy answering every connection is the new one answered 503. So slow clients that fill the cap
    cannot keep out a client that sends its request at once, as Alertmanager does.
    """

    limits: ClassVar[ConnectionLimits]
    count_closed: ClassVar[Callable[[str], None]]  # called with the reason whenever the server ends a connection
    # Connections whose client owes bytes (a request head or body), least recently heard from first.
    owing: ClassVar[dict[LimitedHttpProtocol, None]]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._awaiting_head = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None  # set while reading a request body
        self._heard_at = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_quietest():
            self._end("refused", TOO_MANY_CONNECTIONS)
            return
        self._await_head()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._heard_at = self.loop.time()
        if self in self.owing:  # heard from: to the back of the eviction queue
            del self.owing[self]
            self.owing[self] = None
        if self._awaiting_head:
            self._head_bytes += len(data)
            if self._head_timer is None:  # the first bytes of a request on a kept-alive connection
                self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)
        super().data_received(data)
        if self._awaiting_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._end("head_too_large", HEAD_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._cancel_head_timer()
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._check_body)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # The whole request is in: the server owes the answer now, so this connection is not evicted.
        self.owing.pop(self, None)
        self._cancel_body_timer()
        super().on_message_complete()
        if self.cycle.response_complete and not self.transport.is_closing():  # answered before the body was in
            self._await_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle until the next request, unless a pipelined one started or this one's body is still coming
        # (then on_message_complete starts the wait). uvicorn's keep-alive timer ends an idle connection;
        # the header timeout starts with the next request's first byte.
        if not self.transport.is_closing() and self.cycle.response_complete and self._body_timer is None:
            self._await_head()

    def _await_head(self) -> None:
        self._awaiting_head = True
        self._head_bytes = 0
        self.owing.pop(self, None)
        self.owing[self] = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        self._end("header_timeout", None)  # no answer: there is no request to answer

    def _check_body(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            # The server is not reading (the application has not asked for more yet): not the client's pause.
            self._heard_at = now
        stalled = now - self._heard_at
        if stalled < self.limits.body_timeout:
            self._body_timer = self.loop.call_later(self.limits.body_timeout - stalled, self._check_body)
            return
        # The application waiting for the body sees a disconnect; the client gets 408 if nothing was answered yet.
        self._end("body_timeout", None if self.cycle.response_started else BODY_TIMED_OUT)

    def _evict_quietest(self) -> bool:
        victim = next(iter(self.owing), None)
        if victim is None:
            return False
        reading_body = victim._body_timer is not None and not victim.cycle.response_started
        victim._end("evicted", TOO_MANY_CONNECTIONS if reading_body else None)
        return True

    def _end(self, reason: str, response: bytes | None) -> None:
        self._forget()
        if self.transport.is_closing():  # already ending (uvicorn's own 400, keep-alive timeout, shutdown)
            return
        type(self).count_closed(reason)  # a staticmethod (protocol_for): no self
        if response is not None:
            self.transport.write(response)
        self.transport.close()

    def _forget(self) -> None:
        self._awaiting_head = False
        self.owing.pop(self, None)
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def protocol_for(
    limits: ConnectionLimits, count_closed: Callable[[str], None] = lambda _reason: None
) -> type[LimitedHttpProtocol]:
    """The protocol class to give uvicorn (`http=`), holding these limits and its own eviction queue."""
    attributes = {"limits": limits, "count_closed": staticmethod(count_closed), "owing": {}}
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), attributes)
