"""Slow clients cannot hold the service: a flood of half-open connections, more than the server has
file descriptors, cannot stop Alertmanager's webhook, and the server closes them after its timeouts.

The real service runs as a subprocess (`python -m controlplane serve`, SQLite), in the flood test
with RLIMIT_NOFILE lowered to 256. Slow clients are plain loopback sockets that send part of a
request and then nothing: no bytes at all, a request head cut off mid-header, or a complete head
whose body stops early.
"""

from __future__ import annotations

import contextlib
import errno
import json
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TOKEN, WEBHOOK
from tests.integration.serverproc import (
    LOOPBACK,
    ServerProcess,
    deliver_like_alertmanager,
    fingerprint_counts,
    run_id,
    unique_notification,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

FD_LIMIT = 256
FLOOD = 400  # half-open connections: more than the server has file descriptors
TIMEOUT_SECONDS = 2.0  # the server's header and body timeouts in this test
MAX_CONNECTIONS = 64
WEBHOOK_WITHIN = 15.0  # seconds the webhook may take to succeed, retries included
CLOSED_WITHIN = TIMEOUT_SECONDS + 15.0  # seconds until the server has closed every half-open connection

HEAD = f"POST {WEBHOOK} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
# What each kind of slow client sends before it goes quiet.
PARTS = {
    "nothing": b"",
    "half a request head": HEAD.encode() + b"X-Slow: ",
    "a head and half a body": (
        HEAD + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 10000\r\n\r\n" + '{"receiver": "'
    ).encode(),
}


@contextlib.contextmanager
def half_open_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections to the server, each having sent one of PARTS and then nothing more."""
    kinds = list(PARTS.values())
    sockets: list[socket.socket] = []
    try:
        for i in range(count):
            sock = socket.create_connection((LOOPBACK, port), timeout=5)
            sockets.append(sock)
            with contextlib.suppress(OSError):  # the server may already have refused it
                sock.sendall(kinds[i % len(kinds)])
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def wait_closed_by_server(sockets: list[socket.socket], within: float) -> list[socket.socket]:
    """Read every socket until the server closes it (EOF or reset); returns those still open at the deadline."""
    deadline = time.monotonic() + within
    open_ = set(sockets)
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while open_ and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(timeout=min(left, 0.5)):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if sock.recv(65536):
                        continue  # an answer (503, 408) before the close
                except BlockingIOError:
                    continue
                except OSError as exc:
                    assert exc.errno in (errno.ECONNRESET, errno.EPIPE), exc
                selector.unregister(sock)
                open_.discard(sock)
    return [sock for sock in sockets if sock in open_]


def connections_closed(base_url: str) -> dict[str, float]:
    """controlplane_http_connections_closed_total by reason, from /metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=5.0).text
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "controlplane_http_connections_closed"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_half_open_flood_cannot_stop_the_webhook(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path}/controlplane.db"
    fingerprint, payload = unique_notification(run_id(), 0)
    with ServerProcess(
        database_url,
        tmp_path / "server.log",
        fd_limit=FD_LIMIT,
        request_header_timeout_seconds=str(TIMEOUT_SECONDS),
        request_body_timeout_seconds=str(TIMEOUT_SECONDS),
        max_connections=str(MAX_CONNECTIONS),
    ) as server:
        server.wait_ready()
        with half_open_connections(server.port, FLOOD) as flood:
            flooded_at = time.monotonic()
            status, attempts = deliver_like_alertmanager(server.url, payload, within=WEBHOOK_WITHIN)
            took = time.monotonic() - flooded_at
            assert status == 200, (
                f"webhook not accepted within {WEBHOOK_WITHIN:g}s of a flood of {FLOOD} half-open connections "
                f"(attempts: {attempts[:5]}...{attempts[-5:]}, {len(attempts)} in all):\n{server.log_tail()}"
            )
            # At the cap a new connection evicts the quietest slow client: Alertmanager need not even retry.
            assert attempts == ["200"], f"the webhook needed retries during the flood: {attempts}"
            still_open = wait_closed_by_server(flood, within=CLOSED_WITHIN)
            assert not still_open, (
                f"{len(still_open)} of {FLOOD} half-open connections still open {CLOSED_WITHIN:g}s after the flood"
            )
        assert httpx.get(f"{server.url}/ready", timeout=5.0).status_code == 200, server.log_tail()
        closed = connections_closed(server.url)
        errors = [line for line in server.log_tail(10**7).splitlines() if '"level": "error"' in line]
    assert not errors, f"{len(errors)} errors logged, the first: {errors[0][:2000]}"
    # What the operator sees: every connection the server ended, by reason.
    assert closed.get("evicted", 0) >= FLOOD - MAX_CONNECTIONS, closed
    assert closed.get("header_timeout", 0) > 0, closed
    assert closed.get("body_timeout", 0) > 0, closed
    assert fingerprint_counts(database_url, [fingerprint]) == {fingerprint: 1}
    print(f"webhook accepted {took:.2f}s into the flood after {len(attempts)} attempt(s): {attempts}")


# ---------------------------------------------------------------------------------------------
# One slow client at a time, on a server of their own


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("slow-clients")
    with ServerProcess(
        f"sqlite:///{directory}/controlplane.db",
        directory / "server.log",
        request_header_timeout_seconds=str(TIMEOUT_SECONDS),
        request_body_timeout_seconds=str(TIMEOUT_SECONDS),
    ) as server:
        server.wait_ready()
        yield server


def answer_and_close(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how many seconds that took."""
    started = time.monotonic()
    sock.settimeout(within)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {within:g}s (sent {answer[:100]!r})") from None
    except ConnectionResetError:
        pass
    return answer, time.monotonic() - started


def webhook_request(body: bytes) -> bytes:
    head = HEAD + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode()


def test_a_head_that_never_ends_is_closed_after_the_header_timeout(server: ServerProcess) -> None:
    with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
        sock.sendall(PARTS["half a request head"])
        answer, took = answer_and_close(sock, within=CLOSED_WITHIN)
    assert answer == b""
    assert took >= TIMEOUT_SECONDS - 0.5, f"closed after {took:.2f}s, before the {TIMEOUT_SECONDS:g}s timeout"


def test_a_stalled_body_is_answered_408(server: ServerProcess) -> None:
    with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
        sock.sendall(PARTS["a head and half a body"])
        answer, took = answer_and_close(sock, within=CLOSED_WITHIN)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert took >= TIMEOUT_SECONDS - 0.5, f"answered after {took:.2f}s, before the {TIMEOUT_SECONDS:g}s timeout"


def test_a_slow_but_steady_body_is_served(server: ServerProcess) -> None:
    """The body timeout is about pauses, not the whole body: pieces 0.6 timeouts apart, 2.4 timeouts in all, pass."""
    _, payload = unique_notification(run_id(), 0)
    body = json.dumps(payload).encode()
    pieces = [body[i * len(body) // 4 : (i + 1) * len(body) // 4] for i in range(4)]
    with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
        sock.sendall(webhook_request(body))
        for piece in pieces:
            time.sleep(TIMEOUT_SECONDS * 0.6)  # the slow client's pace
            sock.sendall(piece)
        answer, _ = answer_and_close(sock, within=15.0)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def test_an_oversized_request_head_is_answered_431(server: ServerProcess) -> None:
    with socket.create_connection((LOOPBACK, server.port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the server may close before it has read all of it
            sock.sendall(HEAD.encode() + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        answer, _ = answer_and_close(sock, within=15.0)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:300]


def test_a_cap_the_file_descriptor_limit_cannot_hold_is_warned_about(tmp_path: Path) -> None:
    with ServerProcess(
        f"sqlite:///{tmp_path}/controlplane.db", tmp_path / "server.log", fd_limit=FD_LIMIT, max_connections="200"
    ) as server:
        server.wait_ready()
        log = server.log_tail()
    assert '"serve.fd_limit_low"' in log and '"fd_limit": 256' in log, log
