"""Text in, text out: a tokenizer in front of an `InferenceEngine`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from alexatm_jax.decoding.engine import InferenceEngine, TargetScore, truncate_at_stop
from alexatm_jax.decoding.options import DecodeOptions
from alexatm_jax.tokenization import Tokenizer


@dataclasses.dataclass(frozen=True)
class Generation:
    """One prompt's output: `text` is `raw_text` cut at the first stop string."""

    prompt: str
    text: str
    raw_text: str
    token_ids: list[int]
    score: float


class TextModel:
    """Generates and scores strings; checks that the tokenizer and model agree on special ids."""

    def __init__(self, engine: InferenceEngine, tokenizer: Tokenizer):
        config = engine.config
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(
                f"the tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces "
                f"but the model only {config.vocab_size} embeddings: wrong "
                "tokenizer?"
            )
        if tokenizer.special.eos != config.eos_token_id:
            raise ValueError(
                f"the tokenizer's eos id {tokenizer.special.eos} differs from the "
                f"model config's eos_token_id {config.eos_token_id}: fix "
                "model_config.json or use the checkpoint's own tokenizer"
            )
        self.engine = engine
        self.tokenizer = tokenizer

    def generate(
        self,
        prompts: Sequence[str],
        options: DecodeOptions,
        stop: Sequence[str] = (),
        seed: int = 0,
        truncate: bool = False,
    ) -> list[Generation]:
        """One `Generation` per prompt, in order (prompts may start with `[CLM] `).

        truncate: cut prompts over max_positions tokens with `Tokenizer.fit` instead of failing.
        """
        ids = self._encode(prompts, truncate)
        outputs = self.engine.generate_ids(ids, options, seed)
        generations = []
        for prompt, out in zip(prompts, outputs):
            raw = self.tokenizer.decode(out.token_ids)
            generations.append(
                Generation(prompt, truncate_at_stop(raw, stop), raw, out.token_ids, out.score)
            )
        return generations

    def score(
        self, inputs: Sequence[str], targets: Sequence[str], truncate: bool = False
    ) -> list[TargetScore]:
        """Teacher-forced log-probability of each target given its input (targets encoded with
        the same BOS/EOS template as inputs, so EOS is scored). truncate: as for `generate`."""
        return self.engine.score_ids(
            self._encode(inputs, truncate), self._encode(targets, truncate)
        )

    def _encode(self, texts: Sequence[str], truncate: bool) -> list[list[int]]:
        ids = [self.tokenizer.encode(t) for t in texts]
        if truncate:
            ids = [self.tokenizer.fit(i, self.engine.config.max_positions) for i in ids]
        return ids
