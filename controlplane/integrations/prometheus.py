"""Owns talking to Prometheus: instant PromQL queries via prometheus-api-client, errors sorted into retriable or not.

Sample values arrive as strings ("1.5", "NaN", "+Inf") and become floats. A NaN sample (0/0, a
ratio over no traffic) is kept by `query_vector` and counts as no data in `query_scalar`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

Reduce = Literal["single", "sum", "max", "min"]

# Prometheus answers 503 for a query that timed out or was cancelled, 400/422 for a query that
# will never work; 408/429 are proxies asking us to come back later.
_RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_API_ERROR = re.compile(r"^HTTP Status Code (\d+) \((.*)\)$", re.S)


class PrometheusError(Exception):
    """A query failed. `retriable`: Prometheus was unreachable, slow or overloaded; otherwise the query is wrong."""

    def __init__(self, message: str, *, retriable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.status = status


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector (or the scalar of a scalar query, with no labels)."""

    labels: dict[str, str]
    value: float


class PrometheusClient:
    """Instant queries against one Prometheus. Thread-safe enough to share: requests' Session pools connections.

    `retries` is kept low on purpose: the playbook step's retry policy and the metric-rule schedule
    retry with their own backoff, and the library's default (3 retries, 1 s backoff factor) would
    hold a worker for seconds on a Prometheus that is down.
    """

    def __init__(self, url: str, *, timeout: float = 10.0, retries: int = 1) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        retry = Retry(
            total=retries,
            backoff_factor=0.2,
            status_forcelist=sorted(_RETRIABLE_STATUS),
            # Hand back the last 5xx instead of raising RetryError, so its error text reaches us.
            raise_on_status=False,
        )
        self._conn = PrometheusConnect(url=self.url, disable_ssl=True, retry=retry, timeout=timeout)

    def query_vector(self, promql: str) -> list[Sample]:
        """Run an instant query; a scalar result comes back as one sample without labels."""
        result = self._query(promql)
        if not result:
            return []
        if not isinstance(result[0], dict):  # resultType scalar or string: [timestamp, "value"]
            return [Sample({}, _to_float(result[1], promql))]
        samples = []
        for series in result:
            if "value" not in series:
                raise PrometheusError(
                    f"query {promql!r} returns a range vector; an instant vector is needed (wrap it in rate())",
                    retriable=False,
                )
            samples.append(Sample(dict(series.get("metric", {})), _to_float(series["value"][1], promql)))
        return samples

    def query_scalar(self, promql: str, *, reduce: Reduce = "single") -> float | None:
        """One number from an instant query; None when it returns no data (no series, or only NaN).

        `reduce` says what to do with several series: "single" refuses them (the query should
        aggregate), "sum"/"max"/"min" combine them.
        """
        values = [s.value for s in self.query_vector(promql) if not math.isnan(s.value)]
        if not values:
            return None
        if reduce == "single":
            if len(values) > 1:
                raise PrometheusError(
                    f"query {promql!r} returned {len(values)} series where one was expected: aggregate it "
                    "(sum, max, ...) or choose a reduction",
                    retriable=False,
                )
            return values[0]
        reductions: dict[str, Callable[[list[float]], float]] = {"sum": math.fsum, "max": max, "min": min}
        return reductions[reduce](values)

    def _query(self, promql: str) -> list[Any]:
        try:
            result: list[Any] = self._conn.custom_query(promql)
            return result
        except PrometheusApiClientException as exc:
            error = _api_error(exc)
        except requests.exceptions.JSONDecodeError as exc:
            error = PrometheusError(f"Prometheus at {self.url} answered with no JSON: {exc}", retriable=True)
        except requests.Timeout:
            error = PrometheusError(f"Prometheus at {self.url} did not answer within {self.timeout:g}s", retriable=True)
        except requests.ConnectionError as exc:
            error = PrometheusError(f"cannot reach Prometheus at {self.url}: {_root_cause(exc)}", retriable=True)
        except requests.RequestException as exc:
            error = PrometheusError(f"query to Prometheus at {self.url} failed: {exc}", retriable=True)
        except (KeyError, TypeError) as exc:  # a 200 without data.result: not a Prometheus API answer
            error = PrometheusError(f"Prometheus at {self.url} answered without a result: {exc!r}", retriable=True)
        raise error


def _to_float(raw: object, promql: str) -> float:
    try:
        return float(raw)  # type: ignore[arg-type]  # Prometheus writes NaN, +Inf, -Inf as float() reads them
    except (TypeError, ValueError):
        raise PrometheusError(f"query {promql!r} returned a non-numeric value {raw!r}", retriable=False) from None


def _api_error(exc: PrometheusApiClientException) -> PrometheusError:
    """The library only gives us "HTTP Status Code 400 (b'<body>')"; recover the status and Prometheus' own error."""
    match = _API_ERROR.match(str(exc))
    if match is None:
        return PrometheusError(f"Prometheus query failed: {exc}", retriable=True)
    status = int(match[1])
    detail = match[2]
    try:
        body = ast.literal_eval(detail)
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    except (ValueError, SyntaxError):
        text = detail
    try:
        doc = json.loads(text)
        detail = f"{doc.get('errorType', 'error')}: {doc['error']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        detail = text.strip()[:500]
    retriable = status in _RETRIABLE_STATUS
    return PrometheusError(f"Prometheus answered {status}: {detail}", retriable=retriable, status=status)


def _root_cause(exc: BaseException) -> str:
    # requests wraps urllib3's MaxRetryError wrapping the socket error; the innermost says what happened.
    while exc.__context__ is not None or exc.__cause__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc) or type(exc).__name__
