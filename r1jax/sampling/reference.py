"""The oracle of the sampler: greedy decoding without a KV cache, the full forward re-run at every step over a
fixed-size buffer. Slow (every step costs a full forward) and obviously right; tests compare the engines' greedy
tokens with it, and the rollout benchmark uses it as the baseline."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.models.logprobs import model_ids
from r1jax.sampling.config import TRACE_COUNTS, SamplingConfig
from r1jax.sampling.padding import cut_at_eos, pad_prompts


def no_cache_step(graphdef, params, buf_bt, prompt_mask_bt, t, tp: int):
    """Step t of greedy decoding without a cache: the full forward over the fixed-size buffer
    [left-padded prompt (tp) ; generated], generated tokens masked in up to step t; writes token t at tp + t."""
    model = nnx.merge(graphdef, params)
    slots_s = jnp.arange(buf_bt.shape[1])
    mask_bt = prompt_mask_bt | ((slots_s >= tp) & (slots_s < tp + t))
    hidden_btd, _ = model(model_ids(buf_bt, mask_bt), mask_bt=mask_bt)
    h_bd = jax.lax.dynamic_index_in_dim(hidden_btd, tp - 1 + t, axis=1, keepdims=False)
    next_b = jnp.argmax(model.logits(h_bd), axis=-1).astype(jnp.int32)
    return jax.lax.dynamic_update_slice(buf_bt, next_b[:, None], (0, tp + t))


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _reference_greedy(graphdef, params, tokens_pt, mask_pt, max_new_tokens):
    TRACE_COUNTS["reference"] += 1
    p, tp = tokens_pt.shape
    buf_pt = jnp.concatenate([tokens_pt, jnp.zeros((p, max_new_tokens), jnp.int32)], axis=1)
    prompt_mask_pt = jnp.concatenate([mask_pt, jnp.zeros((p, max_new_tokens), bool)], axis=1)
    step = lambda t, buf: no_cache_step(graphdef, params, buf, prompt_mask_pt, t, tp)
    return jax.lax.fori_loop(0, max_new_tokens, step, buf_pt)[:, tp:]


def reference_generate(
    model, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int, eos_id: int | None = None, prompt_bucket=32
) -> list[list[int]]:
    """Greedy decoding without a KV cache (the full forward re-run at every step): the test oracle and the
    benchmark's baseline. Returns one completion per prompt, cut at the first EOS (excluded)."""
    graphdef, params = nnx.split(model)
    tokens_pt, mask_pt = pad_prompts(prompt_ids, SamplingConfig(prompt_bucket=prompt_bucket))
    out_pt = jax.device_get(_reference_greedy(graphdef, params, tokens_pt, mask_pt, max_new_tokens))
    return [cut_at_eos(row, eos_id) for row in out_pt]
