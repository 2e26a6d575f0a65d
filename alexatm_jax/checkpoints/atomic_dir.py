"""Write a directory so that it appears complete or not at all.

Locally, everything is written into a hidden sibling `.<name>.partial` and renamed onto `<name>`
at the end; a crash leaves only the hidden directory, which the next write removes.

A bucket (gs://...) has no directory rename: the directory is written into a local temporary
directory, then uploaded file by file with the `commit_files` (the marker that says the
directory is complete, e.g. `alexatm_checkpoint.json`) last. A crash before the end leaves
objects without that marker, which readers do not take for a complete directory.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence

from etils import epath

from alexatm_jax.storage import as_path, copy_file, is_remote


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> pathlib.Path | epath.Path:
    """The output path (an epath.Path for a URL), after refusing a non-empty existing directory
    (unless `overwrite`).

    Raises FileExistsError naming the path and the flag that allows replacing it.
    """
    path = as_path(path) if is_remote(path) else pathlib.Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose another output path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{path} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    return path


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, overwrite: bool = False, commit_files: Sequence[str] = ()
) -> Iterator[pathlib.Path]:
    """Yield a fresh temporary (local) directory; on success it replaces `path` in one rename,
    or for a URL is uploaded there with the top-level `commit_files` last (module docstring).

    On an exception the temporary directory is removed and `path` is left as it was.
    """
    final = check_output_dir(path, overwrite)
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="alexatm-upload-") as staging:
            yield pathlib.Path(staging)
            _upload(pathlib.Path(staging), final, commit_files)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if final.exists():
        previous = final.with_name(f".{final.name}.previous")
        if previous.exists():
            shutil.rmtree(previous)
        os.rename(final, previous)
        os.rename(partial, final)
        shutil.rmtree(previous)
    else:
        os.rename(partial, final)


def _upload(staging: pathlib.Path, target: epath.Path, commit_files: Sequence[str]) -> None:
    """Replace the remote directory `target` by the files of `staging`, `commit_files` last."""
    if target.exists():
        target.rmtree()
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    last = [staging / name for name in commit_files]
    for file in [f for f in files if f not in last] + [f for f in last if f in files]:
        destination = target / file.relative_to(staging).as_posix()
        destination.parent.mkdir(parents=True, exist_ok=True)
        copy_file(file, destination)
