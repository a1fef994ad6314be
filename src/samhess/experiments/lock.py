"""One writer per directory: an exclusive lock held while samhess writes a run or a comparison.

``with run_directory_lock(path, "samhess run"):`` holds an advisory ``flock`` on
``path/.samhess.lock`` for the block. A second process asking for it gets a
:class:`~samhess.errors.DirectoryLockedError` naming the directory and the holder (command,
process id, host and start time, which the holder writes into the lock file). The kernel drops
the lock when its holder exits, however it exits, so a lock file left behind by a killed process
(``kill -9``) never blocks the next run: the file is there, the lock is not. The temporary
files of atomic writes such a process was making are removed when the next holder takes the
lock (:func:`samhess.experiments.runfiles.remove_interrupted_writes`).

The lock is reentrant within a process (a run that writes its report locks once), and under
``torchrun`` only rank 0, the one process that writes, takes it. The directory (and any missing
parent) is created when the lock is taken; on release the lock file is removed, and so is every
directory the lock created that is then empty.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from samhess.distributed import on_main_process
from samhess.errors import DirectoryLockedError, RunDirectoryError
from samhess.experiments.runfiles import remove_interrupted_writes

__all__ = ["LOCK_FILE", "run_directory_lock", "hold_directory", "let_go", "DirectoryLock"]

LOCK_FILE = ".samhess.lock"

#: Locks this process holds, by resolved directory, with their nesting depth.
_HELD: dict[Path, tuple["DirectoryLock", int]] = {}


class DirectoryLock:
    """The exclusive lock of one directory (see the module docstring).

    Args:
        directory: the run or comparison directory.
        purpose: what holds it, as the second writer is told (``"samhess run"``).
    """

    def __init__(self, directory: str | Path, purpose: str):
        self.directory = Path(directory)
        self.purpose = purpose
        self.created: list[Path] = []
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def acquire(self) -> None:
        """Take the lock, creating the directory if needed.

        Raises:
            DirectoryLockedError: another process holds it.
            RunDirectoryError: the path names a file.
        """
        if self.directory.exists() and not self.directory.is_dir():
            raise RunDirectoryError(f"--out {str(self.directory)!r} is a file, not a directory")
        self.created = _make_directories(self.directory)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise DirectoryLockedError(
                    f"{self.directory} is in use by {_holder(self.path)}; wait for it to end or "
                    "stop it (one process writes a run directory at a time)") from None
            # The holder before us may have removed the file between our open and our lock;
            # then we locked a file nobody else will open, and must lock the new one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"command": self.purpose, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        self._fd = fd
        # The one writer now: a temporary file here is what a killed writer left half-written.
        remove_interrupted_writes(self.directory, LOCK_FILE)

    def release(self) -> None:
        """Remove the lock file, drop the lock, and remove the directories it created if empty."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        for directory in reversed(self.created):
            with contextlib.suppress(OSError):  # not empty: it holds files, and stays
                directory.rmdir()
        self.created = []


def _make_directories(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; return those created, outermost first."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    directory.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _holder(path: Path) -> str:
    """The holder as its lock file describes it."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return (f"{holder['command']} (process {int(holder['pid'])} on {holder['host']}, "
                f"since {holder['since']})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another samhess process"


def hold_directory(directory: str | Path, purpose: str) -> DirectoryLock:
    """Take ``directory``'s lock until :func:`let_go` (for a holder that outlives a block, such
    as :class:`samhess.Tracker`); reentrant within the process, as :func:`run_directory_lock`.

    Raises:
        DirectoryLockedError: another process writes there; every rank raises it.
    """
    key = Path(os.path.abspath(directory))
    if key in _HELD:
        lock, depth = _HELD[key]
        _HELD[key] = (lock, depth + 1)
        return lock
    lock = DirectoryLock(directory, purpose)
    on_main_process(lock.acquire)  # rank 0 takes it; every rank learns if it could not
    _HELD[key] = (lock, 1)
    return lock


def let_go(lock: DirectoryLock) -> None:
    """Release one :func:`hold_directory` of ``lock``; the last one drops the lock."""
    key = Path(os.path.abspath(lock.directory))
    held, depth = _HELD.get(key, (None, 0))
    if held is not lock:
        return
    if depth > 1:
        _HELD[key] = (lock, depth - 1)
        return
    del _HELD[key]
    lock.release()


@contextlib.contextmanager
def run_directory_lock(directory: str | Path, purpose: str) -> Iterator[DirectoryLock]:
    """Hold ``directory``'s exclusive lock for the block (see the module docstring).

    Args:
        directory: created if it does not exist (and removed again on release if it is then
            empty).
        purpose: the command holding it, for the message a second writer gets.

    Yields:
        The lock (on ranks other than 0 under torchrun, which write nothing, one that holds
        nothing).

    Raises:
        DirectoryLockedError: another process writes there; every rank raises it.
    """
    lock = hold_directory(directory, purpose)
    try:
        yield lock
    finally:
        let_go(lock)
