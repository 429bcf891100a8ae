"""What both decode engines share: the loop's state (`DecodeState`), the one stop rule, the prefill of the static
engine, the row sharding, and the `Rollout` they return.

Layout: row b = p * G + g holds sample g of prompt p (`group_b[b] = p`). Prompts are left-padded, so every prompt
ends in the cache's column Tp - 1; RoPE positions continue from each prompt's own length, so padding never shifts
them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

from r1jax.models.logprobs import model_ids
from r1jax.models.transformer import KVCache
from r1jax.sampling.config import Rollout, SamplingConfig


@struct.dataclass
class DecodeState:
    """The carry of a decode loop: N decode rows, each decoding one sample at a time, and the completions of the
    B = P·G samples they write. Static engine: row n decodes sample n from its first token to its last (N = B), and
    every row writes completion position t. Continuous engine: N slots; a slot whose sample ended takes the next
    pending sample, and each slot writes at its own position step_n (the bookkeeping fields below)."""

    cache: KVCache  # N rows × (Tp + T)
    t: jax.Array  # int32 (), sampling steps taken
    active_n: jax.Array  # bool (N,), the row's sample has neither stopped nor reached its budget
    last_n: jax.Array  # int32 (N,), the token fed to the model at the next step
    tail_nk: jax.Array  # int32 (N, K), the last K generated tokens, for stop sequences; -1 never matches
    tokens_bt: jax.Array  # int32 (B, T), pad_id where nothing was generated
    logps_bt: jax.Array  # f32 (B, T)
    mask_bt: jax.Array  # bool (B, T)
    stopped_b: jax.Array  # bool (B,), stopped by EOS or a stop sequence
    # Slot bookkeeping of the continuous engine (None under the static engine):
    sample_n: jax.Array | None = None  # int32 (N,), the sample a slot holds (-1: none yet)
    step_n: jax.Array | None = None  # int32 (N,), tokens that sample has generated so far
    fresh_n: jax.Array | None = None  # bool (N,), entered this step: its next logits come from the prefill
    next_sample: jax.Array | None = None  # int32 (), the first sample not yet given a slot

    @classmethod
    def init(cls, cache: KVCache, num_samples: int, config: SamplingConfig, *, slots: bool) -> DecodeState:
        """Nothing generated yet. `slots=False`: every row starts active on its own sample; `slots=True`: every
        slot starts empty, to be filled from the queue of samples."""
        n, b, t_new = cache.pos_b.shape[0], num_samples, config.max_new_tokens
        bookkeeping = {}
        if slots:
            bookkeeping = dict(
                sample_n=jnp.full((n,), -1, jnp.int32),
                step_n=jnp.zeros((n,), jnp.int32),
                fresh_n=jnp.zeros((n,), bool),
                next_sample=jnp.zeros((), jnp.int32),
            )
        return cls(
            cache=cache,
            t=jnp.zeros((), jnp.int32),
            active_n=jnp.full((n,), not slots),
            last_n=jnp.zeros((n,), jnp.int32),
            tail_nk=jnp.full((n, stop_window(config)), -1, jnp.int32),
            tokens_bt=jnp.full((b, t_new), config.pad_id, jnp.int32),
            logps_bt=jnp.zeros((b, t_new), jnp.float32),
            mask_bt=jnp.zeros((b, t_new), bool),
            stopped_b=jnp.zeros((b,), bool),
            **bookkeeping,
        )


def stop_window(config: SamplingConfig) -> int:
    """How many of its last tokens a row keeps to match stop sequences."""
    return max((len(s) for s in config.stop_sequences), default=1)


def stop_rule(tail_nk, tokens_n, step_n, budget_n, config: SamplingConfig):
    """The rule that ends a sample, for both engines. Given the token each row just generated at completion position
    step_n: the sample *stops* on EOS or when its last tokens spell a stop sequence (the stopping tokens stay in the
    completion mask), and *ends* when it stops or reaches its budget (then it is `truncated`).

    Returns (tail_nk with the tokens appended, stopped_n, ends_n); the caller keeps only its active rows.
    """
    tail_nk = jnp.concatenate([tail_nk[:, 1:], tokens_n[:, None]], axis=1)
    k = tail_nk.shape[1]
    stopped_n = jnp.zeros(tokens_n.shape, bool)
    if config.eos_id is not None:
        stopped_n |= tokens_n == config.eos_id
    for seq in config.stop_sequences:
        stopped_n |= jnp.all(tail_nk[:, k - len(seq) :] == jnp.asarray(seq, jnp.int32), axis=1)
    return tail_nk, stopped_n, stopped_n | (step_n + 1 >= budget_n)


def batch_spec(mesh) -> PS:
    return PS(tuple(a for a in ("data", "fsdp") if a in mesh.axis_names))


def shard_rows(tree, mesh):
    """Constrain every array with a leading batch axis to be split over the data axes (no-op without a mesh)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, batch_spec(mesh))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding) if x.ndim else x, tree)


def prefill(model, prompt_tokens_pt, prompt_mask_pt, config: SamplingConfig, mesh):
    """KV cache and next-token logits for all P * G rows, prefilling once per prompt unless share_prefill=False."""
    g = config.num_samples
    size = prompt_tokens_pt.shape[1] + config.max_new_tokens
    if not config.share_prefill:
        prompt_tokens_pt = jnp.repeat(prompt_tokens_pt, g, axis=0)
        prompt_mask_pt = jnp.repeat(prompt_mask_pt, g, axis=0)
    cache = shard_rows(KVCache.init(model.cfg, prompt_tokens_pt.shape[0], size), mesh)
    hidden_ptd, cache = model(model_ids(prompt_tokens_pt, prompt_mask_pt), mask_bt=prompt_mask_pt, cache=cache)
    logits_pv = model.logits(hidden_ptd[:, -1])  # left padding: the last column is every prompt's last token
    if config.share_prefill:
        cache, logits_pv = cache.repeat(g), jnp.repeat(logits_pv, g, axis=0)
    return shard_rows((cache, logits_pv), mesh)


def to_rollout(state: DecodeState, prompt_tokens_pt, prompt_mask_pt, config: SamplingConfig) -> Rollout:
    """The finished loop's completions as a Rollout (rows p * G + g)."""
    b = state.tokens_bt.shape[0]
    return Rollout(
        prompt_tokens_pt=prompt_tokens_pt,
        prompt_mask_pt=prompt_mask_pt,
        completion_tokens_bt=state.tokens_bt,
        completion_mask_bt=state.mask_bt,
        lengths_b=state.mask_bt.sum(axis=1, dtype=jnp.int32),
        logps_bt=state.logps_bt,
        group_b=jnp.arange(b, dtype=jnp.int32) // config.num_samples,
        truncated_b=~state.stopped_b,
        logps_kind=config.logps_kind,
    )
