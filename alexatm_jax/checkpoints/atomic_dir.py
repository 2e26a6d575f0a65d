"""Write a directory so that it appears complete or not at all.

Everything is written into a hidden sibling `.<name>.partial` and renamed onto `<name>` at the
end; a crash leaves only the hidden directory, which the next write removes.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
from collections.abc import Iterator


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> pathlib.Path:
    """The output path, after refusing a non-empty existing directory (unless `overwrite`).

    Raises FileExistsError naming the path and the flag that allows replacing it.
    """
    path = pathlib.Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory; choose another output path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{path} exists and is not empty; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """Yield a fresh temporary directory; on success it replaces `path` in one rename.

    On an exception the temporary directory is removed and `path` is left as it was.
    """
    final = check_output_dir(path, overwrite)
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
