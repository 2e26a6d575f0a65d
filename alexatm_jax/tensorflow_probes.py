"""Keep TensorFlow's start-up probe lines off the terminal of every alexatm-jax command.

Loading TensorFlow's shared library logs "cudart_stub.cc:31] Could not find cuda drivers on
your machine" (and a oneDNN notice) from C++ static initialisers, before absl's logging is set
up: such lines go straight to file descriptor 2, whatever TF_CPP_MIN_LOG_LEVEL says. Its first
device discovery then logs "failed call to cuInit" where a CUDA library but no GPU is present.
On a CPU machine they announce nothing but a GPU that is not there.

`install()` (run on `import alexatm_jax`) puts a finder on `sys.meta_path` that wraps the first
`import tensorflow`, wherever it happens (SeqIO, TFDS, gfile), with a capture of descriptor 2,
and runs the device discovery inside it; afterwards the captured output is written back, less
the known probe lines. Nothing is imported
early: processes that never touch TensorFlow never load it. `ALEXATM_JAX_TF_PROBES=show` turns
the filter off.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

ENV = "ALEXATM_JAX_TF_PROBES"
PROBE_LINE_MARKERS = (
    "Could not find cuda drivers on your machine",
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "failed call to cuInit",
)


def is_probe_line(line: str) -> bool:
    """True for one of TensorFlow's start-up probe lines (see PROBE_LINE_MARKERS)."""
    return any(marker in line for marker in PROBE_LINE_MARKERS)


def without_probe_lines(text: str) -> str:
    """`text` less its probe lines (line endings kept)."""
    return "".join(line for line in text.splitlines(keepends=True) if not is_probe_line(line))


class _FilteredStderr:
    """Descriptor 2 redirected to a temporary file until `restore()`, which writes back what
    was captured, less the probe lines."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._capture = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._capture.fileno(), 2)

    def restore(self) -> None:
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._capture.seek(0)
        text = self._capture.read().decode("utf-8", errors="replace")
        self._capture.close()
        kept = without_probe_lines(text)
        if kept:
            sys.stderr.write(kept)
            sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Executes TensorFlow's package module with descriptor 2 filtered."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        _uninstall()  # TensorFlow loads once; later imports find it in sys.modules
        captured = _FilteredStderr()
        try:
            self._inner.exec_module(module)
            # The CUDA probe of the first op's device discovery, done now, inside the capture.
            module.config.list_physical_devices("GPU")
        finally:
            captured.restore()


class _TensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` through the path finder and gives it the quiet loader. It stays in
    place until TensorFlow is loaded: a mere `importlib.util.find_spec("tensorflow")` (etils'
    epath probes for it so) must not use it up."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader)
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TensorFlowFinder)]


def install() -> None:
    """Filter the probe lines of the process's first `import tensorflow` (no-op when TensorFlow
    is already imported, the finder is in place, or ALEXATM_JAX_TF_PROBES=show)."""
    if os.environ.get(ENV, "").lower() == "show" or "tensorflow" in sys.modules:
        return
    if any(isinstance(finder, _TensorFlowFinder) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _TensorFlowFinder())
