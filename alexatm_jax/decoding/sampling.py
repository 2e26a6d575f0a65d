"""Greedy search and ancestral sampling as one jitted `lax.while_loop` over cached decoder steps.

Every row decodes in lockstep. A row that emitted EOS is finished: it emits the pad id from then
on and its score stops changing. The loop ends after `max_new_tokens` steps or as soon as every
row is finished.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from alexatm_jax.decoding import model_steps
from alexatm_jax.decoding.logits_processing import (
    BEFORE_START,
    ban_bad_words,
    first_argmax,
    sampling_logits,
    token_log_probs,
)
from alexatm_jax.decoding.options import DecodeOptions, SearchKnobs, StaticSearch, split_options
from alexatm_jax.model import ModelConfig

Params = Any


class SearchOutput(NamedTuple):
    """Decoded ids and their log-probabilities.

    tokens: [batch, max_new_tokens] (greedy/sampling) or [batch, beams, max_new_tokens] (beam
        search, best first); positions after EOS hold the pad id.
    scores: [batch] or [batch, beams]: summed model log-probabilities (natural log) of the emitted
        tokens, EOS included; for beam search divided by the length normaliser.
    """

    tokens: jax.Array
    scores: jax.Array


class _LoopState(NamedTuple):
    step: jax.Array  # next position to fill, scalar int32
    history: jax.Array  # [batch, prefix + max_new_tokens]: sentinels, start id, emitted ids
    finished: jax.Array  # [batch] bool
    scores: jax.Array  # [batch] float32
    cache: Any


def initial_history(batch: int, static: StaticSearch, start_id: int, pad_id: int) -> jax.Array:
    """[batch, window + 1 + max_new_tokens]: bad-word window sentinels, the start id, pad ids."""
    row = jnp.concatenate(
        [
            jnp.full((static.bad_word_window,), BEFORE_START, jnp.int32),
            jnp.array([start_id], jnp.int32),
            jnp.full((static.max_new_tokens,), pad_id, jnp.int32),
        ]
    )
    return jnp.broadcast_to(row, (batch, row.shape[0]))


def recent_tokens(history: jax.Array, step: jax.Array, window: int) -> jax.Array:
    """The `window` ids before position `step` (the start id is the one before step 0)."""
    return jax.lax.dynamic_slice_in_dim(history, step + 1, window, axis=1)


def last_token(history: jax.Array, step: jax.Array, window: int) -> jax.Array:
    """The decoder input for position `step`: the id just before it (the start id at step 0)."""
    return jax.lax.dynamic_index_in_dim(history, window + step, axis=1, keepdims=False)


def greedy_or_sample(
    params: Params,
    encoder_tokens: jax.Array,
    encoder_segment_ids: jax.Array,
    rng: jax.Array,
    *,
    config: ModelConfig,
    options: DecodeOptions,
    head: model_steps.OutputHead | None = None,
) -> SearchOutput:
    """Greedy search (options.sample False) or sampling, for a batch of padded prompts.

    encoder_tokens / encoder_segment_ids: [batch, input_len] int32, segment 1 = real, 0 = pad.
    rng: a PRNG key (unused by greedy search). head: `model_steps.output_head(config, params)`,
    computed once by callers that decode many batches (else it is rebuilt per call).
    Returns a `SearchOutput` with [batch] scores.
    """
    static, knobs = split_options(options)
    return _greedy_or_sample(
        params, head, encoder_tokens, encoder_segment_ids, rng, knobs, config=config, static=static
    )


@functools.partial(jax.jit, static_argnames=("config", "static"))
def _greedy_or_sample(
    params: Params,
    head: model_steps.OutputHead | None,
    encoder_tokens: jax.Array,
    encoder_segment_ids: jax.Array,
    rng: jax.Array,
    knobs: SearchKnobs,
    *,
    config: ModelConfig,
    static: StaticSearch,
) -> SearchOutput:
    batch, steps, window = encoder_tokens.shape[0], static.max_new_tokens, static.bad_word_window
    encoded = model_steps.encode(config, params, encoder_tokens, encoder_segment_ids)
    head = model_steps.output_head(config, params) if head is None else head

    def choose(state: _LoopState, logits: jax.Array, cache) -> _LoopState:
        step = state.step
        allowed = ban_bad_words(
            logits,
            recent_tokens(state.history, step, window),
            knobs.bad_prefixes,
            knobs.bad_last_ids,
        )
        if static.sample:
            filtered = sampling_logits(allowed, knobs.temperature, knobs.top_k, knobs.top_p)
            token = jax.random.categorical(jax.random.fold_in(rng, step), filtered, axis=-1)
        else:
            token = first_argmax(allowed)
        token = jnp.where(state.finished, config.pad_token_id, token.astype(jnp.int32))
        token_log_prob = token_log_probs(logits, token)
        scores = state.scores + jnp.where(state.finished, 0.0, token_log_prob)
        history = jax.lax.dynamic_update_slice_in_dim(
            state.history, token[:, None], window + 1 + step, axis=1
        )
        finished = state.finished | (token == config.eos_token_id)
        return _LoopState(step + 1, history, finished, scores, cache)

    def advance(state: _LoopState) -> _LoopState:
        logits, cache = model_steps.decoder_step(
            config,
            params,
            head,
            state.cache,
            encoded,
            encoder_segment_ids,
            last_token(state.history, state.step, window),
            state.step,
            steps,
        )
        return choose(state, logits, cache)

    state = _LoopState(
        step=jnp.array(0, jnp.int32),
        history=initial_history(batch, static, config.decoder_start_token_id, config.pad_token_id),
        finished=jnp.zeros((batch,), jnp.bool_),
        scores=jnp.zeros((batch,), jnp.float32),
        cache=None,
    )
    state = advance(state)  # creates the cache (its structure must exist before the loop)
    keep_going = lambda s: (s.step < steps) & ~jnp.all(s.finished)
    state = jax.lax.while_loop(keep_going, advance, state)
    return SearchOutput(state.history[:, window + 1 :], state.scores)
