"""Retry policy: which errors are retried, how many tries, and how the waits grow."""

from __future__ import annotations

import errno
import socket
from datetime import timedelta

import httpx
import pytest
import requests

from controlplane.actions.base import ActionError, BlastRadiusExceeded
from controlplane.resilience import CircuitOpenError, is_retriable, retrying
from controlplane.rules.schema import RetryPolicy

REQUEST = httpx.Request("POST", "http://sample:8000/graphs/x/disable")


def _http_status(status: int) -> httpx.HTTPStatusError:
    response = httpx.Response(status, request=REQUEST)
    return httpx.HTTPStatusError(f"{status}", request=REQUEST, response=response)


def _requests_status(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status}", response=response)


@pytest.mark.parametrize(
    "exc",
    [
        ActionError("upstream 503", retriable=True),
        TimeoutError(),
        ConnectionRefusedError(),
        ConnectionResetError(),
        BrokenPipeError(),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        httpx.ConnectError("refused", request=REQUEST),
        httpx.ReadTimeout("slow", request=REQUEST),
        httpx.RemoteProtocolError("peer closed", request=REQUEST),
        _http_status(500),
        _http_status(503),
        _http_status(429),
        requests.ConnectionError(),
        requests.Timeout(),
        requests.exceptions.ConnectTimeout(),
        _requests_status(502),
    ],
    ids=repr,
)
def test_retriable(exc: BaseException) -> None:
    assert is_retriable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad graph name"),
        KeyError("graph"),
        ActionError("graph not found"),
        BlastRadiusExceeded("would disable 4 graphs", retriable=False),
        _http_status(400),
        _http_status(404),
        _http_status(409),
        _requests_status(403),
        requests.HTTPError("no response attached"),
        httpx.UnsupportedProtocol("ftp://", request=REQUEST),
        FileNotFoundError(errno.ENOENT, "No such file"),
        PermissionError(errno.EACCES, "denied"),
        CircuitOpenError("graph.disable:http://sample:8000", 12.0),
        KeyboardInterrupt(),
    ],
    ids=repr,
)
def test_not_retriable(exc: BaseException) -> None:
    assert not is_retriable(exc)


class Flaky:
    """Raises the given errors in turn, then returns 'done'."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def _no_jitter(**overrides: timedelta | int) -> RetryPolicy:
    return RetryPolicy(jitter=timedelta(0), **overrides)  # type: ignore[arg-type]


def test_succeeds_after_retriable_errors() -> None:
    sleeps: list[float] = []
    flaky = Flaky(TimeoutError(), ConnectionResetError())
    assert retrying(RetryPolicy(), sleep=sleeps.append)(flaky) == "done"
    assert flaky.calls == 3
    assert len(sleeps) == 2


def test_gives_up_after_attempts_and_reraises_the_last_error() -> None:
    last = TimeoutError("third")
    flaky = Flaky(TimeoutError("first"), TimeoutError("second"), last, TimeoutError("never reached"))
    with pytest.raises(TimeoutError) as caught:
        retrying(RetryPolicy(attempts=3), sleep=lambda _: None)(flaky)
    assert caught.value is last  # the error itself, not tenacity's RetryError
    assert flaky.calls == 3


def test_non_retriable_error_is_raised_at_once() -> None:
    sleeps: list[float] = []
    flaky = Flaky(TimeoutError(), ActionError("graph not found"))
    with pytest.raises(ActionError, match="graph not found"):
        retrying(RetryPolicy(attempts=5), sleep=sleeps.append)(flaky)
    assert flaky.calls == 2
    assert len(sleeps) == 1


def test_caller_chooses_what_is_retriable() -> None:
    flaky = Flaky(ValueError("eventually consistent"))
    policy = RetryPolicy(attempts=2)
    assert retrying(policy, retriable=lambda e: isinstance(e, ValueError), sleep=lambda _: None)(flaky) == "done"


def test_waits_grow_exponentially_up_to_max() -> None:
    sleeps: list[float] = []
    policy = _no_jitter(attempts=10, initial=timedelta(seconds=1), max=timedelta(seconds=60))
    with pytest.raises(TimeoutError):
        retrying(policy, sleep=sleeps.append)(Flaky(*[TimeoutError()] * 10))
    assert sleeps == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_stays_within_its_bound() -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(
        attempts=6, initial=timedelta(seconds=1), max=timedelta(seconds=10), jitter=timedelta(seconds=1)
    )
    with pytest.raises(TimeoutError):
        retrying(policy, sleep=sleeps.append)(Flaky(*[TimeoutError()] * 6))
    for n, wait in enumerate(sleeps):
        assert min(2**n, 10) <= wait <= min(2**n + 1, 10)


def test_seed_001_policy_is_the_default() -> None:
    """Seed 001: 3 attempts, 1 s base, 60 s cap, exponential base 2, jitter."""
    sleeps: list[float] = []
    with pytest.raises(ConnectionError):
        retrying(RetryPolicy(), sleep=sleeps.append)(Flaky(*[ConnectionError()] * 3))
    assert len(sleeps) == 2
    assert 1 <= sleeps[0] <= 2 and 2 <= sleeps[1] <= 3


def test_on_retry_gets_attempt_numbers_and_errors() -> None:
    seen: list[tuple[int, str]] = []
    errors = [TimeoutError("a"), ConnectionResetError("b"), TimeoutError("c")]
    with pytest.raises(TimeoutError, match="c"):
        retrying(
            _no_jitter(attempts=3),
            sleep=lambda _: None,
            on_retry=lambda attempt, exc: seen.append((attempt, str(exc))),
        )(Flaky(*errors))
    assert seen == [(1, "a"), (2, "b")]  # not called after the last try: there is no retry


def test_iteration_form_for_inline_blocks() -> None:
    sleeps: list[float] = []
    flaky = Flaky(httpx.ConnectError("refused", request=REQUEST))
    for attempt in retrying(_no_jitter(), sleep=sleeps.append):
        with attempt:
            result = flaky()
    assert result == "done"
    assert sleeps == [1]
