"""Owns the retry policy of a step: which errors are worth another try, and the backoff between tries.

The backoff is tenacity's `wait_exponential_jitter`: `initial * 2**(n-1) + uniform(0, jitter)`
seconds before try n+1, capped at `max`. Seed 001's policy (3 tries, 1 s base, 60 s cap,
base 2, jitter) is RetryPolicy's default.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable

import httpx
import requests
import tenacity

from controlplane.errors import ActionError
from controlplane.rules.schema import RetryPolicy

# OSErrors without a subclass of their own that still mean "the network, not the request".
_NETWORK_ERRNOS = frozenset(
    {
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.ENETRESET,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ECONNABORTED,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)


def _retriable_status(status: int) -> bool:
    # 5xx may pass; 429 asks us to come back later. Every other 4xx will fail the same way again.
    return status >= 500 or status == 429


def is_retriable(exc: BaseException) -> bool:
    """True for errors another try may fix: timeouts, connection errors, 5xx and 429, retriable ActionErrors."""
    if isinstance(exc, ActionError):
        return exc.retriable
    if isinstance(exc, httpx.HTTPStatusError):
        return _retriable_status(exc.response.status_code)
    if isinstance(exc, requests.HTTPError):
        return exc.response is not None and _retriable_status(exc.response.status_code)
    # A request httpx refused to send (a bad URL, CR/LF in a header): it would fail the same way
    # again, and says nothing about the target.
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.InvalidURL):
        return False
    if isinstance(
        exc,
        httpx.TransportError
        | requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | TimeoutError
        | ConnectionError
        | socket.gaierror,
    ):
        return True
    # requests' exceptions are OSErrors too (errno None), so they end here unless caught above.
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def retrying(
    policy: RetryPolicy,
    *,
    retriable: Callable[[BaseException], bool] = is_retriable,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> tenacity.Retrying:
    """A fresh tenacity.Retrying for one step: `retrying(policy)(fn, *args)` or `for attempt in retrying(policy):`.

    Gives up after `policy.attempts` tries or at the first error `retriable` refuses, and raises
    that error itself (not tenacity's RetryError). `on_retry(attempt, error)` runs before each
    wait, with the number of the try that just failed (1-based): the place to count and audit.
    """

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(state.attempt_number, error)

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        # `multiplier` is the first wait; tenacity >= 9.2 deprecates the older name `initial` for it.
        wait=tenacity.wait_exponential_jitter(
            multiplier=policy.initial.total_seconds(),
            max=policy.max.total_seconds(),
            exp_base=2,
            jitter=policy.jitter.total_seconds(),
        ),
        retry=tenacity.retry_if_exception(retriable),
        reraise=True,
        sleep=sleep,
        before_sleep=before_sleep if on_retry is not None else None,
    )
