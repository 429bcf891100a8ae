"""The continuous engine (`SamplingConfig.scheduler = 'continuous'`): `num_slots` decode slots, and inside the same
`lax.while_loop` a slot whose sample ended is given the next pending sample (its prompt's prefilled KV copied into
the slot), so long-tailed lengths do not leave most rows idle.

Samples i = p * G + g wait in a queue in index order. Each prompt is prefilled once (P rows, or P·G rows with
share_prefill=False); a sample entering a slot gets its prompt's KV copied into the slot's prompt region and its
first token from the prompt's prefill logits. Slot n feeds its last token at its own position Tp + step_n - 1, so a
sample's computation, and its key fold_in(fold_in(rng, i), step), depend only on i: with the same rng both engines
return the same tokens, and the KV cache is num_slots × (Tp + T), not P·G × (Tp + T).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.models.logprobs import model_ids
from r1jax.models.transformer import KVCache
from r1jax.sampling.config import TRACE_COUNTS, Rollout, SamplingConfig
from r1jax.sampling.decode import DecodeState, shard_rows, stop_rule, to_rollout
from r1jax.sampling.select import row_keys, select_tokens


def decode_step_per_row(model, tokens_n, feed_n, cache: KVCache, index_n):
    """One decode step where every row writes its token at its own cache slot `index_n` (continuous batching:
    slots hold samples that started at different times). The model's cache writes all rows at one shared index,
    so the step is vmapped over rows; the weight matmuls still see the whole (N, D) batch. Rows with feed_n=False
    write a key that stays invalid and do not advance their RoPE position."""

    def one(token_1, feed_1, k, v, valid_1s, pos_1, index):
        row = KVCache(k=k, v=v, valid_bs=valid_1s, pos_b=pos_1, index=index)
        hidden_11d, row = model(token_1[:, None], mask_bt=feed_1[:, None], cache=row)
        return model.logits(hidden_11d[:, 0]), row.k, row.v, row.valid_bs, row.pos_b

    # Rows enter the vmapped function as batches of one (a reshape, not a copy of the cache).
    one_row = lambda x: x.reshape(x.shape[0], 1, *x.shape[1:])
    logits_n1v, k, v, valid_n1s, pos_n1 = jax.vmap(one)(*jax.tree.map(
        one_row, (tokens_n, feed_n, cache.k, cache.v, cache.valid_bs, cache.pos_b)
    ), index_n)
    merge = lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    k, v, valid_ns, pos_n, logits_nv = jax.tree.map(merge, (k, v, valid_n1s, pos_n1, logits_n1v))
    return logits_nv, KVCache(k=k, v=v, valid_bs=valid_ns, pos_b=pos_n, index=cache.index)



def _prefill_prompts(model, prompt_tokens_pt, prompt_mask_pt, config: SamplingConfig):
    """Each prompt prefilled once into a cache of its own length (P rows, or P·G with share_prefill=False): the
    source of every slot's prompt region and first-token logits. -> (cache, its prompt mask, logits_pv)."""
    if not config.share_prefill:
        prompt_tokens_pt = jnp.repeat(prompt_tokens_pt, config.num_samples, axis=0)
        prompt_mask_pt = jnp.repeat(prompt_mask_pt, config.num_samples, axis=0)
    pre = KVCache.init(model.cfg, prompt_tokens_pt.shape[0], prompt_tokens_pt.shape[1])
    hidden_ptd, pre = model(model_ids(prompt_tokens_pt, prompt_mask_pt), mask_bt=prompt_mask_pt, cache=pre)
    return pre, prompt_mask_pt, model.logits(hidden_ptd[:, -1])


def _source(sample_n, config: SamplingConfig):
    """The prefilled row of each slot's sample: i // G when the prefill is shared, else i (an empty slot reads 0)."""
    i_n = jnp.maximum(sample_n, 0)
    return i_n // config.num_samples if config.share_prefill else i_n


def _copy_prompts(kv, *, take_n, src_n, tp: int):
    """Each taking slot's prompt region [0, Tp) of every layer's keys (kv[0]) and values (kv[1]) from its prefilled
    row. Stale completion slots are invalidated through valid_bs by the caller."""
    put = lambda slot, pre: jax.lax.dynamic_update_slice(
        slot, jnp.where(take_n[:, None, None, None], pre[src_n], slot[:, :tp]), (0, 0, 0, 0)
    )
    return tuple(tuple(put(s, q) for s, q in zip(kv_slot, kv_pre)) for kv_slot, kv_pre in kv)


def _refill(state: DecodeState, *, pre: KVCache, prompt_mask_pt, config: SamplingConfig, mesh) -> DecodeState:
    """Free slots take the next pending samples, in slot order; their prompt KV is copied in."""
    n, b, tp = state.active_n.shape[0], state.tokens_bt.shape[0], prompt_mask_pt.shape[1]
    free_n = ~state.active_n
    cand_n = state.next_sample + jnp.cumsum(free_n, dtype=jnp.int32) - 1
    take_n = free_n & (cand_n < b)
    sample_n = jnp.where(take_n, cand_n, state.sample_n)
    src_n = _source(sample_n, config)
    cache = state.cache
    # Under a cond, so steps where no sample enters skip the (N, Tp) select.
    k, v = jax.lax.cond(
        jnp.any(take_n),
        functools.partial(_copy_prompts, take_n=take_n, src_n=src_n, tp=tp),
        lambda kv: (kv[0][0], kv[1][0]),
        ((cache.k, pre.k), (cache.v, pre.v)),
    )
    prompt_valid_ns = jnp.concatenate([prompt_mask_pt[src_n], jnp.zeros((n, config.max_new_tokens), bool)], axis=1)
    cache = KVCache(
        k=k, v=v, valid_bs=jnp.where(take_n[:, None], prompt_valid_ns, cache.valid_bs),
        pos_b=jnp.where(take_n, pre.pos_b[src_n], cache.pos_b), index=cache.index,
    )
    return shard_rows(
        state.replace(
            cache=cache,
            sample_n=sample_n,
            step_n=jnp.where(take_n, 0, state.step_n),
            active_n=state.active_n | take_n,
            fresh_n=take_n,
            tail_nk=jnp.where(take_n[:, None], -1, state.tail_nk),
            next_sample=state.next_sample + take_n.sum(dtype=jnp.int32),
        ),
        mesh,
    )


def _sample_and_record(
    state: DecodeState, logits_nv, *, prompt_logits_pv, keys_b, budget_b, config: SamplingConfig
) -> DecodeState:
    """Sample token step_n of each active slot's sample, write it at (sample, step), end the samples that the stop
    rule ends. Slots that entered this step sample from their prompt's prefill logits."""
    sample_n, step_n, active_n = state.sample_n, state.step_n, state.active_n
    n, b = active_n.shape[0], state.tokens_bt.shape[0]
    logits_nv = jnp.where(state.fresh_n[:, None], prompt_logits_pv[_source(sample_n, config)], logits_nv)
    keys_n = jax.vmap(jax.random.fold_in)(keys_b[jnp.maximum(sample_n, 0)], step_n)
    tokens_n, logps_n = select_tokens(logits_nv, keys_n, config)
    budget_n = budget_b[jnp.maximum(sample_n, 0)]
    tail_nk, stopped_n, ends_n = stop_rule(state.tail_nk, tokens_n, step_n, budget_n, config)
    row_n = jnp.where(active_n, sample_n, b)  # inactive slots write out of bounds: dropped
    put = lambda buf, val: buf.at[row_n, step_n].set(val.astype(buf.dtype), mode="drop")
    return state.replace(
        t=state.t + 1,
        tokens_bt=put(state.tokens_bt, tokens_n),
        logps_bt=put(state.logps_bt, logps_n),
        mask_bt=put(state.mask_bt, jnp.ones((n,), bool)),
        stopped_b=state.stopped_b.at[row_n].set(stopped_n & active_n, mode="drop"),
        tail_nk=tail_nk,
        last_n=jnp.where(active_n, tokens_n, state.last_n),
        step_n=jnp.where(active_n, step_n + 1, step_n),
        active_n=active_n & ~ends_n,
        fresh_n=jnp.zeros((n,), bool),
    )


def rollout_continuous(
    graphdef, params, prompt_tokens_pt, prompt_mask_pt, budget_b, rng, config: SamplingConfig, mesh
) -> Rollout:
    """G samples of each of P prompts, decoded in N = num_slots slots refilled as samples end (see the module)."""
    TRACE_COUNTS["rollout"] += 1
    model = nnx.merge(graphdef, params)
    p, tp = prompt_tokens_pt.shape
    b = p * config.num_samples
    n = min(config.num_slots or b, b)
    pre, pre_mask_pt, prompt_logits_pv = _prefill_prompts(model, prompt_tokens_pt, prompt_mask_pt, config)
    keys_b = row_keys(rng, b)
    refill = functools.partial(_refill, pre=pre, prompt_mask_pt=pre_mask_pt, config=config, mesh=mesh)
    record = functools.partial(
        _sample_and_record, prompt_logits_pv=prompt_logits_pv, keys_b=keys_b, budget_b=budget_b, config=config
    )
    slot_cache = shard_rows(KVCache.init(model.cfg, n, tp + config.max_new_tokens), mesh)
    state = refill(DecodeState.init(slot_cache, b, config, slots=True))
    state = refill(record(state, jnp.zeros((n, prompt_logits_pv.shape[1]), jnp.float32)))

    def body(state):
        feed_n = state.active_n & ~state.fresh_n
        index_n = tp + jnp.maximum(state.step_n - 1, 0)  # the fed token is completion token step_n - 1
        logits_nv, cache = decode_step_per_row(model, state.last_n, feed_n, state.cache, index_n)
        return refill(record(state.replace(cache=cache), logits_nv))

    state = jax.lax.while_loop(lambda s: jnp.any(s.active_n), body, state)
    out = shard_rows(dict(tokens_bt=state.tokens_bt, logps_bt=state.logps_bt, mask_bt=state.mask_bt), mesh)
    return to_rollout(state.replace(**out), prompt_tokens_pt, prompt_mask_pt, config)
