"""The released tokenizer's template on pretraining examples (vocabularies with a BOS piece).

The release's `AlexaTMTokenizerFast` encodes every text, inputs and labels alike, as
`<s> pieces </s>`, and a `[CLM] ` prompt as `<s> ▁ [CLM] ...`; its fine-tuning and generation
scripts feed the released weights exactly that. So that continued pretraining from those weights
sees the same layout, examples of such a vocabulary get `<s>` before their inputs and targets, and
CLM inputs `<s> ▁` before their `[CLM]`. (The text in between stays SentencePiece's pieces.)
"""

from __future__ import annotations

import tensorflow as tf


def template_overhead(objective: str) -> dict[str, int]:
    """Tokens the template adds to inputs and targets (reserve them in the sequence lengths)."""
    return {"inputs": 2 if objective == "clm" else 1, "targets": 1}


def release_template(
    ds: tf.data.Dataset, *, objective: str, bos_id: int, space_id: int
) -> tf.data.Dataset:
    """`<s>` (`<s> ▁` for CLM inputs) before inputs and targets; noise_mask gets a leading 0."""
    marker = [bos_id, space_id] if objective == "clm" else [bos_id]

    @tf.autograph.experimental.do_not_convert
    def wrap(ex):
        inputs, targets = ex["inputs"], ex["targets"]
        return {
            **ex,
            "inputs": tf.concat([tf.constant(marker, inputs.dtype), inputs], axis=0),
            "targets": tf.concat([tf.constant([bos_id], targets.dtype), targets], axis=0),
            "noise_mask": tf.concat(
                [tf.zeros([1], ex["noise_mask"].dtype), ex["noise_mask"]], axis=0
            ),
        }

    return ds.map(wrap, num_parallel_calls=tf.data.AUTOTUNE)
