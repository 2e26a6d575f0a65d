"""`alexatm-demo` (what `make demo` runs): the whole system end to end on a laptop CPU.

1. trains (or reuses) the demo SentencePiece vocabulary on data/sample;
2. pretrains the demo model on the denoising + causal-LM mixture (99/1) over data/sample with
   gin/experiments/demo.gin (checkpoints, metrics.jsonl, TensorBoard; resumes if interrupted);
3. reports the loss drop from metrics.jsonl;
4. denoises held-out documents of data/sample (never trained on) greedily and prints, for a
   few languages, the noisy input, the model's reconstruction and the original, then the
   share of tokens restored and of deleted tokens put back, against copying the noisy input;
   ends with a `[CLM]` continuation.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence

from alexatm_jax.cli.gin_flags import gin_bindings
from alexatm_jax.evaluation.reconstruction import ReconstructionScore, score_reconstruction

DEMO_GIN = "gin/experiments/demo.gin"
DEFAULT_MODEL_DIR = "artifacts/demo_run"
# Shown first when they have held-out documents (data/sample has 12 languages).
SHOWN_LANGUAGES = ("en", "fr", "hi", "ja", "de", "ar", "es", "ta")
DELETED_RECALL_GOAL = 0.30
DEMO_DOCS = "docs/training.md#make-demo"
GOOGLE_PCI_VENDOR = "0x1ae0"


def build_parser() -> argparse.ArgumentParser:
    """Arguments of alexatm-demo."""
    parser = argparse.ArgumentParser(
        prog="alexatm-demo",
        description="Train the demo tokenizer and a small AlexaTM model on the embedded sample "
        "corpus, then reconstruct held-out documents with it. Extra "
        f"--gin.KEY=VALUE arguments are gin bindings on top of {DEMO_GIN}.",
    )
    parser.add_argument(
        "--model_dir",
        default=DEFAULT_MODEL_DIR,
        help=f"training MODEL_DIR (default {DEFAULT_MODEL_DIR}); an existing run "
        "there is resumed (or reused when complete)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete --model_dir first and train from scratch"
    )
    parser.add_argument(
        "--examples",
        type=int,
        default=4,
        help="held-out reconstructions to print, one per language (default 4)",
    )
    parser.add_argument(
        "--eval_examples",
        type=int,
        default=48,
        help="held-out denoising examples the accuracy is measured on "
        "(default 48, spread over the languages)",
    )
    parser.add_argument(
        "--max_new_tokens",
        type=int,
        default=48,
        help="tokens generated for the [CLM] continuation (default 48)",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Options and gin bindings; exits with a usage error naming a bad argument."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    bindings = gin_bindings(parser, rest, "--gin.TRAIN_STEPS=100")
    for name in ("max_new_tokens", "eval_examples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.examples < 0:
        parser.error(f"--examples must be >= 0, got {args.examples}")
    args.model_dir = os.path.abspath(os.path.expanduser(args.model_dir))
    return args, bindings


def accelerator_present() -> bool:
    """True when JAX would (probably) find a GPU or TPU: JAX_PLATFORMS names one, or an NVIDIA,
    AMD or Google TPU device is visible. Checked without initialising JAX."""
    platforms = os.environ.get("JAX_PLATFORMS", "").lower()
    if platforms:
        return any(p.strip() not in ("", "cpu") for p in platforms.split(","))
    if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd") or glob.glob("/dev/accel*"):
        return True
    for vendor_file in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor_file, encoding="ascii") as f:
                if f.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def quiet_accelerator_probes() -> None:
    """Keeps CPU-only start-up quiet: JAX skips the TPU plugin's probe (whose libtpu prints a
    TPU_WORKER_HOSTNAMES error when the pip package is installed). Call before JAX picks its
    backend; no-op where an accelerator is present or JAX_PLATFORMS is set. (TensorFlow's GPU
    probe lines are filtered for every command: alexatm_jax.tensorflow_probes.)"""
    if not accelerator_present():
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        if "jax" in sys.modules:  # jax read JAX_PLATFORMS when it was imported, before this
            sys.modules["jax"].config.update("jax_platforms", os.environ["JAX_PLATFORMS"])


@dataclasses.dataclass(frozen=True)
class HeldOutExample:
    """One held-out denoising example: ids of the noisy input and of the original (with EOS),
    and per original id 1 where it was deleted from the input."""

    language: str
    input_ids: list[int]
    target_ids: list[int]
    deleted: list[int]


def held_out_examples(sequence_length: dict[str, int], total: int) -> list[HeldOutExample]:
    """Denoising examples from the `validation` split of every language's local denoising task
    (documents held out of training by hash, MixtureConfig.validation_per_mille), taken in turn
    from each language that has any, `total` at most."""
    import tasks
    from tasks.pretraining import task_name

    per_language: dict[str, list[HeldOutExample]] = {}
    for language in tasks.MixtureConfig().languages:
        try:
            ds = tasks.get_dataset(
                task_name("local", language, "denoise"),
                sequence_length=sequence_length,
                split="validation",
                feature_converter=False,
            )
        except (ValueError, KeyError):
            continue
        rows = [
            HeldOutExample(
                language,
                [int(t) for t in ex["inputs"]],
                [int(t) for t in ex["targets"]],
                [int(f) for f in ex["noise_mask"]],
            )
            for ex in ds.take(total).as_numpy_iterator()
        ]
        if rows:
            per_language[language] = rows
    examples: list[HeldOutExample] = []
    while len(examples) < total and any(per_language.values()):
        for rows in per_language.values():
            if rows and len(examples) < total:
                examples.append(rows.pop(0))
    return examples


def shown_examples(examples: list[HeldOutExample], count: int) -> list[int]:
    """Indices of up to `count` examples to print, one per language, preferred languages first."""
    first: dict[str, int] = {}
    for index, example in enumerate(examples):
        first.setdefault(example.language, index)
    order = [lang for lang in SHOWN_LANGUAGES if lang in first]
    order += [lang for lang in first if lang not in order]
    return [first[lang] for lang in order[:count]]


def loss_summary(metrics_path: str) -> tuple[float, float, int, int]:
    """(first logged loss, last logged loss, their steps) from metrics.jsonl."""
    from alexatm_jax.training.metrics_writer import read_metrics

    records = [r for r in read_metrics(metrics_path) if isinstance(r.get("loss"), float)]
    if not records:
        raise RuntimeError(f"{metrics_path} has no training losses")
    return records[0]["loss"], records[-1]["loss"], records[0]["step"], records[-1]["step"]


def _wrapped(label: str, text: str) -> str:
    indent = " " * 18
    return (
        textwrap.fill(
            text,
            width=100,
            initial_indent=f"  {label:<15} ",
            subsequent_indent=indent,
            replace_whitespace=True,
            drop_whitespace=True,
        )
        or f"  {label}"
    )


def evaluate_denoising(
    model, sequence_length: dict[str, int], num_examples: int, num_shown: int
) -> tuple[ReconstructionScore, ReconstructionScore, list[HeldOutExample]]:
    """Greedy reconstructions of held-out examples; prints some, then the model's scores
    against copying the noisy input. Returns (the model's score, the copy baseline's, the
    examples)."""
    examples = held_out_examples(sequence_length, num_examples)
    if not examples:
        raise RuntimeError("no held-out documents: raise MixtureConfig.validation_per_mille")
    ours, copying, outputs = score_held_out(model, examples, sequence_length["targets"])
    tokenizer = model.tokenizer
    for index in shown_examples(examples, num_shown):
        example, output = examples[index], outputs[index]
        print(
            f"  [{example.language}] held-out document, {sum(example.deleted)} of "
            f"{len(example.target_ids) - 1} tokens deleted"
        )
        print(_wrapped("noisy input", tokenizer.decode(example.input_ids)))
        print(_wrapped("reconstruction", tokenizer.decode(output.token_ids)))
        print(_wrapped("original", tokenizer.decode(example.target_ids)))
    languages = sorted({e.language for e in examples})
    print(
        f"  {len(examples)} held-out examples, {len(languages)} languages "
        f"({', '.join(languages)}); {ours.target_tokens} original tokens, "
        f"{ours.deleted_tokens} of them deleted.\n"
        f"                              reconstruction   copying the noisy input\n"
        f"  tokens restored in order         {100 * ours.accuracy:5.1f}%            "
        f"{100 * copying.accuracy:5.1f}%\n"
        f"  deleted tokens put back          {100 * ours.deleted_recall:5.1f}%            "
        f"{100 * copying.deleted_recall:5.1f}%\n"
        f"  Verdict: {verdict(ours, copying)}"
    )
    return ours, copying, examples


def score_held_out(
    model, examples: list[HeldOutExample], max_new_tokens: int
) -> tuple[ReconstructionScore, ReconstructionScore, list]:
    """(the greedy reconstructions' score, copying the noisy input's score, the decoded outputs)
    of `examples` under `model` (a TextModel)."""
    from alexatm_jax.decoding import DecodeOptions

    options = DecodeOptions(max_new_tokens=max_new_tokens)
    outputs = model.engine.generate_ids([e.input_ids for e in examples], options)
    eos = model.engine.config.eos_token_id
    ours, copying = ReconstructionScore(), ReconstructionScore()
    for output, example in zip(outputs, examples):
        ours += score_reconstruction(output.token_ids, example.target_ids, example.deleted, eos)
        copying += score_reconstruction(example.input_ids, example.target_ids, example.deleted, eos)
    return ours, copying, outputs


def verdict(ours: ReconstructionScore, copying: ReconstructionScore) -> str:
    """One line: whether the reconstructions beat copying and reach DELETED_RECALL_GOAL."""
    beats = ours.accuracy > copying.accuracy
    text = (
        f"{'beats' if beats else 'does not beat'} copying the input "
        f"({100 * (ours.accuracy - copying.accuracy):+.1f} points)"
    )
    reached = ours.deleted_recall >= DELETED_RECALL_GOAL
    return (
        f"{text}; {'reaches' if reached else 'below'} the goal of "
        f"{100 * DELETED_RECALL_GOAL:.0f}% of the deleted tokens put back."
        + ("" if beats and reached else f" Why, and what longer runs reach: {DEMO_DOCS}")
    )


def _print_continuation(model, examples, max_new_tokens: int, clm_share: float) -> None:
    """A `[CLM]` continuation of the first half of a held-out chunk (English when there is one),
    with the note that it stays weak."""
    from alexatm_jax.decoding import DecodeOptions

    source = next((e for e in examples if e.language == "en"), examples[0])
    words = model.tokenizer.decode(source.target_ids).split()
    clm_prompt = "[CLM] " + " ".join(words[: max(1, len(words) // 2)])  # the first half
    (clm,) = model.generate([clm_prompt], DecodeOptions(max_new_tokens=max_new_tokens))
    print(_wrapped("[CLM] prompt", clm_prompt[len("[CLM] ") :]))
    print(_wrapped("continuation", clm.text))
    print(
        f"  (Continuation is the causal-LM objective, {100 * clm_share:.0f}% of the demo's "
        "mixture: a few minutes\n   of training teach the model the corpus's words, not "
        "coherent text.)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `alexatm-demo`; returns the exit code."""
    args, bindings = parse_args(argv)
    quiet_accelerator_probes()
    started = time.perf_counter()
    from alexatm_jax.gin_registry import REPO_ROOT

    repo_root = str(REPO_ROOT)
    if not os.path.isdir(os.path.join(repo_root, "data", "sample")):
        print(
            f"alexatm-demo: error: the sample corpus {repo_root}/data/sample is missing; run "
            "the demo from a checkout of the repository",
            file=sys.stderr,
        )
        return 2

    print("[1/4] Demo tokenizer (SentencePiece, trained on data/sample on first use)", flush=True)
    import tasks

    vocab = os.environ.get(tasks.VOCAB_ENV) or tasks.train_demo_vocabulary()
    print(f"      {vocab}", flush=True)

    print(f"[2/4] Pretraining the demo model ({DEMO_GIN}) in {args.model_dir}", flush=True)
    import gin
    from alexatm_jax import gin_registry

    try:  # strict gin: a misspelt macro or parameter is refused, not silently ignored
        gin_registry.parse_gin([DEMO_GIN], [f"MODEL_DIR = {args.model_dir!r}"] + bindings)
    except (FileNotFoundError, ValueError, SyntaxError) as error:
        print(f"alexatm-demo: error: gin configuration: {error}", file=sys.stderr)
        return 2
    if args.fresh and os.path.isdir(args.model_dir):
        shutil.rmtree(args.model_dir)
    sequence_length = dict(gin.query_parameter("train.sequence_length"))
    train_started = time.perf_counter()
    from alexatm_jax.training.checkpointing import IncompatibleCheckpointError
    from alexatm_jax.training.model_dir import ArchitectureMismatchError
    from alexatm_jax.training.trainer import InvalidTrainArguments, train

    try:
        result = train(gin_registry.train_config_from_gin())
    except (InvalidTrainArguments, ArchitectureMismatchError, IncompatibleCheckpointError) as error:
        print(f"alexatm-demo: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2  # refused before MODEL_DIR was touched
    train_seconds = time.perf_counter() - train_started
    if result.stopped_by_signal:
        print(f"alexatm-demo: stopped by {result.stopped_by_signal}; rerun to resume.")
        return 0

    first, last, first_step, last_step = loss_summary(os.path.join(args.model_dir, "metrics.jsonl"))
    drop = 1.0 - last / first
    print(
        f"[3/4] Training loss {first:.3f} (step {first_step}) -> {last:.3f} (step {last_step}):"
        f" {100 * drop:.0f}% lower; training took {train_seconds:.0f} s",
        flush=True,
    )

    print("[4/4] Greedy denoising of held-out documents (deleted spans restored?)", flush=True)
    from alexatm_jax.decoding.loading import load_text_model

    model = load_text_model(args.model_dir, tokenizer_path=vocab, batch_size=16)
    ours, copying, examples = evaluate_denoising(
        model, sequence_length, args.eval_examples, args.examples
    )
    _print_continuation(model, examples, args.max_new_tokens, tasks.MixtureConfig().clm_share)
    print(
        f"\nDone in {time.perf_counter() - started:.0f} s (training {train_seconds:.0f} s); "
        f"held-out: {100 * ours.accuracy:.1f}% of tokens restored (copying: "
        f"{100 * copying.accuracy:.1f}%), {100 * ours.deleted_recall:.1f}% of deleted tokens "
        "put back.\n"
        f"  checkpoints : {os.path.join(args.model_dir, 'checkpoints')}\n"
        f"  metrics     : {os.path.join(args.model_dir, 'metrics.jsonl')}\n"
        f"  TensorBoard : tensorboard --logdir {os.path.join(args.model_dir, 'tensorboard')}\n"
        f'  load it     : python -c "import alexatm_jax; m = '
        f"alexatm_jax.load('{args.model_dir}')\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
