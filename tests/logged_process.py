"""A test's subprocess of a real binary whose output goes to a log file it can show on failure."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import IO


class LoggedProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes]

    def log_tail(self, lines: int = 30) -> str:
        if not self._log.closed:
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop_process(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within 10 s; closes the log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
