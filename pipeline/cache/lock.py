"""The cache's single-writer lock file: who holds it, stale-lock detection and takeover."""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path

from pipeline.core.errors import CacheError
from pipeline.core.fsio import pid_alive, proc_start


def lock_path(store: Path) -> Path:
    return store.with_name(store.name + ".lock")


class CacheLock:
    """``<store>.lock`` created with O_CREAT|O_EXCL holding ``{"pid", "host", "since", "start"}``.

    Re-entrant for the object holding it. A lock whose pid is dead on this host
    (or was reused by another process) is stale and taken over with a warning;
    a live one (or one from another host) raises CacheError.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._depth = 0
        self._mine: dict | None = None

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale(self, info: dict | None) -> bool:
        if info is None:
            return False
        if not info:  # unparsable: a writer died between create and write, or is writing now
            try:
                return time.time() - self.path.stat().st_mtime > 5
            except FileNotFoundError:
                return False
        return info.get("host") == socket.gethostname() and not pid_alive(int(info["pid"]), info.get("start"))

    def _locked_error(self, info: dict) -> CacheError:
        return CacheError(f"cache is locked by pid {info.get('pid', '?')} on {info.get('host', '?')} "
                          f"since {info.get('since', '?')}", path=self.path.with_suffix(""),
                          hint=f"wait for that run to finish; if that process is gone, remove {self.path}")

    def check_not_held(self) -> None:
        info = self.holder()
        if info is not None and not self._stale(info) and self._depth == 0:
            raise self._locked_error(info)

    def acquire(self) -> None:
        if self._depth:
            self._depth += 1
            return
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": proc_start(os.getpid()),
              "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.holder()
                if not self._stale(info):
                    if info == {}:
                        time.sleep(0.2)
                        continue
                    if info is None:
                        continue
                    raise self._locked_error(info)
                self._take_over(info)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
                f.flush()
                os.fsync(f.fileno())
            self._mine, self._depth = me, 1
            return
        raise CacheError("could not take the cache lock (it keeps changing hands)", path=self.path,
                         hint="another writer is starting; try again")

    def _take_over(self, info: dict) -> None:
        """Remove a stale lock; serialised by flock on the folder so two takers cannot race."""
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if self.holder() == info:
                self.path.unlink(missing_ok=True)
                who = f"pid {info.get('pid')} on {info.get('host')}" if info else "an unreadable lock"
                warnings.warn(f"{self.path}: taking over a stale cache lock of {who} (process is gone)",
                              stacklevel=4)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def release(self) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            if self.holder() == self._mine:
                self.path.unlink(missing_ok=True)
            self._mine = None

    def __enter__(self) -> "CacheLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
