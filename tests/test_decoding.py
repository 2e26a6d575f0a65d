"""Decoding and scoring against the reference (alexa_teacher_models) forward pass.

The reference is driven step by step (its generate() is broken): greedy = argmax of the last
position of a full forward over the growing decoder prefix.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("alexa_teacher_models")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from inference_helpers import convert_reference, padded_prompts, reference_model  # noqa: E402

from alexatm_jax.decoding import (  # noqa: E402
    DecodeOptions,
    beam_search,
    greedy_or_sample,
    length_normalizer,
    target_log_probs,
)
from alexatm_jax.decoding.engine import InferenceEngine, pad_rows  # noqa: E402
from alexatm_jax.model.layout import scan_params  # noqa: E402

STEPS = 10
LENGTHS = [9, 4, 7, 12, 3, 6]


@pytest.fixture(scope="module")
def setup():
    ref = reference_model()
    config, params = convert_reference(ref)
    prompts = padded_prompts(LENGTHS, config.vocab_size, config.eos_token_id, config.pad_token_id)
    # The engine pads to 16 (a power of two) with batch_size 6: raw calls below share its compile.
    tokens, segments = pad_rows(prompts, 16, config.pad_token_id)
    return ref, config, params, prompts, tokens, segments


def reference_greedy(ref, prompt: list[int], steps: int, start: int, eos: int):
    """Greedy ids (EOS included) and their summed log-probability from full reference forwards."""
    x = torch.tensor([prompt])
    decoder, total = [start], 0.0
    with torch.no_grad():
        for _ in range(steps):
            logits = ref(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                decoder_input_ids=torch.tensor([decoder]),
            ).logits[0, -1]
            token = int(logits.argmax())
            total += float(torch.log_softmax(logits.double(), -1)[token])
            decoder.append(token)
            if token == eos:
                break
    return decoder[1:], total


def _until_eos(row, config) -> list[int]:
    ids = [int(t) for t in row]
    eos = config.eos_token_id
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def greedy(config, params, tokens, segments, **changes):
    options = DecodeOptions(max_new_tokens=STEPS, **changes)
    return greedy_or_sample(
        params, tokens, segments, jax.random.key(0), config=config, options=options
    )


def test_greedy_equals_reference_loop_on_a_padded_batch(setup):
    ref, config, params, prompts, _, _ = setup
    engine = InferenceEngine(config, params, batch_size=6)
    outputs = engine.generate_ids(prompts, DecodeOptions(max_new_tokens=STEPS))
    ended = 0
    for prompt, out in zip(prompts, outputs):
        expected, expected_score = reference_greedy(
            ref, prompt, STEPS, config.decoder_start_token_id, config.eos_token_id
        )
        assert out.token_ids == expected
        assert out.score == pytest.approx(expected_score, abs=1e-4)
        ended += expected[-1] == config.eos_token_id
    assert 0 < ended < len(prompts), "the fixture should mix finished and unfinished rows"


def test_rows_after_eos_hold_pad_and_batches_equal_single_rows(setup):
    _, config, params, prompts, tokens, segments = setup
    out = np.asarray(greedy(config, params, tokens, segments).tokens)
    for row in out:
        if config.eos_token_id in row:
            after = row[list(row).index(config.eos_token_id) + 1 :]
            assert np.all(after == config.pad_token_id)
    one_by_one = InferenceEngine(config, params, batch_size=1).generate_ids(
        prompts, DecodeOptions(max_new_tokens=STEPS)
    )
    assert [o.token_ids for o in one_by_one] == [_until_eos(row, config) for row in out]


def test_scores_equal_reference_cross_entropy(setup):
    ref, config, params, prompts, _, _ = setup
    targets = padded_prompts(
        [5, 2, 8, 3, 1, 6], config.vocab_size, config.eos_token_id, config.pad_token_id, seed=1
    )
    scores = InferenceEngine(config, params, batch_size=4).score_ids(prompts, targets)
    for prompt, target, score in zip(prompts, targets, scores):
        x = torch.tensor([prompt])
        with torch.no_grad():
            loss = float(
                ref(
                    input_ids=x, attention_mask=torch.ones_like(x), labels=torch.tensor([target])
                ).loss
            )
        assert score.num_tokens == len(target)
        assert score.score_mean == pytest.approx(-loss, abs=1e-4)
        assert score.score_sum == pytest.approx(-loss * len(target), abs=1e-4 * len(target))


def test_one_beam_without_length_penalty_is_greedy(setup):
    _, config, params, _, tokens, segments = setup
    expected = greedy(config, params, tokens, segments)
    out = beam_search(
        params,
        tokens,
        segments,
        config=config,
        options=DecodeOptions(max_new_tokens=STEPS, num_beams=1, length_penalty=0.0),
    )
    np.testing.assert_array_equal(out.tokens[:, 0], expected.tokens)
    np.testing.assert_allclose(out.scores[:, 0], expected.scores, atol=1e-5)


def _hypothesis_scores(config, params, tokens, segments, hypotheses, alpha, kind):
    """Teacher-forced sum log p / norm(length) of every hypothesis [batch, beams, steps]."""
    batch, beams, steps = hypotheses.shape
    flat = hypotheses.reshape(batch * beams, steps)
    lengths = np.array(
        [
            list(r).index(config.eos_token_id) + 1 if config.eos_token_id in r else steps
            for r in flat
        ]
    )
    mask = (np.arange(steps)[None] < lengths[:, None]).astype(np.int32)
    log_probs = target_log_probs(
        params,
        np.repeat(tokens, beams, 0),
        np.repeat(segments, beams, 0),
        flat,
        mask,
        config=config,
    )
    totals = np.asarray(log_probs).sum(-1)
    norm = np.asarray(length_normalizer(lengths, alpha, kind == "gnmt"))
    return (totals / norm).reshape(batch, beams)


@pytest.mark.parametrize("kind,alpha", [("power", 1.0), ("gnmt", 0.6)])
def test_beam_hypotheses_are_sorted_distinct_and_scored_correctly(setup, kind, alpha):
    _, config, params, _, tokens, segments = setup
    options = DecodeOptions(
        max_new_tokens=STEPS, num_beams=4, length_penalty=alpha, length_penalty_kind=kind
    )
    out = beam_search(params, tokens, segments, config=config, options=options)
    hyps, scores = np.asarray(out.tokens), np.asarray(out.scores)
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "beams must be sorted best first"
    for row in hyps:
        assert len({tuple(h) for h in row}) == len(row), "beams must be distinct"
    recomputed = _hypothesis_scores(config, params, tokens, segments, hyps, alpha, kind)
    np.testing.assert_allclose(scores, recomputed, atol=1e-4)
    greedy_out = greedy(config, params, tokens, segments)
    greedy_scores = _hypothesis_scores(
        config, params, tokens, segments, np.asarray(greedy_out.tokens)[:, None], alpha, kind
    )
    assert np.all(scores[:, 0] >= greedy_scores[:, 0] - 1e-4), "beam 0 should beat greedy here"


def test_beam_search_scanned_layers_and_batching_agree(setup):
    _, config, params, prompts, tokens, segments = setup
    options = DecodeOptions(max_new_tokens=STEPS, num_beams=4)
    plain = beam_search(params, tokens, segments, config=config, options=options)
    scanned_config = config.replace(scan_layers=True)
    scanned = beam_search(
        scan_params(params), tokens, segments, config=scanned_config, options=options
    )
    np.testing.assert_array_equal(plain.tokens, scanned.tokens)
    np.testing.assert_allclose(plain.scores, scanned.scores, atol=1e-5)
    single = InferenceEngine(config, params, batch_size=1).generate_ids(prompts[:3], options)
    assert [s.token_ids for s in single] == [
        _until_eos(row, config) for row in np.asarray(plain.tokens)[:3, 0]
    ]


def test_sampling_with_top_k_1_is_greedy_and_seeds_matter(setup):
    _, config, params, _, tokens, segments = setup
    expected = greedy(config, params, tokens, segments)
    top1 = greedy(config, params, tokens, segments, sample=True, top_k=1, temperature=0.7)
    np.testing.assert_array_equal(top1.tokens, expected.tokens)
    options = DecodeOptions(max_new_tokens=STEPS, sample=True, temperature=1.5, top_p=0.95)
    draw = lambda seed: np.asarray(
        greedy_or_sample(
            params, tokens, segments, jax.random.key(seed), config=config, options=options
        ).tokens
    )
    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))


def test_top_k_and_top_p_filters():
    from alexatm_jax.decoding.logits_processing import top_k_filter, top_p_filter

    logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
    assert kept(top_k_filter(logits, 2)) == [True, True, False, False, False]
    assert kept(top_k_filter(logits, 0)) == [True] * 5
    assert kept(top_p_filter(logits, 0.5)) == [True, False, False, False, False]
    assert kept(top_p_filter(logits, 0.6)) == [True, True, False, False, False]
    assert kept(top_p_filter(logits, 0.86)) == [True, True, True, True, False]
    assert kept(top_p_filter(logits, 1.0)) == [True] * 5


def test_first_argmax_and_token_log_probs_equal_the_plain_formulas():
    from alexatm_jax.decoding.logits_processing import first_argmax, token_log_probs

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 37)).astype(np.float32)
    logits[1, [3, 20]] = 9.0  # a tie: the first maximum wins, as in jnp.argmax
    logits[2, :] = -np.inf  # everything banned: index 0, as in jnp.argmax
    logits[3, [7, 30]] = np.nan  # NaN: the first NaN, as in jnp.argmax
    np.testing.assert_array_equal(
        first_argmax(jnp.asarray(logits)), jnp.argmax(jnp.asarray(logits), axis=-1)
    )
    finite = jnp.asarray(rng.standard_normal((4, 37)).astype(np.float32))
    tokens = jnp.array([0, 36, 5, 17])
    expected = jnp.take_along_axis(jax.nn.log_softmax(finite, axis=-1), tokens[:, None], -1)[:, 0]
    np.testing.assert_allclose(token_log_probs(finite, tokens), expected, atol=1e-6)


def test_ban_bad_words_masks_exactly_the_active_words():
    from alexatm_jax.decoding.logits_processing import ban_bad_words
    from alexatm_jax.decoding.options import split_options

    # Words: (5,) always; (2, 6) after a 2; (9, 4, 8) after 9 4; (3,) and (6,) twice (duplicates).
    words = ((5,), (2, 6), (9, 4, 8), (3,), (6,), (3,))
    _, knobs = split_options(DecodeOptions(max_new_tokens=4, bad_words=words))
    history = np.array([[0, 0, 2], [0, 9, 4], [0, 1, 1]], np.int32)
    window = knobs.bad_prefixes.shape[1]
    history = np.pad(history, ((0, 0), (max(window - 3, 0), 0)), constant_values=-1)[:, -window:]
    out = np.asarray(
        ban_bad_words(
            jnp.zeros((3, 12)), jnp.asarray(history), knobs.bad_prefixes, knobs.bad_last_ids
        )
    )
    banned = [set(np.flatnonzero(np.isinf(row)).tolist()) for row in out]
    assert banned == [{3, 5, 6}, {3, 5, 6, 8}, {3, 5, 6}]


def test_bad_words_single_and_multi_token(setup):
    _, config, params, _, tokens, segments = setup
    base = np.asarray(greedy(config, params, tokens, segments).tokens)
    banned = int(base[0, 0])
    out = np.asarray(greedy(config, params, tokens, segments, bad_words=((banned,),)).tokens)
    assert not np.any(out == banned)
    # A two-token word seen in the greedy output: the prefix up to it is unchanged, then it is
    # avoided; the same ids apart stay allowed.
    row = next(r for r in range(len(base)) if base[r, 1] != config.eos_token_id)
    pair = (int(base[row, 0]), int(base[row, 1]))
    out = np.asarray(greedy(config, params, tokens, segments, bad_words=(pair,)).tokens)
    assert out[row, 0] == base[row, 0] and out[row, 1] != base[row, 1]
    for r in out:
        assert all((int(a), int(b)) != pair for a, b in zip(r[:-1], r[1:]))
    # A word starting with the decoder start id bans its second id at the first step only.
    start_pair = (config.decoder_start_token_id, banned)
    out = np.asarray(greedy(config, params, tokens, segments, bad_words=(start_pair,)).tokens)
    assert out[0, 0] != banned
    beam = beam_search(
        params,
        tokens,
        segments,
        config=config,
        options=DecodeOptions(max_new_tokens=STEPS, num_beams=2, bad_words=((banned,),)),
    )
    assert not np.any(np.asarray(beam.tokens) == banned)


def test_decoding_under_a_partitioner_matches_one_device():
    from multidevice_decoding import run_multidevice_decoding

    result = run_multidevice_decoding()
    assert result["tensor_sharded_params"] > 0 and result["fsdp_sharded_params"] > 0
    assert result["num_greedy_tokens"] > 0
    assert result["greedy_equal"] and result["beam_equal"]
    assert result["tied_greedy_and_beam_equal"]
    assert result["tied_head_spec"] == "P('fsdp', 'tensor')"  # [embed, vocab]
    assert result["score_max_diff"] < 1e-4
    # Replicated parameters with the batch over the 8 devices (an evaluation layout).
    assert result["replicated_equal"] and result["replicated_score_max_diff"] < 1e-4
    assert result["replicated_params"]
