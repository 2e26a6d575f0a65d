"""Console output of a training run: one line above the progress bar, from the chief only."""

from __future__ import annotations

import sys

import jax
from tqdm import tqdm


def say(message: str) -> None:
    """Print `message` above the progress bar, on the chief process only (flushed)."""
    if jax.process_index() == 0:
        tqdm.write(message, file=sys.stdout)
        sys.stdout.flush()
