"""One run per folder at a time: an exclusive ``fcntl.flock`` on ``RUN/.lock``, which holds the holder's PID.

The kernel releases a flock when its holder exits, however it exits (SIGKILL and out-of-memory kills
included), so a lock left by a killed run is simply taken: the file still names the dead PID, which is
logged as taken over. A second run on a held folder refuses with the holder's PID, or with ``wait``
polls until the holder is done. The holder removes the file when it lets go; a waiter that wakes up
holding a file that was removed meanwhile (not the one now at the path) tries again, so two holders
can never exist.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from pipeline.common.errors import PipelineError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


def _holder(path: Path) -> str:
    """The PID written in a lock file (the holder writes it right after locking; a few tries cover that gap)."""
    for _ in range(20):
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text:
            return text.split()[0]
        time.sleep(0.01)
    return "unknown"


class RunLock:
    """``with RunLock(run_dir, wait=False):`` — the folder (created if missing) is this process's until the block ends.

    Folders it had to create are removed again on release when nothing else was written in them, so a
    run refused before its first output leaves nothing behind."""

    def __init__(self, run_dir: Path | str, wait: bool = False, poll_seconds: float = 0.5):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.wait = wait
        self.poll_seconds = poll_seconds
        self.fd: int | None = None
        self.created: list[Path] = []
        #: the PID named in a lock file left by a run that died holding it (None: the folder was free)
        self.taken_over_from: str | None = None

    def _make_folder(self) -> None:
        missing = []
        folder = self.run_dir
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
                self.created.append(folder)
            except FileExistsError:
                pass

    def _try_once(self) -> str:
        """"held" (now ours), "busy" (another process holds it) or "again" (its holder just removed it)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return "busy"
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed this file as it let go; lock the one at the path now
            os.close(fd)
            return "again"
        self.fd = fd
        return "held"

    def acquire(self) -> "RunLock":
        self._make_folder()
        waiting_logged = False
        while (state := self._try_once()) != "held":
            if state == "again":
                continue
            holder = _holder(self.path)
            if not self.wait:
                self._remove_created_folders()
                raise PipelineError(
                    f"run folder {self.run_dir} is in use by another pipeline run (PID {holder})",
                    "wait for that run to finish, or pass --wait to start when it has; to run beside it, "
                    "give this run another folder with --output-dir DIR")
            if not waiting_logged:
                log.info("run folder %s is in use by PID %s: waiting for it to finish (--wait)", self.run_dir, holder)
                waiting_logged = True
            time.sleep(self.poll_seconds)
        previous = os.read(self.fd, 64).decode(errors="replace").strip()
        if previous:
            self.taken_over_from = previous.split()[0]
            log.warning("took over the lock of %s, left by PID %s, which is no longer running", self.run_dir,
                        self.taken_over_from)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        os.fsync(self.fd)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: a waiter then sees a removed file and retries
        os.close(self.fd)
        self.fd = None
        self._remove_created_folders()

    def _remove_created_folders(self) -> None:
        for folder in reversed(self.created):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        self.created = []

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
