"""`--gin.KEY=VALUE` command-line bindings, shared by the gin-driven CLIs (imports nothing heavy)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

PREFIX = "--gin."


def gin_bindings(
    parser: argparse.ArgumentParser, leftover: Sequence[str], example: str
) -> list[str]:
    """The `KEY=VALUE` bodies of the `--gin.KEY=VALUE` arguments that argparse left over.

    Any other leftover argument is a usage error (exit 2) that shows `example`, e.g.
    `--gin.TRAIN_STEPS=20`.
    """
    bindings = []
    for arg in leftover:
        if not arg.startswith(PREFIX) or "=" not in arg:
            parser.error(
                f"unrecognised argument {arg!r}: gin bindings are written "
                f"--gin.KEY=VALUE (e.g. {example})"
            )
        bindings.append(arg[len(PREFIX) :])
    return bindings
