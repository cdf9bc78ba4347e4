"""Writing files so that a kill or a full disk never leaves half of one: the one atomic write of the package, and
the probe that a folder takes files before long work that ends by writing there."""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

from allspark.errors import DiskFullError


def atomic_write(path: str | Path, write) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place,
    so a run killed mid-write never leaves a truncated checkpoint behind. The file gets the
    mode of any new file (0666 less the umask), whatever mode `write` creates its file with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the OS applies the umask
    mode = tmp.stat().st_mode
    try:
        write(str(tmp))
        os.chmod(tmp, mode)  # safetensors writes a fresh file of mode 0600 over ours
        os.replace(tmp, path)
    except Exception as err:
        full = _disk_full(err, path.parent)
        tmp.unlink(missing_ok=True)
        if full:
            free = shutil.disk_usage(path.parent).free
            raise DiskFullError(f"{path}: no space left on its device ({free / 2**20:.1f} MiB free in {path.parent}); "
                                f"{'the previous file is kept, ' if path.exists() else ''}free some space and run "
                                "again") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace `path` by a file holding `text`, in one step (atomic_write)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def ensure_writable(folder: str | Path) -> None:
    """Prove, before work that ends by writing into `folder`, that it can be made and written: its nearest existing
    ancestor is a folder that takes a file (probed, then removed). Creates nothing; raises OSError naming the
    folder at fault (not a hidden temporary file at the end)."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
    probe = existing / f".allspark-write-test.{secrets.token_hex(4)}"
    try:
        probe.touch()
    except OSError as err:  # the folder exists: a missing file (procfs says so) is not the reason to give
        reason = "" if err.errno == errno.ENOENT else f" ({err.strerror.lower()})"
        raise OSError(err.errno, f"folder is not writable{reason}", str(existing)) from None
    probe.unlink()


def _disk_full(err: Exception, folder: Path) -> bool:
    """Whether a failed write ran out of space: ENOSPC, or a writer that hides it (safetensors names os error 28,
    torch.save only an 'unexpected pos') while under a MiB is left."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return "os error 28" in str(err) or shutil.disk_usage(folder).free < 2**20
