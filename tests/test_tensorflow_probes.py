"""TensorFlow's GPU probe lines are filtered from every command's first `import tensorflow`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from alexatm_jax import tensorflow_probes

PROBE = "I0000 00:00:17.4 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n"


def test_the_capture_writes_back_everything_but_the_probe_lines(capfd):
    captured = tensorflow_probes._FilteredStderr()
    os.write(2, ("a real warning\n" + PROBE + "another line\n").encode())
    captured.restore()
    assert capfd.readouterr().err == "a real warning\nanother line\n"


# etils' epath looks for TensorFlow (importlib.util.find_spec) before any command imports it:
# the filter must still catch the import that follows.
IMPORT = (
    "import alexatm_jax, importlib.util; importlib.util.find_spec('tensorflow'); "
    "from alexatm_jax.storage import as_path; as_path('.').is_dir(); "
    "import tensorflow; print(tensorflow.__version__)"
)


def _import_tensorflow(**env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT],
        env={k: v for k, v in os.environ.items() if k != tensorflow_probes.ENV} | env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_a_command_that_imports_tensorflow_prints_no_probe_line():
    shown = _import_tensorflow(**{tensorflow_probes.ENV: "show"})
    if not any(tensorflow_probes.is_probe_line(line) for line in shown.splitlines()):
        pytest.skip("TensorFlow prints no probe line on this machine (a GPU is present?)")
    filtered = _import_tensorflow()
    assert not any(tensorflow_probes.is_probe_line(line) for line in filtered.splitlines()), (
        filtered
    )
