"""Training SentencePiece unigram vocabularies with the pieces the pretraining objectives need."""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from tasks import corpus_files, demo_files
from tasks.vocabularies import CLM_PIECE, DOC_PIECE, reserved_tag_piece


def user_defined_pieces(num_reserved_tags: int) -> list[str]:
    """`[CLM]`, `[DOC]`, then the reserved tags, in the id order they get after pad/eos/unk."""
    return [CLM_PIECE, DOC_PIECE] + [reserved_tag_piece(i) for i in range(num_reserved_tags)]


def train_vocabulary(
    sentences: Iterable[str],
    out_path: str,
    vocab_size: int,
    num_reserved_tags: int = 1000,
    *,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 10_000_000,
    num_threads: int | None = None,
) -> str:
    """Trains a unigram SentencePiece model on `sentences` and writes it to `out_path`.

    Ids: pad=0, eos=1, unk=2, no bos, then `[CLM]`, `[DOC]`, `[TAG_0]`..; byte fallback on, digits
    split. `vocab_size` counts every piece (specials, tags and the 256 byte pieces included).
    At most `input_sentence_size` sentences, sampled at random, are used. `num_threads` defaults
    to every CPU; use 1 for a model that does not depend on the machine. Writes `out_path` and
    the matching `.vocab` text file next to it; returns the model path.
    """
    if not out_path.endswith(".model"):
        raise ValueError(f"the output path must end with .model, got {out_path!r}")
    fixed = 3 + 256 + 2 + num_reserved_tags
    if vocab_size <= fixed:
        raise ValueError(
            f"vocab_size {vocab_size} leaves no room for learned pieces: {fixed} ids go to "
            f"pad/eos/unk, 256 byte pieces, [CLM], [DOC] and {num_reserved_tags} reserved tags"
        )
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        prefix = os.path.join(tmp, "spm")
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_prefix=prefix,
                model_type="unigram",
                vocab_size=vocab_size,
                pad_id=0,
                eos_id=1,
                unk_id=2,
                bos_id=-1,
                byte_fallback=True,
                split_digits=True,
                user_defined_symbols=user_defined_pieces(num_reserved_tags),
                character_coverage=character_coverage,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                num_threads=num_threads or os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as e:
            message = str(e)
            if "Vocabulary size too" in message:
                raise ValueError(
                    f"SentencePiece cannot learn {vocab_size} pieces from this corpus ({message}); "
                    "use a smaller --vocab_size or more text"
                ) from e
            raise
        # Atomic replace: concurrent trainers of the same demo vocabulary never see half a file.
        os.replace(prefix + ".vocab", out_path[: -len(".model")] + ".vocab")
        os.replace(prefix + ".model", out_path)
    logging.info("wrote SentencePiece model %s (%d pieces)", out_path, vocab_size)
    return out_path


def corpus_sentences(data_dir: str, max_sentences_per_language: int | None = None) -> Iterator[str]:
    """Yields the non-blank lines of every document under DATA_DIR/<lang>/ (Python-side reader).

    At most `max_sentences_per_language` lines per language, so that a huge language does not
    crowd out the rest; unknown language directories and undecodable bytes are skipped.
    """
    for language, paths in corpus_files.language_files(data_dir).items():
        count = 0
        for text in corpus_files.iter_documents(paths):
            for line in text.splitlines():
                line = line.strip()
                if not line:
                    continue
                yield line
                count += 1
                if max_sentences_per_language and count >= max_sentences_per_language:
                    break
            else:
                continue
            break
        logging.info("vocabulary corpus: %d lines of %s", count, language)


def train_demo_vocabulary() -> str:
    """Trains the demo vocabulary on data/sample unless it is already there; returns its path.

    4000 pieces and 8 reserved tags (tasks/demo_files.py), trained on one thread, stored under
    artifacts/vocab/ with a fingerprint of data/sample and of the settings in its name (a changed
    corpus gets a new model). `vocabulary_path()` finds it there. Two trainings are not
    byte-identical (measured on data/sample; the cause is inside SentencePiece's trainer).
    """
    path = demo_files.demo_vocabulary_file()
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # One trainer at a time (parallel test workers, a demo beside the tests): the others wait
    # and then use its file, so that every process tokenizes with the same pieces.
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(path):
            logging.info("training the demo vocabulary on %s", demo_files.DEMO_DATA_DIR)
            train_vocabulary(
                corpus_sentences(demo_files.DEMO_DATA_DIR),
                path,
                demo_files.DEMO_VOCAB_SIZE,
                demo_files.DEMO_RESERVED_TAGS,
                num_threads=1,
            )
    return path
