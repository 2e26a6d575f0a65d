"""The released AlexaTM tokenizer's encoding, reproduced on its SentencePiece model.

The release (`AlexaTMTokenizerFast` of alexa-teacher-models 1.0.1) does not run SentencePiece: it
converts the .model file into a HuggingFace `tokenizers` pipeline (transformers 4.30 `SpmConverter`,
tokenizers 0.13) and encodes with that:

1. normalise with the model's precompiled character map only, then collapse runs of spaces to one
   space (leading and trailing spaces are kept, unlike SentencePiece);
2. replace spaces by `▁`, prepend `▁` unless the text starts with one, and split before every `▁`
   (so `"[CLM] x"` gives the words `▁[CLM]`, `▁x`, and a text ending in a space gives a last
   word `▁`);
3. segment each word with the unigram Viterbi over every piece of the vocabulary, control and
   user-defined pieces included, each with its stored score; a character no piece covers is the
   unknown piece (score: lowest score - 10), and adjacent unknowns fuse into one `<unk>` (the
   converter ignores byte fallback);
4. wrap as `<s> ids </s>`.

Decoding reverses step 2: pieces are joined, `▁` becomes a space (every `▁` of the first piece is
dropped), and transformers' `clean_up_tokenization` removes the space before `. ? ! ,` and
English contractions. Byte pieces are printed as written (`<0xE3>`), as the release does.
"""

from __future__ import annotations

import re

import sentencepiece as spm

WORD_BOUNDARY = "\u2581"  # ▁
_UNKNOWN_PENALTY = 10.0
_SPACE_RUNS = re.compile(" {2,}")
_WORDS = re.compile(WORD_BOUNDARY + "[^" + WORD_BOUNDARY + "]*")
# transformers.PreTrainedTokenizerBase.clean_up_tokenization, in its order.
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class ReleaseEncoding:
    """Encodes text to ids (no `<s>`/`</s>`) and ids to text exactly as the release tokenizer."""

    def __init__(self, processor: spm.SentencePieceProcessor):
        self.processor = processor
        self.normalizer = spm.SentencePieceNormalizer(
            model_proto=processor.serialized_model_proto(),
            add_dummy_prefix=False,
            escape_whitespaces=False,
            remove_extra_whitespaces=False,
        )
        size = processor.get_piece_size()
        self.pieces = [processor.id_to_piece(i) for i in range(size)]
        self.scores = {}
        for index, piece in enumerate(self.pieces):
            self.scores.setdefault(piece, (float(processor.get_score(index)), index))
        self.longest = max(len(p) for p in self.pieces)
        self.unk = processor.unk_id()
        self.unk_score = min(score for score, _ in self.scores.values()) - _UNKNOWN_PENALTY
        self._cache: dict[str, list[int]] = {}

    def words(self, text: str) -> list[str]:
        """The pre-tokenised words of `text` (steps 1 and 2), each starting with `▁`."""
        normalized = _SPACE_RUNS.sub(" ", self.normalizer.normalize(text))
        if not normalized:
            return []
        marked = normalized.replace(" ", WORD_BOUNDARY)
        if not marked.startswith(WORD_BOUNDARY):
            marked = WORD_BOUNDARY + marked
        return _WORDS.findall(marked)

    def encode(self, text: str) -> list[int]:
        """The piece ids of `text` (steps 1-3; no `<s>`/`</s>`)."""
        ids = []
        for word in self.words(text):
            if word not in self._cache:
                if len(self._cache) > 100_000:
                    self._cache.clear()
                self._cache[word] = self._viterbi(word)
            ids += self._cache[word]
        return ids

    def _viterbi(self, word: str) -> list[int]:
        """tokenizers' `Unigram::encode_optimized` on one word, unknowns fused."""
        n = len(word)
        best: list[tuple[float, int, int] | None] = [None] * (n + 1)  # (score, start, id)
        best[0] = (0.0, 0, -1)
        for start in range(n):
            if best[start] is None:
                continue
            so_far = best[start][0]
            single = False
            for end in range(start + 1, min(n, start + self.longest) + 1):
                entry = self.scores.get(word[start:end])
                if entry is None:
                    continue
                candidate = so_far + entry[0]
                if best[end] is None or candidate > best[end][0]:
                    best[end] = (candidate, start, entry[1])
                single = single or end == start + 1
            if not single:
                candidate = so_far + self.unk_score
                if best[start + 1] is None or candidate > best[start + 1][0]:
                    best[start + 1] = (candidate, start, self.unk)
        ids, end = [], n
        while end > 0:
            _, start, index = best[end]
            if not (index == self.unk and ids and ids[-1] == self.unk):
                ids.append(index)
            end = start
        return ids[::-1]

    def decode(self, ids: list[int]) -> str:
        """Text of the piece ids (the caller leaves out special ids first)."""
        parts = []
        for position, index in enumerate(ids):
            piece = self.pieces[index]
            parts.append(piece.replace(WORD_BOUNDARY, "" if position == 0 else " "))
        text = "".join(parts)
        for old, new in _CLEAN_UP:
            text = text.replace(old, new)
        return text
