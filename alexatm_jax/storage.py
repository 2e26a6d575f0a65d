"""Paths that may be local or remote (`gs://bucket/dir`, any `scheme://...` URL).

Local paths are made absolute (after `~` expansion); URLs are kept verbatim, since
`os.path.abspath("gs://b/x")` would turn them into a local directory `./gs:/b/x`. File operations
go through `etils.epath.Path`, which reads and writes `gs://` with TensorFlow's gfile and local
paths with `os`. gfile is the one client for our files because the SeqIO/tf.data input pipeline,
TensorBoard and Orbax's directory handling use it anyway; `alexatm_jax.gcs_access` checks a
gs:// path (credentials, bucket, permission) before a command touches it.
"""

from __future__ import annotations

import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """True when `path` is a URL (`scheme://...`, e.g. gs://bucket/dir); False for a local path."""
    scheme, separator, _ = str(path).partition("://")
    return bool(separator) and scheme.isidentifier()


def absolute(path: str | os.PathLike) -> str:
    """`path` as a string: URLs unchanged, local paths `~`-expanded and absolute."""
    if is_remote(path):
        return str(path)
    return os.path.abspath(os.path.expanduser(str(path)))


def as_path(path: str | os.PathLike) -> epath.Path:
    """An `epath.Path` for `path` (local or remote; local paths made absolute)."""
    return epath.Path(absolute(path))


def copy_file(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy the file `source` to `target` (either may be remote), replacing `target`."""
    as_path(source).copy(as_path(target), overwrite=True)
