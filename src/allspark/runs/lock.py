"""The run folder's lock: one training at a time in a run directory, released however its process ends."""
from __future__ import annotations

import fcntl
import os
import socket
import time
import weakref
from pathlib import Path
from typing import IO

from allspark.errors import ConfigError
from allspark.runs.folder import RunFolder

_HELD_LOCKS: weakref.WeakSet = weakref.WeakSet()


def _close_inherited_locks() -> None:
    """In a forked child (a DataLoader worker), close the inherited lock files: an flock lasts while any
    process holds its file open, and orphaned workers of a killed run would otherwise keep it for seconds."""
    for handle in list(_HELD_LOCKS):
        handle.close()


os.register_at_fork(after_in_child=_close_inherited_locks)


def lock_run_dir(run_dir: str | Path) -> IO[str]:
    """Hold an exclusive lock on `run_dir` until the returned file is closed or this process ends, however
    it ends (an flock on run_dir/.lock, so a killed run leaves no stale lock); if another process holds it,
    raise ConfigError naming that process (pid, host, start time)."""
    path = RunFolder(run_dir).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"run directory {run_dir} is in use by {holder}; wait for that run to end, "
                          "or use another run_dir") from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _HELD_LOCKS.add(handle)
    return handle
