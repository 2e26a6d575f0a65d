"""Beam search with a length penalty, as one jitted `lax.while_loop` over cached decoder steps.

Per input, K live beams and up to K finished hypotheses are kept. Each step scores the K*V
extensions of the live beams by total log-probability and takes the best 2K: those ending in EOS
and ranked within the first K compete for the finished slots with score sum(log p) /
norm(length) (see `length_normalizer`); the best K not ending in EOS become the new live beams,
and the KV cache rows follow their source beams. An input is done when it has K finished
hypotheses and no live beam can still beat the worst of them (their log-probability can only fall; the bound takes the most favourable length). At the
end, inputs that are not done also rank their live beams, normalised at their current length.
With one beam and length_penalty 0 this is exactly greedy search.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from alexatm_jax.decoding import model_steps
from alexatm_jax.decoding.logits_processing import ban_bad_words
from alexatm_jax.decoding.options import (
    DecodeOptions,
    SearchKnobs,
    StaticSearch,
    length_normalizer,
    split_options,
)
from alexatm_jax.decoding.sampling import SearchOutput, initial_history, last_token, recent_tokens
from alexatm_jax.model import ModelConfig

Params = Any


class _BeamState(NamedTuple):
    step: jax.Array  # tokens generated so far by every live beam, scalar int32
    live_history: jax.Array  # [batch, beams, prefix + max_new_tokens]
    live_log_probs: jax.Array  # [batch, beams], sorted best first
    done_tokens: jax.Array  # [batch, beams, max_new_tokens]
    done_scores: jax.Array  # [batch, beams], sorted best first, -inf = empty slot
    cache: Any


def _gather_beams(x: jax.Array, beam_indices: jax.Array) -> jax.Array:
    """x[b, beam_indices[b, j], ...] for every b, j."""
    index = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def _top(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k best scores of each row (best first) and their indices."""
    return jax.lax.top_k(scores, k)


def beam_search(
    params: Params,
    encoder_tokens: jax.Array,
    encoder_segment_ids: jax.Array,
    *,
    config: ModelConfig,
    options: DecodeOptions,
    head: model_steps.OutputHead | None = None,
) -> SearchOutput:
    """Beam search for a batch of padded prompts ([batch, input_len] tokens and segment ids).

    head: `model_steps.output_head(config, params)`, computed once by callers that decode many
    batches (else it is rebuilt per call). Returns a `SearchOutput` with tokens
    [batch, beams, max_new_tokens] and length-normalised scores [batch, beams], best first.
    """
    if 2 * options.num_beams > config.vocab_size:
        raise ValueError(
            f"num_beams={options.num_beams} needs a vocabulary of at least "
            f"{2 * options.num_beams} ids"
        )
    static, knobs = split_options(options)
    return _beam_search(
        params, head, encoder_tokens, encoder_segment_ids, knobs, config=config, static=static
    )


@functools.partial(jax.jit, static_argnames=("config", "static"))
def _beam_search(
    params: Params,
    head: model_steps.OutputHead | None,
    encoder_tokens: jax.Array,
    encoder_segment_ids: jax.Array,
    knobs: SearchKnobs,
    *,
    config: ModelConfig,
    static: StaticSearch,
) -> SearchOutput:
    batch = encoder_tokens.shape[0]
    beams, steps, window = static.num_beams, static.max_new_tokens, static.bad_word_window

    encoded = model_steps.encode(config, params, encoder_tokens, encoder_segment_ids)
    head = model_steps.output_head(config, params) if head is None else head
    segments = jnp.repeat(encoder_segment_ids, beams, axis=0)
    choose = functools.partial(_choose, knobs=knobs, config=config, static=static)
    state = _initial_state(batch, config, static)

    # The first step is the same for every beam: run it once per input (this projects the cross
    # K/V once per input and creates the cache), then give each beam its own copy of the rows.
    start_tokens = jnp.full((batch,), config.decoder_start_token_id, jnp.int32)
    logits, cache = model_steps.decoder_step(
        config, params, head, None, encoded, encoder_segment_ids, start_tokens, state.step, steps
    )
    state = choose(
        state,
        jnp.repeat(logits, beams, axis=0),
        model_steps.repeat_cache_rows(cache, beams, config),
    )
    encoded = jnp.repeat(encoded, beams, axis=0)  # unused by cached steps; keeps shapes aligned

    def advance(s: _BeamState) -> _BeamState:
        logits, cache = model_steps.decoder_step(
            config,
            params,
            head,
            s.cache,
            encoded,
            segments,
            last_token(_flat(s.live_history), s.step, window),
            s.step,
            steps,
        )
        return choose(s, logits, cache)

    keep_going = lambda s: (s.step < steps) & ~jnp.all(_inputs_done(s, knobs, steps))
    state = jax.lax.while_loop(keep_going, advance, state)
    return _best_hypotheses(state, knobs, static)


def _flat(x: jax.Array) -> jax.Array:
    """[batch, beams, ...] -> [batch * beams, ...]."""
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _initial_state(batch: int, config: ModelConfig, static: StaticSearch) -> _BeamState:
    """Before the first step: one live beam per input at log-probability 0 (the others at -inf,
    so the first step's K best come from distinct tokens), no finished hypothesis, no cache."""
    beams, steps = static.num_beams, static.max_new_tokens
    first_live = jnp.where(jnp.arange(beams) == 0, 0.0, -jnp.inf)
    history = initial_history(batch, static, config.decoder_start_token_id, config.pad_token_id)
    return _BeamState(
        step=jnp.array(0, jnp.int32),
        live_history=jnp.broadcast_to(history[:, None], (batch, beams, history.shape[1])),
        live_log_probs=jnp.broadcast_to(first_live, (batch, beams)).astype(jnp.float32),
        done_tokens=jnp.full((batch, beams, steps), config.pad_token_id, jnp.int32),
        done_scores=jnp.full((batch, beams), -jnp.inf, jnp.float32),
        cache=None,
    )


def _choose(
    state: _BeamState,
    logits: jax.Array,
    cache: Any,
    *,
    knobs: SearchKnobs,
    config: ModelConfig,
    static: StaticSearch,
) -> _BeamState:
    """One beam step from the live beams' next-token `logits` [batch * beams, vocab] and the
    cache after that step: the 2K best extensions update the finished pool (those ending in EOS
    within the first K) and the live beams (the best K others); cache rows follow their beams."""
    batch, beams = state.live_log_probs.shape
    window, step = static.bad_word_window, state.step
    history = _flat(state.live_history)
    log_probs = ban_bad_words(
        jax.nn.log_softmax(logits, axis=-1),
        recent_tokens(history, step, window),
        knobs.bad_prefixes,
        knobs.bad_last_ids,
    )
    vocab = log_probs.shape[-1]
    totals = state.live_log_probs[:, :, None] + log_probs.reshape(batch, beams, vocab)
    top_totals, top_index = _top(totals.reshape(batch, beams * vocab), 2 * beams)
    source, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    candidates = _gather_beams(state.live_history, source)
    candidates = jax.lax.dynamic_update_slice_in_dim(
        candidates, token[:, :, None], window + 1 + step, axis=2
    )
    ends = token == config.eos_token_id
    length = step + 1

    in_top_k = jnp.arange(2 * beams)[None] < beams
    normalised = top_totals / length_normalizer(length, knobs.length_penalty, knobs.gnmt)
    ended_scores = jnp.where(ends & in_top_k, normalised, -jnp.inf)
    pool_scores = jnp.concatenate([state.done_scores, ended_scores], axis=1)
    pool_tokens = jnp.concatenate([state.done_tokens, candidates[:, :, window + 1 :]], axis=1)
    done_scores, keep = _top(pool_scores, beams)
    done_tokens = _gather_beams(pool_tokens, keep)

    live_log_probs, pick = _top(jnp.where(ends, -jnp.inf, top_totals), beams)
    live_history = _gather_beams(candidates, pick)
    source_rows = jnp.arange(batch)[:, None] * beams + jnp.take_along_axis(source, pick, 1)
    cache = model_steps.reorder_cache(cache, source_rows.reshape(-1), config)
    return _BeamState(length, live_history, live_log_probs, done_tokens, done_scores, cache)


def _inputs_done(s: _BeamState, knobs: SearchKnobs, steps: int) -> jax.Array:
    """[batch] bool: K hypotheses finished and no live beam can beat the worst of them, at its
    most favourable length up to `steps`."""
    alpha, kind = knobs.length_penalty, knobs.gnmt
    best_live = s.live_log_probs[:, 0]
    bound = jnp.maximum(
        best_live / length_normalizer(s.step + 1, alpha, kind),
        best_live / length_normalizer(steps, alpha, kind),
    )
    worst_done = s.done_scores[:, -1]
    return (worst_done > -jnp.inf) & (worst_done >= bound)


def _best_hypotheses(state: _BeamState, knobs: SearchKnobs, static: StaticSearch) -> SearchOutput:
    """The K best of the finished hypotheses and, for inputs not done, the live beams normalised
    at their current length."""
    beams, window = static.num_beams, static.bad_word_window
    open_inputs = ~_inputs_done(state, knobs, static.max_new_tokens)[:, None]
    live_scores = state.live_log_probs / length_normalizer(
        state.step, knobs.length_penalty, knobs.gnmt
    )
    live_scores = jnp.where(open_inputs, live_scores, -jnp.inf)
    scores, keep = _top(jnp.concatenate([state.done_scores, live_scores], axis=1), beams)
    tokens = _gather_beams(
        jnp.concatenate([state.done_tokens, state.live_history[:, :, window + 1 :]], axis=1), keep
    )
    return SearchOutput(tokens, scores)
