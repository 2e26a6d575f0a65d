"""Why the demo's reconstructions do or do not beat copying: held-out scores per language, and
how many deleted tokens a count-based model of the training text could put back at all.

    python benchmarks/demo_denoising_analysis.py artifacts/demo_run --examples 480
    python benchmarks/demo_denoising_analysis.py artifacts/demo_run --num_beams 4

1. Per language: the demo model's greedy (or beam) reconstructions of held-out examples against
   copying the noisy input, with the deleted tokens put back and the kept tokens lost.
2. The bigram ceiling: a bigram model counted on the demo's *training* documents (add-0.1
   smoothing) fills each deleted span of the same examples by Viterbi search, told exactly where
   each span is and how long it is (which the demo model is not), and scores the share of
   deleted tokens it puts back; beside it, always guessing the most frequent token.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexatm_jax.cli import demo  # noqa: E402

SMOOTHING = 0.1  # add-k smoothing of the bigram counts
CANDIDATES = 100  # most frequent tokens tried at every deleted position (plus seen successors)
BEAM = 8  # Viterbi states kept per position


def _by_language(model_dir: str, vocab: str, examples, target_length: int, num_beams: int):
    from alexatm_jax.decoding import DecodeOptions
    from alexatm_jax.decoding.loading import load_text_model
    from alexatm_jax.evaluation.reconstruction import ReconstructionScore, score_reconstruction

    model = load_text_model(model_dir, tokenizer_path=vocab, batch_size=16)
    options = DecodeOptions(max_new_tokens=target_length, num_beams=num_beams)
    outputs = model.engine.generate_ids([e.input_ids for e in examples], options)
    eos = model.engine.config.eos_token_id
    scores: dict[str, list[ReconstructionScore]] = collections.defaultdict(
        lambda: [ReconstructionScore(), ReconstructionScore()]
    )
    for output, example in zip(outputs, examples):
        pair = scores[example.language]
        pair[0] += score_reconstruction(output.token_ids, example.target_ids, example.deleted, eos)
        pair[1] += score_reconstruction(example.input_ids, example.target_ids, example.deleted, eos)
    print(
        f"{'language':<9}{'tokens':>7}{'restored':>10}{'copying':>9}{'points':>8}"
        f"{'deleted put back':>18}{'kept lost':>11}"
    )
    total = [ReconstructionScore(), ReconstructionScore()]
    for language in sorted(scores) + ["all"]:
        ours, copying = total if language == "all" else scores[language]
        if language != "all":
            total[0] += ours
            total[1] += copying
        kept_lost = ours.target_tokens - ours.deleted_tokens - (ours.matched - ours.matched_deleted)
        print(
            f"{language:<9}{ours.target_tokens:>7}{100 * ours.accuracy:>9.1f}%"
            f"{100 * copying.accuracy:>8.1f}%{100 * (ours.accuracy - copying.accuracy):>+8.1f}"
            f"{100 * ours.deleted_recall:>17.1f}%{kept_lost:>11}"
        )


def _training_bigrams(vocab: str) -> tuple[collections.Counter, collections.Counter]:
    """(unigram, bigram) counts over the demo's training documents (the held-out ones left
    out by the same hash as the tasks)."""
    import sentencepiece as spm

    import tasks
    from tasks import corpus_files, demo_files
    from tasks.sources import is_validation

    pieces = spm.SentencePieceProcessor(model_file=vocab)
    per_mille = tasks.MixtureConfig().validation_per_mille
    unigrams, bigrams = collections.Counter(), collections.Counter()
    for paths in corpus_files.language_files(demo_files.DEMO_DATA_DIR).values():
        for text in corpus_files.iter_documents(paths):
            if bool(is_validation(text, per_mille)):
                continue
            ids = [0] + pieces.encode(text)  # 0 (pad) stands for the document start
            unigrams.update(ids[:-1])
            bigrams.update(zip(ids, ids[1:]))
    return unigrams, bigrams


def _bigram_ceiling(vocab: str, examples) -> None:
    unigrams, bigrams = _training_bigrams(vocab)
    vocab_size = max(max(unigrams), 1) + 1
    successors: dict[int, list[int]] = collections.defaultdict(list)
    for first, second in bigrams:
        successors[first].append(second)
    frequent = [token for token, _ in unigrams.most_common(CANDIDATES)]

    def log_p(first: int, second: int) -> float:
        count = bigrams.get((first, second), 0) + SMOOTHING
        return math.log(count / (unigrams.get(first, 0) + SMOOTHING * vocab_size))

    def fill(before: int, after: int | None, length: int) -> list[int]:
        states, back = {before: 0.0}, []
        for _ in range(length):
            scored, pointers = {}, {}
            for state, score in states.items():
                for token in set(frequent).union(successors.get(state, ())):
                    value = score + log_p(state, token)
                    if value > scored.get(token, -math.inf):
                        scored[token], pointers[token] = value, state
            states = dict(sorted(scored.items(), key=lambda kv: -kv[1])[:BEAM])
            back.append(pointers)
        if after is not None:
            states = {state: score + log_p(state, after) for state, score in states.items()}
        path = [max(states, key=states.get)]
        for pointers in reversed(back[1:]):
            path.append(pointers[path[-1]])
        return path[::-1]

    most_frequent = unigrams.most_common(1)[0][0]
    deleted = restored = guessed = 0
    for example in examples:
        target, flags = example.target_ids[:-1], example.deleted
        start = 0
        while start < len(target):
            if not flags[start]:
                start += 1
                continue
            end = start
            while end < len(target) and flags[end]:
                end += 1
            before = target[start - 1] if start else 0
            after = target[end] if end < len(target) else None
            for guess, truth in zip(fill(before, after, end - start), target[start:end]):
                deleted += 1
                restored += guess == truth
                guessed += most_frequent == truth
            start = end
    print(
        f"bigram ceiling: {deleted} deleted tokens in {len(examples)} held-out examples; a "
        f"bigram model of the {sum(unigrams.values())} training tokens, told each span's place "
        f"and length, puts back {100 * restored / deleted:.1f}%; the most frequent token alone, "
        f"{100 * guessed / deleted:.1f}%"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model_dir", help="a demo run (artifacts/demo_run) or one of its checkpoints"
    )
    parser.add_argument("--examples", type=int, default=480, help="held-out examples (max)")
    parser.add_argument("--num_beams", type=int, default=1, help="1 = greedy, as the demo")
    args, rest = parser.parse_known_args(argv)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.examples < 1 or args.num_beams < 1:
        parser.error("--examples and --num_beams must be >= 1")
    if not os.path.exists(args.model_dir):
        parser.error(f"{args.model_dir} does not exist: run `make demo` first")
    demo.quiet_accelerator_probes()
    import gin
    import tasks
    from alexatm_jax import gin_registry

    gin_registry.parse_gin([demo.DEMO_GIN], [])
    sequence_length = dict(gin.query_parameter("train.sequence_length"))
    vocab = os.environ.get(tasks.VOCAB_ENV) or tasks.train_demo_vocabulary()
    examples = demo.held_out_examples(sequence_length, args.examples)
    _by_language(args.model_dir, vocab, examples, sequence_length["targets"], args.num_beams)
    _bigram_ceiling(vocab, examples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
