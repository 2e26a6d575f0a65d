"""SentencePiece vocabularies for the pretraining tasks: which one to use (`vocabulary_path`, the
one place that decides) and the special ids read from it.

Our vocabularies follow the SeqIO convention (pad=0, eos=1, unk=2, no bos) and carry the
user-defined pieces `[CLM]`, `[DOC]` and K reserved tag pieces `[TAG_0]`..`[TAG_{K-1}]`. The
released `20b_tokenizer.model` uses other ids; every id is read from the model, never assumed.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import sentencepiece as spm
import seqio
from etils import epath

import gin
from tasks import demo_files

CLM_PIECE = "[CLM]"
DOC_PIECE = "[DOC]"
PAD_PIECE = "[PAD]"  # the released tokenizer's padding piece (it has no SentencePiece pad id)
VOCAB_ENV = "ALEXATM_VOCAB"


def reserved_tag_piece(index: int) -> str:
    """The text of reserved tag piece number `index` (0-based), e.g. `[TAG_0]`."""
    return f"[TAG_{index}]"


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Token ids of the pieces the pipeline needs, read from one SentencePiece model."""

    pad: int
    eos: int
    unk: int
    clm: int
    doc: int
    vocab_size: int
    bos: int | None = None  # the released tokenizer's `<s>`; ours have none
    space: int | None = None  # the `▁` piece, which the release puts before `[CLM]`

    @property
    def release_template(self) -> bool:
        """Whether examples take the released tokenizer's `<s> ...` template (a BOS piece)."""
        return self.bos is not None


def _piece_id(processor: spm.SentencePieceProcessor, piece: str) -> int | None:
    """Id of `piece`, or None when the model lacks it (piece_to_id silently returns unk)."""
    index = processor.piece_to_id(piece)
    return index if processor.id_to_piece(index) == piece else None


def _require_piece(processor: spm.SentencePieceProcessor, piece: str, path: str) -> int:
    index = _piece_id(processor, piece)
    if index is None:
        raise ValueError(
            f"the SentencePiece model {path} has no {piece} piece, which the pretraining "
            f"objectives need. Train a vocabulary with `alexatm-vocab train` (it adds {CLM_PIECE} "
            f"and {DOC_PIECE}), or use the released 20b_tokenizer.model which has them."
        )
    return index


@functools.lru_cache(maxsize=16)
def read_special_ids(path: str) -> SpecialIds:
    """Reads pad/eos/unk/[CLM]/[DOC] ids and the piece count from the SentencePiece model at `path`
    (a local file or a URL such as gs://bucket/x.model).

    pad is the model's pad id, or the id of a `[PAD]` piece when the model defines no pad id (as
    the released tokenizer does). Raises ValueError naming the fix when a needed piece is missing.
    """
    model = epath.Path(path)
    if not model.exists():
        raise FileNotFoundError(
            f"SentencePiece model {path} does not exist; train one with `alexatm-vocab train` "
            f"or point {VOCAB_ENV} / vocabulary_path.path at an existing .model file"
        )
    processor = spm.SentencePieceProcessor(model_proto=model.read_bytes())
    pad = processor.pad_id()
    if pad < 0:
        pad = _piece_id(processor, PAD_PIECE)
    if pad is None:
        raise ValueError(f"the SentencePiece model {path} defines neither a pad id nor {PAD_PIECE}")
    if processor.eos_id() < 0:
        raise ValueError(f"the SentencePiece model {path} defines no eos id")
    return SpecialIds(
        pad=pad,
        eos=processor.eos_id(),
        unk=processor.unk_id(),
        clm=_require_piece(processor, CLM_PIECE, path),
        doc=_require_piece(processor, DOC_PIECE, path),
        vocab_size=processor.get_piece_size(),
        bos=processor.bos_id() if processor.bos_id() >= 0 else None,
        space=_piece_id(processor, "\u2581"),
    )


@gin.configurable
def vocabulary_path(path: str | None = None) -> str:
    """The SentencePiece model to use: `path` (gin `vocabulary_path.path`), else $ALEXATM_VOCAB,
    else the demo vocabulary if it has been trained. This is the one place that decides.

    Never trains: with none of these, raises FileNotFoundError saying how to make a vocabulary.
    """
    if path:
        return path
    if os.environ.get(VOCAB_ENV):
        return os.environ[VOCAB_ENV]
    try:
        demo = demo_files.demo_vocabulary_file()
    except FileNotFoundError as e:
        demo, why = None, f"{e}, so there is no demo vocabulary"
    else:
        why = f"the demo vocabulary {demo} has not been trained"
    if demo and os.path.exists(demo):
        return demo
    raise FileNotFoundError(
        f"no SentencePiece vocabulary: none is configured and {why}. Point {VOCAB_ENV} or "
        "MixtureConfig.vocab_path at a .model file, train one with `alexatm-vocab train "
        "--data_dir D --vocab_size N --out PATH.model`, or train the demo vocabulary on "
        "data/sample with `alexatm-vocab train --demo` (alexatm-demo does this too)"
    )


class DeferredSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A seqio SentencePiece vocabulary whose model path is resolved on first use.

    Tasks can be registered before gin files are parsed (`alexatm_pretrain` is, when `tasks` is
    imported); the path is looked up through `vocabulary_path()` only when the model is needed.
    """

    def __init__(self):
        super().__init__(sentencepiece_model_file="")

    def _model_context(self):
        if not self._sentencepiece_model_file:
            self._sentencepiece_model_file = vocabulary_path()
        return super()._model_context()

    @property
    def sentencepiece_model_file(self) -> str:
        self._model_context()
        return self._sentencepiece_model_file


def make_vocabulary(path: str | None = None) -> seqio.SentencePieceVocabulary:
    """A seqio vocabulary for `path`, or one resolved later by `vocabulary_path()` if None."""
    if path is None:
        return DeferredSentencePieceVocabulary()
    return seqio.SentencePieceVocabulary(path)


def special_ids(vocabulary: seqio.SentencePieceVocabulary) -> SpecialIds:
    """The special ids of a seqio SentencePiece vocabulary (loads its model if needed)."""
    return read_special_ids(vocabulary.sentencepiece_model_file)
