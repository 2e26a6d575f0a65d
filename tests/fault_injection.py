"""Ways to break things on purpose: flipped bits, full and read-only disks, failing writes.

A real small tmpfs (full disk) or a read-only mount needs root and a kernel that allows mounts;
where that is not possible the helpers say so (`None`) and the tests fall back to a simulated
ENOSPC or to directory permissions.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import subprocess
from collections.abc import Iterator


def flip(path: str, offset: int | None = None, mask: int = 0x01, count: int = 1) -> int:
    """XOR `count` bytes of `path` at `offset` (default: the middle) with `mask`; returns the
    offset used."""
    size = os.path.getsize(path)
    offset = size // 2 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ mask for b in data))
    return offset


def largest_data_file(step_dir: str) -> str:
    """The largest OCDBT data file of a training checkpoint's state (where the arrays are)."""
    files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
    return max(files, key=os.path.getsize)


def _mount(*args: str) -> bool:
    try:
        done = subprocess.run(["mount", *args], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _umount(path: str) -> None:
    subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(path: str, size_bytes: int) -> Iterator[bool]:
    """Mount a tmpfs of `size_bytes` at `path` (created); yields False when mounting is not
    possible here (not root, no permission), True while mounted."""
    os.makedirs(path, exist_ok=True)
    mounted = os.geteuid() == 0 and _mount("-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", path)
    try:
        yield mounted
    finally:
        if mounted:
            _umount(path)


def resize_tmpfs(path: str, size_bytes: int) -> bool:
    """Change the size of the tmpfs mounted at `path`; False if that failed."""
    return _mount("-o", f"remount,size={size_bytes}", path)


def used_bytes(path: str) -> int:
    """Bytes in use on the file system holding `path`."""
    stat = os.statvfs(path)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


@contextlib.contextmanager
def read_only_directory(path: str) -> Iterator[bool]:
    """Make `path` (created, empty) unwritable: a read-only tmpfs as root, else mode 0555.
    Yields False when neither works (root without mount permission ignores modes)."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() == 0:
        mounted = _mount("-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", path)
        try:
            yield mounted and not os.access(path, os.W_OK)
        finally:
            if mounted:
                _umount(path)
        return
    os.chmod(path, 0o555)
    try:
        yield not os.access(path, os.W_OK)
    finally:
        os.chmod(path, 0o755)


def simulate_full_disk_in_json_writes(monkeypatch) -> None:
    """Make Orbax's JSON item writes (a checkpoint's progress and digests, written in the
    background of an async save) fail with ENOSPC, as a full disk would."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    async def full(self, item, directory):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full)


def copy_tree(source: str, target: str) -> str:
    """A copy of a directory tree (to corrupt without touching the original); returns target."""
    shutil.copytree(source, target)
    return target
