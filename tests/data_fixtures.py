"""Synthetic multilingual corpora and a small trained vocabulary shared by the data-pipeline tests.

The vocabulary is trained once per test process (cached) into a temporary directory.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import shutil
import tempfile

# Syllables per language, in the language's script, so each language tokenizes differently.
_SYLLABLES = {
    "en": "ka lo mi ne ra tu se po li ve da ri no ma te su ho".split(),
    "fr": "le ra qu ou en et mé ré té on ai eu ch ss ve po bi".split(),
    "de": "sch en ge ei ch st au er be lo ni ka ma tu ri so ze".split(),
    "hi": "क का कि मा ना रा ता से ले हो है में की और पर दे".split(),
    "ja": "か き く け こ さ し す た ち つ な に の は ひ ま".split(),
}


def sentence(rng: random.Random, language: str) -> str:
    """One sentence of 6-14 pseudo-words; word separators follow the script (none for ja)."""
    syllables = _SYLLABLES[language]
    words = [
        "".join(rng.choice(syllables) for _ in range(rng.randint(1, 3)))
        for _ in range(rng.randint(6, 14))
    ]
    if language == "ja":
        return "".join(words) + "。"
    return " ".join(words).capitalize() + "."


def document(rng: random.Random, language: str, sentences: tuple[int, int] = (3, 9)) -> str:
    """A document of several sentences over one to three lines."""
    lines = [
        " ".join(sentence(rng, language) for _ in range(rng.randint(1, 3)))
        for _ in range(rng.randint(*sentences) // 3 + 1)
    ]
    return "\n".join(lines)


def write_corpus(
    root: str, languages=("en", "fr", "hi"), documents: int = 60, files: int = 2, seed: int = 0
) -> str:
    """Writes DATA_DIR/<lang>/part<i>.txt (blank-line separated documents); returns DATA_DIR."""
    rng = random.Random(seed)
    for language in languages:
        os.makedirs(os.path.join(root, language), exist_ok=True)
        docs = [document(rng, language) for _ in range(documents)]
        for i in range(files):
            with open(os.path.join(root, language, f"part{i}.txt"), "w", encoding="utf-8") as f:
                f.write("\n\n".join(docs[i::files]) + "\n")
    return root


@functools.cache
def vocab_path() -> str:
    """A 600-piece test vocabulary with 4 reserved tags, trained on a synthetic corpus."""
    from tasks.vocab_training import corpus_sentences, train_vocabulary

    root = tempfile.mkdtemp(prefix="alexatm_test_vocab_")
    atexit.register(shutil.rmtree, root, True)
    data_dir = write_corpus(os.path.join(root, "corpus"), languages=tuple(_SYLLABLES), documents=80)
    return train_vocabulary(
        corpus_sentences(data_dir), os.path.join(root, "test.model"), 600, 4, num_threads=1
    )
