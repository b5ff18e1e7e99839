"""A store-wide writer lock: one run writes a store at a time; stale locks are taken over explicitly."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass

import fsspec

from pipelines.fsutil import atomic_write_bytes, is_local


class StoreLockedError(RuntimeError):
    """Another run holds the store's lock."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds a lock and since when."""

    host: str
    pid: int
    run_id: str
    acquired_at: float

    @property
    def age_s(self) -> float:
        """Seconds since the lock was taken."""
        return time.time() - self.acquired_at


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    """Lock file `<root>/_lock.json` holding host, pid, run id and time of the writer."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, *, run_id: str | None = None) -> None:
        self.fs = fs
        self.path = path
        self.me = LockInfo(socket.gethostname(), os.getpid(), run_id or uuid.uuid4().hex[:12], time.time())
        self.held = False

    def read(self) -> LockInfo | None:
        """Current holder, or None when the store is unlocked."""
        try:
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            d = json.loads(raw)
            return LockInfo(str(d["host"]), int(d["pid"]), str(d["run_id"]), float(d["acquired_at"]))
        except (ValueError, KeyError, TypeError):
            return LockInfo("?", -1, "unreadable", 0.0)

    def _payload(self) -> bytes:
        return json.dumps(self.me.__dict__).encode()

    def acquire(self, *, take_over: bool = False) -> None:
        """Take the lock; refuse with who holds it unless `take_over` (for a crashed run's stale lock)."""
        if self._try_create():
            self.held = True
            return
        holder = self.read()
        if holder is None:  # released between our attempts
            return self.acquire(take_over=take_over)
        if not take_over:
            raise StoreLockedError(self._refusal(holder))
        atomic_write_bytes(self.fs, self.path, self._payload())
        self.held = True

    def _try_create(self) -> bool:
        if is_local(self.fs):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self._payload())
            return True
        # Object stores have no exclusive create here: check then write (a narrow race; documented).
        if self.fs.exists(self.path):
            return False
        atomic_write_bytes(self.fs, self.path, self._payload())
        return True

    def _refusal(self, holder: LockInfo) -> str:
        here = holder.host == self.me.host
        state = ""
        if here and holder.pid > 0 and not pid_alive(holder.pid):
            state = f" Process {holder.pid} no longer exists on this host: the lock is stale (a crashed run)."
        elif here:
            state = f" Process {holder.pid} is still running on this host."
        return (f"store lock {self.path} is held by host={holder.host} pid={holder.pid} run={holder.run_id} "
                f"for {holder.age_s:.0f}s.{state} Wait for that run to finish, or if it is dead pass "
                "take_over=True to take the lock over.")

    def release(self) -> None:
        """Drop the lock if we still hold it (a take-over by another run is left alone)."""
        if not self.held:
            return
        holder = self.read()
        if holder is not None and holder.run_id == self.me.run_id:
            self.fs.rm_file(self.path)
        self.held = False

    def __enter__(self) -> "StoreLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
