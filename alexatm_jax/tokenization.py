"""A SentencePiece tokenizer wrapper for inference (pure sentencepiece: no TensorFlow, no seqio).

Every special id is read from the SentencePiece model, never assumed. Two conventions, chosen by
whether the model has a BOS piece:

* our vocabularies (`alexatm-vocab train`): pad=0, eos=1, unk=2, no bos, user-defined `[CLM]`,
  `[DOC]` pieces. Text is encoded as SentencePiece pieces + [eos]. A prompt that starts with the
  `[CLM]` marker becomes the single `[CLM]` id, then the pieces of the rest of the text (one space
  after the marker dropped), then EOS: exactly how the pretraining pipeline builds CLM inputs.
* the released `20b_tokenizer.model` (and any model with a BOS piece): `<unk>`, `<s>`, `</s>` at
  SentencePiece defaults, no pad id (its `[PAD]` piece pads), `[MASK]`. Text is encoded exactly as
  the release's `AlexaTMTokenizerFast` encodes it (`tokenization_release`): `<s> ids </s>`, where
  `"[CLM] text"` gives `<s> ▁ [CLM] ▁text ... </s>` and a text ending in a space keeps a final
  `▁`. The released weights were tuned and evaluated on that encoding, so it is kept as is.

Neither vocabulary can represent a newline (it is normalised to a space): write `<br>` (the
release's convention) or `;` instead.
"""

from __future__ import annotations

import dataclasses

import sentencepiece as spm

from alexatm_jax.storage import as_path
from alexatm_jax.tokenization_release import ReleaseEncoding

CLM_PIECE = "[CLM]"
DOC_PIECE = "[DOC]"
MASK_PIECE = "[MASK]"
PAD_PIECE = "[PAD]"
CLM_PREFIX = CLM_PIECE + " "


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special pieces of one SentencePiece model; None where the model lacks one."""

    pad: int
    eos: int
    unk: int
    bos: int | None
    clm: int | None
    doc: int | None
    mask: int | None


def _piece_id(processor: spm.SentencePieceProcessor, piece: str) -> int | None:
    index = processor.piece_to_id(piece)
    return index if processor.id_to_piece(index) == piece else None


def read_special_tokens(processor: spm.SentencePieceProcessor, path: str) -> SpecialTokens:
    """The special ids of `processor` (loaded from `path`, named in errors).

    pad is the model's pad id, else the id of a `[PAD]` piece. Raises ValueError when the model
    has no eos id or no padding piece at all.
    """
    pad = processor.pad_id()
    if pad < 0:
        pad = _piece_id(processor, PAD_PIECE)
    if pad is None:
        raise ValueError(
            f"the SentencePiece model {path} defines neither a pad id nor a "
            f"{PAD_PIECE} piece; retrain it with pad_id set"
        )
    if processor.eos_id() < 0:
        raise ValueError(
            f"the SentencePiece model {path} defines no eos id; retrain it with eos_id set"
        )
    bos = processor.bos_id()
    return SpecialTokens(
        pad=pad,
        eos=processor.eos_id(),
        unk=processor.unk_id(),
        bos=bos if bos >= 0 else None,
        clm=_piece_id(processor, CLM_PIECE),
        doc=_piece_id(processor, DOC_PIECE),
        mask=_piece_id(processor, MASK_PIECE),
    )


class Tokenizer:
    """Encodes prompts/targets to ids and decodes generated ids back to text."""

    def __init__(self, model_path: str):
        """`model_path`: a local SentencePiece .model file or a URL such as gs://b/x.model."""
        model = as_path(model_path)
        if not model.is_file():
            raise FileNotFoundError(f"SentencePiece model {model_path} does not exist")
        self.path = model_path
        self.processor = spm.SentencePieceProcessor(model_proto=model.read_bytes())
        self.special = read_special_tokens(self.processor, model_path)
        self._skipped_on_decode = {
            i
            for i in (
                self.special.pad,
                self.special.eos,
                self.special.unk,
                self.special.bos,
                self.special.mask,
            )
            if i is not None
        }
        # The release convention (see the module docstring) for vocabularies with a BOS piece.
        self.release = ReleaseEncoding(self.processor) if self.special.bos is not None else None

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the SentencePiece model."""
        return self.processor.get_piece_size()

    @property
    def convention(self) -> str:
        """'release' (AlexaTMTokenizerFast's encoding) or 'sentencepiece' (ours)."""
        return "release" if self.release is not None else "sentencepiece"

    def pieces(self, text: str) -> list[int]:
        """The ids of `text` alone (no BOS/EOS), in the vocabulary's convention."""
        if self.release is not None:
            return self.release.encode(text)
        return self.processor.encode(text)

    def wrap(self, ids: list[int]) -> list[int]:
        """`ids` with the vocabulary's template: [bos] (when it has one) + ids + [eos]."""
        head = [] if self.special.bos is None else [self.special.bos]
        return head + list(ids) + [self.special.eos]

    def encode(self, text: str) -> list[int]:
        """Ids of `text` with BOS (if any) and EOS.

        Release vocabulary: exactly `AlexaTMTokenizerFast(model)(text).input_ids`. Ours: a
        leading `[CLM]` marker becomes its one id (one following space dropped).
        """
        if self.release is None and text.startswith(CLM_PIECE):
            if self.special.clm is None:
                raise ValueError(
                    f"the prompt starts with {CLM_PIECE} but the SentencePiece model "
                    f"{self.path} has no {CLM_PIECE} piece"
                )
            rest = text[len(CLM_PIECE) :]
            rest = rest[1:] if rest.startswith(" ") else rest
            return self.wrap([self.special.clm] + self.pieces(rest))
        return self.wrap(self.pieces(text))

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` up to the first EOS, with pad/eos/bos/unk/mask ids left out.

        Release vocabulary: the release's `decode(kept, skip_special_tokens=True)` of the kept
        ids (as loaded with `from_pretrained`, which registers those special tokens).
        """
        kept = []
        for i in ids:
            if i == self.special.eos:
                break
            if i not in self._skipped_on_decode:
                kept.append(int(i))
        if self.release is not None:
            return self.release.decode(kept)
        return self.processor.decode(kept)

    def fit(self, ids: list[int], max_tokens: int) -> list[int]:
        """`ids` when at most `max_tokens` long; else their head (BOS and the `[CLM]` marker ids)
        followed by their last tokens, `max_tokens` in all (the end of a prompt is its query)."""
        if len(ids) <= max_tokens:
            return list(ids)
        head = 0
        if self.special.bos is not None and ids[:1] == [self.special.bos]:
            head = 1
        marker = (
            [self.special.clm]
            if self.release is None
            else [self.processor.piece_to_id("\u2581"), self.special.clm]
        )
        if self.special.clm is not None and ids[head : head + len(marker)] == marker:
            head += len(marker)
        return list(ids[:head]) + list(ids[len(ids) - (max_tokens - head) :])

    def plain_text(self, ids: list[int]) -> str:
        """Text of piece ids with nothing left out (the release's `decode(ids)` for its
        vocabulary, SentencePiece's otherwise), e.g. of a document cut to N tokens."""
        if self.release is not None:
            return self.release.decode([int(i) for i in ids])
        return self.processor.decode([int(i) for i in ids])

    def ids_of(self, words: list[str]) -> list[tuple[int, ...]]:
        """Each word's piece ids (no BOS/EOS), e.g. to build `DecodeOptions.bad_words`."""
        return [tuple(self.pieces(w)) for w in words]


def clm_prompt(text: str) -> str:
    """`text` marked for continuation: `[CLM] ` + text (unchanged if already marked)."""
    return text if text.startswith(CLM_PIECE) else CLM_PREFIX + text
