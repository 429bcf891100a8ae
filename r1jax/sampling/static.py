"""The static engine: all P·G rows decode as one batch until the longest stops (`SamplingConfig.scheduler =
'static'`).

Each prompt is prefilled once and its KV cache repeated to its G samples (G× fewer prefill FLOPs than prefilling
every copy). Decoding is one `lax.while_loop` that samples a token per row per step, writes every row's token at
completion position t, stops rows by the stop rule, and ends early once every row has ended. Row b uses key
fold_in(fold_in(rng, b), t) at step t.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.models.logprobs import model_ids
from r1jax.sampling.config import TRACE_COUNTS, Rollout, SamplingConfig
from r1jax.sampling.decode import DecodeState, prefill, shard_rows, stop_rule, to_rollout
from r1jax.sampling.select import row_keys, select_tokens, step_keys


def _record(state: DecodeState, tokens_b, logps_b, *, budget_b, config: SamplingConfig, mesh) -> DecodeState:
    """Write step t's tokens (padding in rows that have ended), end the rows that the stop rule ends."""
    t, active_b = state.t, state.active_n
    tokens_b = jnp.where(active_b, tokens_b, config.pad_id)
    logps_b = jnp.where(active_b, logps_b, 0.0)
    tail_bk, stopped_b, ends_b = stop_rule(state.tail_nk, tokens_b, t, budget_b, config)
    put = lambda buf, col: jax.lax.dynamic_update_slice(buf, col[:, None].astype(buf.dtype), (0, t))
    return shard_rows(
        state.replace(
            t=t + 1,
            tokens_bt=put(state.tokens_bt, tokens_b),
            logps_bt=put(state.logps_bt, logps_b),
            mask_bt=put(state.mask_bt, active_b),
            tail_nk=tail_bk,
            active_n=active_b & ~ends_b,
            stopped_b=state.stopped_b | (active_b & stopped_b),
            last_n=model_ids(tokens_b, active_b),
        ),
        mesh,
    )


def rollout_static(
    graphdef, params, prompt_tokens_pt, prompt_mask_pt, budget_b, rng, config: SamplingConfig, mesh
) -> Rollout:
    """G samples of each of P prompts, decoded as one batch of P·G rows."""
    TRACE_COUNTS["rollout"] += 1
    model = nnx.merge(graphdef, params)
    b = prompt_tokens_pt.shape[0] * config.num_samples
    cache, logits_bv = prefill(model, prompt_tokens_pt, prompt_mask_pt, config, mesh)
    keys_b = shard_rows(row_keys(rng, b), mesh)
    record = functools.partial(_record, budget_b=budget_b, config=config, mesh=mesh)
    state = shard_rows(DecodeState.init(cache, b, config, slots=False), mesh)
    state = record(state, *select_tokens(logits_bv, step_keys(keys_b, 0), config))

    def cond(state):
        return (state.t < config.max_new_tokens) & jnp.any(state.active_n)

    def body(state):
        logits_bv, cache = decode_logits(model, state.last_n, state.cache)
        tokens_b, logps_b = select_tokens(logits_bv, step_keys(keys_b, state.t), config)
        return record(state.replace(cache=cache), tokens_b, logps_b)

    state = jax.lax.while_loop(cond, body, state)
    return to_rollout(state, prompt_tokens_pt, prompt_mask_pt, config)


def decode_logits(model, last_b, cache):
    """One static decode step's forward: each row's last token at the cache's shared index -> (f32 logits (B, V),
    cache). The body of the static decode loop; r1jax/compile.py compiles it alone for the per-token roofline."""
    hidden_b1d, cache = model(last_b[:, None], cache=cache)
    return model.logits(hidden_b1d[:, 0]), cache
