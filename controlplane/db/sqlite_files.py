"""Owns what an operator must know about where SQLite keeps its files: the database, its WAL and its -shm.

SQLite in WAL mode maps the -shm file into memory and writes it through the mapping. Where the
kernel cannot back such a write (a full btrfs, whose copy-on-write needs a free block for it; a
network filesystem; a -shm truncated by another program) the process dies of SIGBUS inside
SQLite's C code: it cannot be caught, only reported (`controlplane serve` enables faulthandler).
On ext4, xfs and tmpfs a full disk is an error SQLite reports instead (it writes each new -shm
page with write() before mapping it), and the service answers 503 until there is space again.
WAL without shared memory (locking_mode=EXCLUSIVE) would avoid the mapping but lock out every
other connection, the service's own pool and `sqlite3 .backup` alike, so the service says at
start-up where the files are and warns when their filesystem is one of those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

# Filesystems where a write through the -shm mapping can fail with SIGBUS: btrfs when full (see
# tests/integration/test_sqlite_shm.py); network and FUSE ones, where SQLite's WAL is not supported.
_RISKY_FILESYSTEMS = {"btrfs", "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "fuse"}


@dataclass(frozen=True)
class SqliteFiles:
    database: Path
    wal: Path
    shm: Path
    filesystem: str | None  # the type of the filesystem holding them (from /proc/self/mounts), when known
    free_bytes: int | None

    @property
    def risk(self) -> str | None:
        """Why this filesystem can kill the process with SIGBUS, or None."""
        if self.filesystem is None or self.filesystem.split(".")[0] not in _RISKY_FILESYSTEMS:
            return None
        return (
            f"SQLite writes {self.shm.name} through a memory mapping, and on {self.filesystem} such a write can "
            "fail (a full disk, a lost network share) with SIGBUS, which kills the process: keep the database "
            "on a local ext4 or xfs disk with free space"
        )


def sqlite_files(database_url: str) -> SqliteFiles | None:
    """Where a SQLite database URL keeps its files; None for other databases and in-memory SQLite."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    database = Path(url.database).resolve()
    try:
        stat = os.statvfs(database.parent)
        free: int | None = stat.f_bavail * stat.f_frsize
    except OSError:
        free = None
    return SqliteFiles(
        database=database,
        wal=database.with_name(database.name + "-wal"),
        shm=database.with_name(database.name + "-shm"),
        filesystem=_filesystem_of(database.parent),
        free_bytes=free,
    )


def _filesystem_of(directory: Path) -> str | None:
    """The type of the mount holding `directory`: the longest mount point above it in /proc/self/mounts."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:  # not Linux
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mountpoint = Path(fields[1].replace("\\040", " "))
        if (directory == mountpoint or mountpoint in directory.parents) and (
            best is None or len(mountpoint.parts) >= best[0]
        ):
            best = (len(mountpoint.parts), fields[2])
    return best[1] if best else None
