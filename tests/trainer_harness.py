"""Run `alexatm-train` with every batch fetch delayed, so a test can signal the job mid-run.

    python tests/trainer_harness.py SECONDS_PER_STEP [alexatm-train arguments...]

Only the timing changes (a sleep before each global batch is read); the training itself is the
real CLI's.
"""

import sys
import time

from alexatm_jax.cli import train as train_cli
from alexatm_jax.data.global_batches import GlobalBatches


def slow_down_batches(seconds: float) -> None:
    """Make every GlobalBatches.__next__ sleep `seconds` first."""
    original = GlobalBatches.__next__

    def delayed(self):
        time.sleep(seconds)
        return original(self)

    GlobalBatches.__next__ = delayed


if __name__ == "__main__":
    slow_down_batches(float(sys.argv[1]))
    sys.exit(train_cli.main(sys.argv[2:]))
