"""Console logins under attack, against the real service (`python -m controlplane serve` on loopback).

Many threads post logins at once, as a guessing attack would; the users' hashes have argon2-cffi's
default parameters (64 MiB, about 0.1 s a check here), as `controlplane hash-password` makes them,
so the memory and the timing are the real ones. Runs on SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from controlplane.app import create_app
from controlplane.db.engine import make_engine
from controlplane.db.tables import audit_t
from tests.conftest import make_settings
from tests.helpers import PASSWORD, SESSION_SECRET, csrf
from tests.integration.serverproc import ServerProcess

pytestmark = pytest.mark.slow

MAX_FAILURES = 5
MEMORY_LIMIT_KIB = 512 * 1024  # deploy/kubernetes/base/deployment.yaml: limits.memory 512Mi


@pytest.fixture(scope="module")
def real_hash() -> str:
    """A hash with argon2-cffi's defaults, as `controlplane hash-password` prints (64 MiB per check)."""
    return PasswordHasher().hash(PASSWORD)


def users_json(real_hash: str, names: list[str]) -> str:
    return json.dumps([{"name": name, "role": "viewer", "password_hash": real_hash} for name in names])


def concurrent_logins(url: str, logins: list[tuple[str, str]], timeout: float = 120.0) -> list[httpx.Response]:
    """Each (user, password) from a thread of its own with its own session; the POSTs start together."""
    barrier = threading.Barrier(len(logins))
    answers: list[httpx.Response | BaseException | None] = [None] * len(logins)

    def attempt(index: int, name: str, password: str) -> None:
        try:
            with httpx.Client(base_url=url, timeout=timeout) as client:
                token = csrf(client, "/login")
                barrier.wait(30)
                answers[index] = client.post(
                    "/login", data={"csrf_token": token, "username": name, "password": password}
                )
        except BaseException as exc:
            barrier.abort()
            answers[index] = exc

    threads = [threading.Thread(target=attempt, args=(i, *login), daemon=True) for i, login in enumerate(logins)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 30
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "login threads still running"
    failed = [a for a in answers if not isinstance(a, httpx.Response)]
    assert not failed, failed[:3]
    return answers  # type: ignore[return-value]


def failed_login_audits(database_url: str) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            query = select(func.count()).where(audit_t.c.action == "console.login_failed")
            return int(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def tally(answers: list[httpx.Response]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for answer in answers:
        counts[answer.status_code] = counts.get(answer.status_code, 0) + 1
    return counts


@pytest.mark.parametrize("attackers", [20, 40])
def test_concurrent_wrong_passwords_check_at_most_the_allowed_number(
    database_url: str, tmp_path: Path, real_hash: str, attackers: int
) -> None:
    with ServerProcess(
        database_url,
        tmp_path / "server.log",
        console_users=users_json(real_hash, ["alice"]),
        session_secret=SESSION_SECRET,
        console_login_max_failures=str(MAX_FAILURES),
    ) as server:
        server.wait_ready()
        answers = concurrent_logins(server.url, [("alice", f"guess-{i}") for i in range(attackers)])
    counts = tally(answers)
    checked = failed_login_audits(database_url)  # every checked wrong password is audited
    print(f"\n{attackers} concurrent wrong passwords: answers {counts}, passwords checked {checked}")
    assert set(counts) <= {401, 429, 503}, counts
    assert checked <= MAX_FAILURES, f"{checked} wrong passwords were checked, {MAX_FAILURES} allowed: {counts}"
    assert counts.get(401, 0) == checked
    assert counts.get(429, 0) >= attackers - MAX_FAILURES, counts
    assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status_code in (429, 503))


def test_concurrent_logins_stay_under_the_memory_limit(database_url: str, tmp_path: Path, real_hash: str) -> None:
    """40 users log in at once (right passwords, so no throttle helps): each argon2 check takes 64 MiB."""
    names = [f"user{i:02d}" for i in range(40)]
    with ServerProcess(
        database_url, tmp_path / "server.log", console_users=users_json(real_hash, names), session_secret=SESSION_SECRET
    ) as server:
        server.wait_ready()
        answers = concurrent_logins(server.url, [(name, PASSWORD) for name in names])
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    counts = tally(answers)
    print(f"\n40 concurrent logins: answers {counts}, server peak RSS {peak_kib / 1024:.0f} MiB")
    assert set(counts) <= {303, 503}, counts  # logged in, or "busy: try again" (never a 500 or a lost request)
    assert counts.get(303, 0) >= 2, counts
    assert all(int(a.headers["Retry-After"]) > 0 for a in answers if a.status_code == 503)
    assert peak_kib < MEMORY_LIMIT_KIB, f"peak RSS {peak_kib / 1024:.0f} MiB over the 512 MiB limit: {counts}"


def test_an_unknown_user_costs_as_long_as_a_wrong_password(database_url: str, real_hash: str) -> None:
    """Telling the two apart by time would tell an attacker which user names exist."""
    settings = make_settings(
        database_url,
        console_users=[{"name": "alice", "role": "viewer", "password_hash": real_hash}],
        session_secret=SESSION_SECRET,
        console_login_max_failures=100,
    )
    with TestClient(create_app(settings)) as client:
        token = csrf(client, "/login")

        def timed(name: str) -> Callable[[], float]:
            def post() -> float:
                started = time.perf_counter()
                answer = client.post("/login", data={"csrf_token": token, "username": name, "password": "wrong"})
                assert answer.status_code == 401, answer.text
                return time.perf_counter() - started

            return post

        known, unknown = timed("alice"), timed("mallory")
        known(), unknown()  # warm-up
        pairs = [(known(), unknown()) for _ in range(6)]  # interleaved: load on the machine hits both alike
    wrong_password = statistics.median(k for k, _ in pairs)
    wrong_name = statistics.median(u for _, u in pairs)
    ratio = wrong_name / wrong_password
    print(f"\nwrong password {wrong_password:.3f} s, unknown user {wrong_name:.3f} s, ratio {ratio:.2f}")
    assert 0.5 <= ratio <= 2.0, f"unknown user {wrong_name:.3f} s vs wrong password {wrong_password:.3f} s"


@pytest.mark.parametrize(
    ("trusted", "secure"),
    [("127.0.0.1", True), ("10.255.0.1", False)],
    ids=["from-a-trusted-proxy", "from-an-untrusted-address"],
)
def test_x_forwarded_proto_makes_the_cookie_secure_only_from_a_trusted_proxy(
    tmp_path: Path, real_hash: str, trusted: str, secure: bool
) -> None:
    with ServerProcess(
        f"sqlite:///{tmp_path}/controlplane.db",
        tmp_path / "server.log",
        console_users=users_json(real_hash, ["alice"]),
        session_secret=SESSION_SECRET,
        forwarded_allow_ips=trusted,
    ) as server:
        server.wait_ready()
        plain = httpx.get(f"{server.url}/login")
        forwarded = httpx.get(f"{server.url}/login", headers={"X-Forwarded-Proto": "https"})
    assert "; secure" not in plain.headers["set-cookie"].lower()
    assert ("; secure" in forwarded.headers["set-cookie"].lower()) is secure, forwarded.headers["set-cookie"]
