"""The error contract of the alexatm-* commands (docs/exit_codes.md).

    0  done
    1  the command ran and failed: I/O errors (disk full, permissions), corrupt or truncated
       data and checkpoints, training stopped by its non-finite-step limits, ...
    2  the command was refused before doing any work: bad arguments or configuration (gin
       errors, missing or wrong-kind paths, a MODEL_DIR that cannot be written, malformed input
       lines named by file and line number)

Either way the command prints one line `PROG: error: ...` on stderr naming what failed and
where; `--log_level DEBUG` adds the traceback. No exception escapes as a bare traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from collections.abc import Callable

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
GIN_CALL_CONTEXT = "\n  In call to configurable"


class UsageError(Exception):
    """A problem with the command's arguments or configuration, found before any work (exit 2)."""


def add_log_level_argument(parser: argparse.ArgumentParser) -> None:
    """--log_level (Python logging level; DEBUG also prints tracebacks of errors)."""
    parser.add_argument(
        "--log_level",
        default="WARNING",
        choices=LOG_LEVELS,
        help="Python logging level (default WARNING); DEBUG also shows the traceback of an error",
    )


def configure_logging(level: str) -> None:
    """Log to stderr at `level` as `LEVEL logger: message`."""
    logging.basicConfig(level=getattr(logging, level), format="%(levelname)s %(name)s: %(message)s")


def describe(error: BaseException) -> str:
    """One line naming what failed: for OS errors the reason and the path (a full disk says so),
    otherwise the message (after the exception type when the message alone might not say what
    it is). gin's "In call to configurable" context is dropped."""
    text = " ".join(str(error).split(GIN_CALL_CONTEXT)[0].split())
    if isinstance(error, OSError):
        # gin re-raises errors from configurables as proxies without errno/strerror set.
        found = re.search(r"\[Errno (\d+)\]", text)
        code = error.errno or (int(found.group(1)) if found else None)
        if error.strerror:
            where = " -> ".join(str(p) for p in (error.filename, error.filename2) if p)
            text = f"{error.strerror}: {where}" if where else error.strerror
        return f"disk full: {text}" if code == errno.ENOSPC else text
    if isinstance(error, (UsageError, ValueError, RuntimeError)) or type(
        error
    ).__module__.startswith(("alexatm_jax", "tasks")):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def report(prog: str, error: BaseException, code: int) -> int:
    """Print `prog: error: ...` (and the traceback at DEBUG level); returns `code`."""
    logging.getLogger(prog).debug("traceback of the error", exc_info=error)
    message = (
        str(error).split(GIN_CALL_CONTEXT)[0].strip() if code == EXIT_USAGE else describe(error)
    )
    hint = (
        ""
        if logging.getLogger().isEnabledFor(logging.DEBUG) or code == EXIT_USAGE
        else " (--log_level DEBUG shows the traceback)"
    )
    print(f"{prog}: error: {message}{hint}", file=sys.stderr)
    return code


def run_command(
    prog: str, body: Callable[[], int], usage_errors: tuple[type[BaseException], ...] = ()
) -> int:
    """Run `body` under the contract: its return value, or 2 for UsageError and
    `usage_errors`, 1 for any other exception, 130 for Ctrl-C; SystemExit passes through."""
    try:
        return body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, *usage_errors) as error:
        return report(prog, error, EXIT_USAGE)
    except Exception as error:  # noqa: BLE001 - the contract: one line, never a traceback
        return report(prog, error, EXIT_FAILED)
