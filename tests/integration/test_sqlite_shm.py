"""A SQLite `-shm` file that cannot be backed never kills the service silently.

SQLite in WAL mode maps its `-shm` file into memory and writes it through the mapping. On btrfs
(copy-on-write) such a write needs a free block; on a full disk the kernel cannot give one and
sends SIGBUS, which kills the process in the middle of SQLite's C code. On tmpfs (as on ext4)
SQLite allocates each -shm page with write() first, so a full disk is an error it reports. The
real service runs as a subprocess on a real filesystem of each kind, mounted for the test (root;
btrfs as a loop-mounted image, which needs `mkfs.btrfs`), which the test fills.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import WEBHOOK, require, require_binary
from tests.integration.serverproc import AUTH, ServerProcess, deliver_like_alertmanager, run_id, unique_notification

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

OUTCOME_WITHIN = 8.0  # seconds after the disk filled: dead by then, or still serving


@pytest.fixture(params=["tmpfs", "btrfs"])
def small_filesystem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A directory on a small filesystem of its own: a 16 MiB tmpfs, or a loop-mounted 128 MiB btrfs image."""
    require(os.geteuid() == 0, "mounting a filesystem needs root")
    mountpoint = tmp_path / request.param
    mountpoint.mkdir()
    image = tmp_path / "btrfs.img"
    if request.param == "tmpfs":
        mount = ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mountpoint)]
    else:
        mkfs = require_binary("mkfs.btrfs")
        with image.open("wb") as f:
            f.truncate(128 * 1024 * 1024)
        subprocess.run([mkfs, "-q", str(image)], check=True, capture_output=True, timeout=60)
        mount = ["mount", "-o", "loop", str(image), str(mountpoint)]
    mounted = subprocess.run(mount, capture_output=True, text=True)
    require(mounted.returncode == 0, f"cannot mount a {request.param}: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        image.unlink(missing_ok=True)


def fill(directory: Path) -> None:
    """Write a file until the filesystem is full, and write everything back to the disk."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\1" * 65536)
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
    os.sync()


def test_a_full_disk_under_the_shm_file_is_never_a_silent_death(small_filesystem: Path, tmp_path: Path) -> None:
    """Either the service keeps serving (503 while full, 200 once there is space) or it dies saying why."""
    database = small_filesystem / "controlplane.db"
    run = run_id()
    with ServerProcess(f"sqlite:///{database}", tmp_path / "server.log", log_level="info") as server:
        server.wait_ready()
        status, _ = deliver_like_alertmanager(server.url, unique_notification(run, 0)[1], within=10)
        assert status == 200
        # Written back, the -shm pages are clean again: the next write through the mapping needs a new block.
        os.sync()
        fill(small_filesystem)
        # The leader renews its lease every 2 s, so the service writes on its own; webhooks write more.
        answers: dict[str, int] = {}
        deadline = time.monotonic() + OUTCOME_WITHIN
        while server.proc.poll() is None and time.monotonic() < deadline:
            payload = unique_notification(run, 1 + sum(answers.values()))[1]
            try:
                outcome = str(httpx.post(server.url + WEBHOOK, json=payload, headers=AUTH, timeout=5).status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            answers[outcome] = answers.get(outcome, 0) + 1
            time.sleep(0.1)  # Alertmanager's pace, roughly
        returncode = server.proc.poll()
        if returncode is None:
            (small_filesystem / "filler").unlink()
            recovered, attempts = deliver_like_alertmanager(server.url, unique_notification(run, 10**6)[1], within=15)
        log = server.log_tail(10**7)
    if returncode is None:
        # Still serving: what it could not store was answered 503 (Alertmanager retries), the reason logged;
        # with space again, the next delivery is stored.
        assert set(answers) <= {"200", "503"} and "503" in answers, answers
        assert "database or disk is full" in log, log[-3000:]
        assert recovered == 200, f"not storing again once the disk had space: {attempts}"
    else:
        # Dead: by SIGBUS, with Python's traceback of the fatal signal on stderr, never without a word.
        assert returncode == -signal.SIGBUS, f"exit status {returncode}:\n{log[-3000:]}"
        assert "Fatal Python error: Bus error" in log, f"killed by SIGBUS with no word of why:\n{log[-3000:]}"
        fatal = log[log.index("Fatal Python error: Bus error") :]
        assert re.search(r'File ".*/controlplane/.*", line \d+ in ', fatal), fatal[:3000]  # ... and where it was
    # Where the files live is said at start-up, with their filesystem, so the operator knows what filled up.
    assert f'"shm": "{database}-shm"' in log and f'"filesystem": "{small_filesystem.name}"' in log, log[:3000]
    print(f"{small_filesystem.name}: exit status {returncode}, answers while full: {answers}")
