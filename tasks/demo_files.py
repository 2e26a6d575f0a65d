"""Where the repository's demo corpus (data/sample) and the demo vocabulary trained on it live.

Only paths and a fingerprint: nothing here trains, registers or writes anything.
"""

from __future__ import annotations

import hashlib
import os

from tasks import corpus_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_DATA_DIR = os.path.join(REPO_ROOT, "data", "sample")
DEMO_VOCAB_DIR = os.path.join(REPO_ROOT, "artifacts", "vocab")
DEMO_VOCAB_SIZE = 4000  # pieces, specials and byte pieces included
DEMO_RESERVED_TAGS = 8


def _demo_fingerprint(data_dir: str) -> str:
    """A short hash of the demo training settings and of every file (name and bytes) under
    `data_dir`, naming the demo vocabulary so that any change asks for a new one."""
    digest = hashlib.sha256(
        f"unigram size={DEMO_VOCAB_SIZE} tags={DEMO_RESERVED_TAGS} threads=1".encode()
    )
    for _, paths in sorted(corpus_files.language_files(data_dir).items()):
        for path in paths:
            digest.update(os.path.relpath(path, data_dir).encode())
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()[:10]


def demo_vocabulary_file() -> str:
    """Path of the demo vocabulary for the current data/sample and demo settings.

    The file exists once `alexatm-vocab train --demo` (or `train_demo_vocabulary()`, or
    `alexatm-demo`) has trained it. Raises FileNotFoundError when data/sample is missing.
    """
    if not os.path.isdir(DEMO_DATA_DIR):
        raise FileNotFoundError(
            f"the demo corpus {DEMO_DATA_DIR} is missing (installed without the repository?)"
        )
    name = f"demo_{DEMO_VOCAB_SIZE}_{_demo_fingerprint(DEMO_DATA_DIR)}.model"
    return os.path.join(DEMO_VOCAB_DIR, name)
