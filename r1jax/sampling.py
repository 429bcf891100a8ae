"""Group rollouts with a KV cache: P prompts, G samples each, one jitted decode loop per shape bucket.

The sampler of GRPO (DESIGN.md, "Data flow of one RL step"): prompts are left-padded on the host to a bucketed
length, prefilled once per prompt, and the prompt's KV cache is repeated to its G samples (G× fewer prefill FLOPs
than prefilling every copy). Decoding is one `lax.while_loop` that samples a token per row per step (temperature,
top-k, top-p or greedy), stops a row on EOS or on any stop sequence, and ends early once every row is done. The
whole rollout is a single jitted function of (params, prompt arrays, rng): the trainer passes updated params without
recompiling, and nothing returns to the host between tokens.

Layout: row b = p * G + g holds sample g of prompt p (`group_b[b] = p`). Every row writes at the same cache slot
(prompts are left-padded), RoPE positions continue from each prompt's own length, so padding never shifts them.

Schedulers (`SamplingConfig.scheduler`): 'static' decodes all P·G rows as one batch until the longest stops;
'continuous' decodes `num_slots` rows and, inside the same `lax.while_loop`, gives a slot whose sample stopped to
the next pending sample (its prompt's prefilled KV copied into the slot), so long-tailed lengths do not leave most
rows idle. Each slot writes at its own position, so a sample's tokens do not depend on its slot or start step: with
the same rng both schedulers return the same tokens, and the KV cache is num_slots × (Tp + T), not P·G × (Tp + T).

Randomness: row b uses key fold_in(fold_in(rng, b), t) at step t, so a row's sample depends only on (rng, b, its
logits), not on the batch size, the mesh, the scheduler, or whether its prefill was shared. A token is drawn by
inverse CDF over blocks of ids and then within a block (two uniforms per row and step), not by Gumbel-max, whose V
random numbers per row would dominate a decode step at V = 151,936.

Log-probs recorded by the sampler (`Rollout.logps_kind`):
  'raw'        the model's own distribution softmax(logits): temperature 1 without top-k/top-p, and also greedy
               decoding (whose sampling distribution is a point mass, so the raw log-probs are the useful ones).
               Equal to `completion_logps(..., temperature=1)`.
  'tempered'   softmax(logits / T) with T != 1 and no truncation; equal to `completion_logps(..., temperature=T)`.
  'truncated'  the renormalised top-k / top-p distribution actually sampled from; no forward pass reproduces it,
               so a trainer that needs pi_old should recompute with `completion_logps` instead.

Top-p at vocabulary scale: the nucleus is looked for among the `top_p_prefilter` most likely tokens (`lax.top_k`,
no sort of the vocabulary) and the vocabulary is sorted only for rows whose nucleus does not fit there.

Simplifications: no repetition penalty, min-p, or beam search.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

from r1jax import distributed
from r1jax.kernels.grouped_logprob.api import grouped_logprob
from r1jax.models.transformer import KVCache

BUCKET_MODES = ("pow2", "multiple")
LOGPS_KINDS = ("raw", "tempered", "truncated")
SCHEDULERS = ("static", "continuous")

# Incremented when a function of this module is traced (i.e. compiled for a new shape / config); tests read it to
# check that a stream of batches of varying lengths compiles a bounded number of times.
TRACE_COUNTS: collections.Counter = collections.Counter()


# ----------------------------------------------------------------------------------------------------------------
# Config and the rollout record
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Frozen and hashable: it is a static argument of the jitted rollout."""

    num_samples: int = 1  # G, samples per prompt
    max_new_tokens: int = 64  # completion buffer length; a row that reaches it unstopped is `truncated`
    temperature: float = 1.0  # T > 0; ignored when greedy
    top_p: float = 1.0  # nucleus: smallest set of tokens with mass >= top_p (1.0 = off)
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p_prefilter: int = 256  # top-p looks for the nucleus among this many most likely tokens (full sort if not)
    greedy: bool = False  # argmax instead of sampling
    eos_id: int | None = None  # stops a row; included in the completion mask
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # token-id sequences that stop a row (included in the mask)
    pad_id: int = 0  # fills prompt padding and completion slots after a row stops
    prompt_bucket: int = 32  # prompts are padded to a bucketed length: the minimum / the granularity
    completion_bucket: int = 0  # >0: trim the completion axis to a bucketed max(lengths) on the host (0 = keep all)
    bucket_mode: str = "pow2"  # 'pow2': bucket * 2^k; 'multiple': a multiple of the bucket
    share_prefill: bool = True  # False prefills each of the G copies separately (G× FLOPs; tests and benchmarks)
    scheduler: str = "static"  # 'static': one batch of P·G rows; 'continuous': num_slots rows refilled as rows stop
    num_slots: int = 0  # continuous: decode slots (0 = P·G, i.e. no refills); must be 0 for 'static'

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"sampling.num_samples={self.num_samples}: need at least 1 sample per prompt")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens={self.max_new_tokens}: must be at least 1")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"sampling.temperature={self.temperature}: must be > 0 unless greedy=True")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p={self.top_p}: must be in (0, 1]")
        if self.top_p_prefilter < 1:
            raise ValueError(f"sampling.top_p_prefilter={self.top_p_prefilter}: must be >= 1")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k={self.top_k}: must be >= 0 (0 = off)")
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError(f"sampling.stop_sequences={self.stop_sequences}: empty stop sequence")
        if not all(isinstance(s, tuple) for s in self.stop_sequences):
            raise ValueError(f"sampling.stop_sequences={self.stop_sequences}: must be a tuple of tuples (hashable)")
        if self.pad_id < 0:
            raise ValueError(f"sampling.pad_id={self.pad_id}: must be a non-negative token id")
        if self.prompt_bucket < 1 or self.completion_bucket < 0:
            raise ValueError(
                f"sampling.prompt_bucket={self.prompt_bucket}, completion_bucket={self.completion_bucket}: "
                "prompt_bucket must be >= 1 and completion_bucket >= 0"
            )
        if self.bucket_mode not in BUCKET_MODES:
            raise ValueError(f"sampling.bucket_mode={self.bucket_mode!r}: expected one of {BUCKET_MODES}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"sampling.scheduler={self.scheduler!r}: expected one of {SCHEDULERS}")
        if self.num_slots < 0:
            raise ValueError(f"sampling.num_slots={self.num_slots}: must be >= 0 (0 = one slot per sample)")
        if self.num_slots and self.scheduler == "static":
            raise ValueError(
                f"sampling.num_slots={self.num_slots} with sampling.scheduler='static': slots are a setting of the "
                "'continuous' scheduler (the static one decodes all P·G rows at once)"
            )

    def replace(self, **kw) -> SamplingConfig:
        return dataclasses.replace(self, **kw)

    @property
    def logps_kind(self) -> str:
        """Which distribution the sampler's log-probs are under (see the module docstring)."""
        if self.greedy or (self.top_k == 0 and self.top_p == 1.0 and self.temperature == 1.0):
            return "raw"
        if self.top_k == 0 and self.top_p == 1.0:
            return "tempered"
        return "truncated"


@struct.dataclass
class Rollout:
    """P prompts × G completions. Row b = p * G + g; B = P * G; T = max_new_tokens (or its trimmed bucket)."""

    prompt_tokens_pt: jax.Array  # int32 (P, Tp), left-padded with pad_id
    prompt_mask_pt: jax.Array  # bool (P, Tp), True on real prompt tokens
    completion_tokens_bt: jax.Array  # int32 (B, T), pad_id after the row stopped
    completion_mask_bt: jax.Array  # bool (B, T), True up to and including the EOS / last stop-sequence token
    lengths_b: jax.Array  # int32 (B,), completion_mask_bt.sum(1)
    logps_bt: jax.Array  # f32 (B, T), log-prob of each sampled token (0 where masked); see logps_kind
    group_b: jax.Array  # int32 (B,), prompt index p of each row
    truncated_b: jax.Array  # bool (B,), no EOS / stop sequence within max_new_tokens
    logps_kind: str = struct.field(pytree_node=False, default="raw")  # 'raw' | 'tempered' | 'truncated'

    @property
    def num_samples(self) -> int:
        return self.completion_tokens_bt.shape[0] // self.prompt_tokens_pt.shape[0]


# ----------------------------------------------------------------------------------------------------------------
# Token selection (pure, testable on given logits)
# ----------------------------------------------------------------------------------------------------------------


def process_logits(logits_bv: jax.Array, config: SamplingConfig) -> jax.Array:
    """Logits of the distribution sampled from: divided by T, then top-k, then top-p (HF's warper order).

    Removed tokens get -inf. Ties at the top-k / top-p boundary are all kept.
    """
    x = logits_bv.astype(jnp.float32) / config.temperature
    if config.top_k > 0 and config.top_k < x.shape[-1]:
        kth_b1 = jax.lax.top_k(x, config.top_k)[0][..., -1:]
        x = jnp.where(x < kth_b1, -jnp.inf, x)
    if config.top_p < 1.0:
        x = jnp.where(x < _nucleus_cutoff(x, config.top_p, config.top_p_prefilter), -jnp.inf, x)
    return x


def _nucleus_cutoff_of_sorted(sorted_bm: jax.Array, lse_b1: jax.Array, top_p: float) -> jax.Array:
    """Smallest kept logit (B, 1), given the m largest logits in descending order and the log-normaliser over the
    whole vocabulary: a token is kept iff the mass strictly before it is < top_p (the one crossing stays in)."""
    probs_bm = jnp.exp(sorted_bm - lse_b1)
    mass_before_bm = jnp.cumsum(probs_bm, axis=-1) - probs_bm
    return jnp.min(jnp.where(mass_before_bm < top_p, sorted_bm, jnp.inf), axis=-1, keepdims=True)


def _nucleus_cutoff(x_bv: jax.Array, top_p: float, prefilter: int) -> jax.Array:
    """Top-p cutoff without sorting the vocabulary: the nucleus is searched among the `prefilter` largest logits
    (`lax.top_k`), which is exact whenever their mass reaches top_p; rows where it does not (a flat distribution)
    take the cutoff from a full sort, computed only when some row of the batch needs it."""
    lse_b1 = jax.nn.logsumexp(x_bv, axis=-1, keepdims=True)
    full = lambda: _nucleus_cutoff_of_sorted(-jnp.sort(-x_bv, axis=-1), lse_b1, top_p)
    m = min(prefilter, x_bv.shape[-1])
    if m == x_bv.shape[-1]:
        return full()
    top_bm = jax.lax.top_k(x_bv, m)[0]
    cutoff_b1 = _nucleus_cutoff_of_sorted(top_bm, lse_b1, top_p)
    fits_b1 = jnp.sum(jnp.exp(top_bm - lse_b1), axis=-1, keepdims=True) >= top_p
    return jax.lax.cond(jnp.all(fits_b1), lambda: cutoff_b1, lambda: jnp.where(fits_b1, cutoff_b1, full()))


def select_tokens(logits_bv: jax.Array, keys_b: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """One token per row from f32 logits (B, V) with one PRNG key per row -> (tokens_b int32, logps_b f32).

    logps_b are under the distribution named by `config.logps_kind`.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if config.greedy:
        tokens_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        logp_bv = jax.nn.log_softmax(logits_bv, axis=-1)
        logps_b = jnp.take_along_axis(logp_bv, tokens_b[:, None], axis=-1)[:, 0]
    else:
        x_bv = process_logits(logits_bv, config)
        tokens_b, max_b, log_mass_b = _categorical(x_bv, keys_b)
        # (x - max) - log(mass), in log_softmax's order: the recorded log-probs match `completion_logps`.
        logps_b = (jnp.take_along_axis(x_bv, tokens_b[:, None], axis=-1)[:, 0] - max_b) - log_mass_b
    return tokens_b, logps_b


_BLOCK = 128  # ids per block of the two-level inverse-CDF draw


def _inverse_cdf(w_bn: jax.Array, u_b: jax.Array) -> jax.Array:
    """Per row, the index i with cumsum(w)[i-1] <= u·sum(w) < cumsum(w)[i] (u in [0, 1)): a draw with probabilities
    w / sum(w). Never an index of weight 0: rounding past the end falls back to the last positive weight."""
    c_bn = jnp.cumsum(w_bn, axis=-1)
    i_b = jnp.sum(c_bn <= u_b[:, None] * c_bn[:, -1:], axis=-1)
    last_b = w_bn.shape[-1] - 1 - jnp.argmax((w_bn > 0)[:, ::-1], axis=-1)
    return jnp.minimum(i_b, last_b).astype(jnp.int32)


def _categorical(x_bv: jax.Array, keys_b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One draw per row from softmax(x_bv) (-inf entries are never drawn) -> (tokens_b, max_b, log_mass_b), where
    logsumexp(x_bv) = max_b + log_mass_b.

    Inverse CDF in two levels: a block of _BLOCK consecutive ids by its mass, then an id inside it, from two
    uniforms per row. The cost is one exp and a few adds per logit; a Gumbel-max draw would need V random numbers
    per row, which at V = 151,936 costs more than the rest of a small model's decode step.
    """
    b, v = x_bv.shape
    r = -(-v // _BLOCK)
    x_brc = jnp.pad(x_bv, ((0, 0), (0, r * _BLOCK - v)), constant_values=-jnp.inf).reshape(b, r, _BLOCK)
    max_b = jnp.max(x_bv, axis=-1)
    w_brc = jnp.exp(x_brc - max_b[:, None, None])
    mass_br = w_brc.sum(-1)
    u_b2 = jax.vmap(lambda k: jax.random.uniform(k, (2,), jnp.float32))(keys_b)
    block_b = _inverse_cdf(mass_br, u_b2[:, 0])
    w_bc = jnp.take_along_axis(w_brc, block_b[:, None, None], axis=1)[:, 0]
    tokens_b = block_b * _BLOCK + _inverse_cdf(w_bc, u_b2[:, 1])
    return tokens_b, max_b, jnp.log(mass_br.sum(-1))


def row_keys(rng: jax.Array, num_rows: int) -> jax.Array:
    """One key per row, fold_in(rng, b): a row's randomness does not depend on the batch it is in."""
    return jax.vmap(lambda b: jax.random.fold_in(rng, b))(jnp.arange(num_rows, dtype=jnp.uint32))


def _step_keys(keys_b: jax.Array, t) -> jax.Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_b)


# ----------------------------------------------------------------------------------------------------------------
# Host-side padding and buckets
# ----------------------------------------------------------------------------------------------------------------


def bucket_length(n: int, bucket: int, mode: str = "pow2") -> int:
    """Smallest bucketed length >= n: bucket * 2^k ('pow2') or a multiple of bucket ('multiple')."""
    if mode == "pow2":
        size = bucket
        while size < n:
            size *= 2
        return size
    return max(1, -(-n // bucket)) * bucket


def pad_prompts(prompts: Sequence[Sequence[int]], config: SamplingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token-id lists to a bucketed length -> (tokens_pt int32, mask_pt bool), numpy on the host."""
    if len(prompts) == 0:
        raise ValueError("prompts=[]: need at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompts[{lengths.index(0)}] is empty: every prompt needs at least one token")
    tp = bucket_length(max(lengths), config.prompt_bucket, config.bucket_mode)
    tokens_pt = np.full((len(prompts), tp), config.pad_id, np.int32)
    mask_pt = np.zeros((len(prompts), tp), bool)
    for i, p in enumerate(prompts):
        tokens_pt[i, tp - len(p) :] = p
        mask_pt[i, tp - len(p) :] = True
    return tokens_pt, mask_pt


# ----------------------------------------------------------------------------------------------------------------
# The jitted rollout
# ----------------------------------------------------------------------------------------------------------------


def _batch_spec(mesh) -> PS:
    return PS(tuple(a for a in ("data", "fsdp") if a in mesh.axis_names))


def _shard_rows(tree, mesh):
    """Constrain every array with a leading batch axis to be split over the data axes (no-op without a mesh)."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, _batch_spec(mesh))
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding) if x.ndim else x, tree)


def _split(model_or_graphdef, params):
    if isinstance(model_or_graphdef, nnx.Module):
        graphdef, state = nnx.split(model_or_graphdef)
        return graphdef, state if params is None else params
    if params is None:
        raise ValueError("params=None: pass the params State together with a GraphDef (or pass the model itself)")
    return model_or_graphdef, params


def _model_ids(tokens, mask):
    """Token ids fed to the model: padding becomes id 0, so a pad_id outside the vocabulary cannot put NaN
    embeddings into masked keys (a masked key has weight 0, but 0 * NaN is NaN)."""
    return jnp.where(mask, tokens, 0)


def prefill(model, prompt_tokens_pt, prompt_mask_pt, config: SamplingConfig, mesh):
    """KV cache and next-token logits for all P * G rows, prefilling once per prompt unless share_prefill=False."""
    g = config.num_samples
    size = prompt_tokens_pt.shape[1] + config.max_new_tokens
    if not config.share_prefill:
        prompt_tokens_pt = jnp.repeat(prompt_tokens_pt, g, axis=0)
        prompt_mask_pt = jnp.repeat(prompt_mask_pt, g, axis=0)
    cache = _shard_rows(KVCache.init(model.cfg, prompt_tokens_pt.shape[0], size), mesh)
    hidden_ptd, cache = model(_model_ids(prompt_tokens_pt, prompt_mask_pt), mask_bt=prompt_mask_pt, cache=cache)
    logits_pv = model.logits(hidden_ptd[:, -1])  # left padding: the last column is every prompt's last token
    if config.share_prefill:
        cache, logits_pv = cache.repeat(g), jnp.repeat(logits_pv, g, axis=0)
    return _shard_rows((cache, logits_pv), mesh)


def _rollout(graphdef, params, prompt_tokens_pt, prompt_mask_pt, budget_b, rng, config: SamplingConfig, mesh):
    TRACE_COUNTS["rollout"] += 1
    model = nnx.merge(graphdef, params)
    p, g, t_new = prompt_tokens_pt.shape[0], config.num_samples, config.max_new_tokens
    b = p * g
    cache, logits_bv = prefill(model, prompt_tokens_pt, prompt_mask_pt, config, mesh)
    keys_b = _shard_rows(row_keys(rng, b), mesh)
    k_stop = max((len(s) for s in config.stop_sequences), default=1)

    def record(state, tokens_b, logps_b):
        """Write step t's tokens, mark rows that stop on them."""
        t, active_b = state["t"], ~state["done_b"]
        tokens_b = jnp.where(active_b, tokens_b, config.pad_id)
        logps_b = jnp.where(active_b, logps_b, 0.0)
        tail_bk = jnp.concatenate([state["tail_bk"][:, 1:], tokens_b[:, None]], axis=1)
        stop_b = jnp.zeros((b,), bool)
        if config.eos_id is not None:
            stop_b |= tokens_b == config.eos_id
        for seq in config.stop_sequences:
            stop_b |= jnp.all(tail_bk[:, k_stop - len(seq) :] == jnp.asarray(seq, jnp.int32), axis=1)
        put = lambda buf, col: jax.lax.dynamic_update_slice(buf, col[:, None].astype(buf.dtype), (0, t))
        return _shard_rows(
            dict(
                state,
                t=t + 1,
                tokens_bt=put(state["tokens_bt"], tokens_b),
                logps_bt=put(state["logps_bt"], logps_b),
                mask_bt=put(state["mask_bt"], active_b),
                tail_bk=tail_bk,
                done_b=state["done_b"] | (active_b & (stop_b | (t + 1 >= budget_b))),
                stopped_b=state["stopped_b"] | (active_b & stop_b),
                last_b=_model_ids(tokens_b, active_b),
            ),
            mesh,
        )

    state = dict(
        t=jnp.zeros((), jnp.int32),
        cache=cache,
        tokens_bt=jnp.full((b, t_new), config.pad_id, jnp.int32),
        logps_bt=jnp.zeros((b, t_new), jnp.float32),
        mask_bt=jnp.zeros((b, t_new), bool),
        tail_bk=jnp.full((b, k_stop), -1, jnp.int32),  # last generated tokens, for stop sequences; -1 never matches
        done_b=jnp.zeros((b,), bool),  # stopped or at its budget
        stopped_b=jnp.zeros((b,), bool),  # stopped by EOS or a stop sequence
        last_b=jnp.zeros((b,), jnp.int32),
    )
    state = record(_shard_rows(state, mesh), *select_tokens(logits_bv, _step_keys(keys_b, 0), config))

    def cond(state):
        return (state["t"] < t_new) & ~jnp.all(state["done_b"])

    def body(state):
        logits_bv, cache = decode_logits(model, state["last_b"], state["cache"])
        tokens_b, logps_b = select_tokens(logits_bv, _step_keys(keys_b, state["t"]), config)
        return record(dict(state, cache=cache), tokens_b, logps_b)

    state = jax.lax.while_loop(cond, body, state)
    return Rollout(
        prompt_tokens_pt=prompt_tokens_pt,
        prompt_mask_pt=prompt_mask_pt,
        completion_tokens_bt=state["tokens_bt"],
        completion_mask_bt=state["mask_bt"],
        lengths_b=state["mask_bt"].sum(axis=1, dtype=jnp.int32),
        logps_bt=state["logps_bt"],
        group_b=jnp.arange(b, dtype=jnp.int32) // g,
        truncated_b=~state["stopped_b"],
        logps_kind=config.logps_kind,
    )


def decode_logits(model, last_b, cache: KVCache):
    """One static decode step's forward: each row's last token at the cache's shared index -> (f32 logits (B, V),
    cache). The body of the static decode loop; r1jax/compile.py compiles it alone for the per-token roofline."""
    hidden_b1d, cache = model(last_b[:, None], cache=cache)
    return model.logits(hidden_b1d[:, 0]), cache


def _decode_step_per_row(model, tokens_n, feed_n, cache: KVCache, index_n):
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


def _rollout_continuous(
    graphdef, params, prompt_tokens_pt, prompt_mask_pt, budget_b, rng, config: SamplingConfig, mesh
):
    """Continuous batching: N decode slots; when a sample stops, the next pending sample takes its slot.

    Samples i = p * G + g wait in a queue in index order. Each prompt is prefilled once (P rows, or P·G rows with
    share_prefill=False); a sample entering a slot gets its prompt's KV copied into the slot's prompt region and
    its first token from the prompt's prefill logits. Slot n feeds its last token at its own position
    Tp + step_n - 1, so a sample's computation, and its key fold_in(fold_in(rng, i), step), depend only on i.
    The cache is N × (Tp + T) per layer, whatever P·G is.
    """
    TRACE_COUNTS["rollout"] += 1
    model = nnx.merge(graphdef, params)
    p, tp = prompt_tokens_pt.shape
    g, t_new = config.num_samples, config.max_new_tokens
    b = p * g
    n = min(config.num_slots or b, b)
    k_stop = max((len(s) for s in config.stop_sequences), default=1)

    # -- prefill once per prompt: the source of every slot's prompt region and first-token logits --------------
    if not config.share_prefill:
        prompt_tokens_pt = jnp.repeat(prompt_tokens_pt, g, axis=0)
        prompt_mask_pt = jnp.repeat(prompt_mask_pt, g, axis=0)
    src_of = (lambda i: i // g) if config.share_prefill else (lambda i: i)
    pre = KVCache.init(model.cfg, prompt_tokens_pt.shape[0], tp)
    hidden_ptd, pre = model(_model_ids(prompt_tokens_pt, prompt_mask_pt), mask_bt=prompt_mask_pt, cache=pre)
    prompt_logits_pv = model.logits(hidden_ptd[:, -1])
    pre_k, pre_v, pre_pos_p = pre.k, pre.v, pre.pos_b

    keys_b = row_keys(rng, b)
    slots = _shard_rows(KVCache.init(model.cfg, n, tp + t_new), mesh)
    state = dict(
        cache=slots,
        sample_n=jnp.full((n,), -1, jnp.int32),  # sample index held by each slot (-1: none yet)
        step_n=jnp.zeros((n,), jnp.int32),  # tokens its sample has generated so far
        active_n=jnp.zeros((n,), bool),
        fresh_n=jnp.zeros((n,), bool),  # entered this step: its next logits come from the prefill
        last_n=jnp.zeros((n,), jnp.int32),
        tail_nk=jnp.full((n, k_stop), -1, jnp.int32),
        next_sample=jnp.zeros((), jnp.int32),
        tokens_bt=jnp.full((b, t_new), config.pad_id, jnp.int32),
        logps_bt=jnp.zeros((b, t_new), jnp.float32),
        mask_bt=jnp.zeros((b, t_new), bool),
        stopped_b=jnp.zeros((b,), bool),
    )

    def refill(state):
        """Free slots take the next pending samples, in slot order; their prompt KV is copied in."""
        free_n = ~state["active_n"]
        cand_n = state["next_sample"] + jnp.cumsum(free_n, dtype=jnp.int32) - 1
        take_n = free_n & (cand_n < b)
        sample_n = jnp.where(take_n, cand_n, state["sample_n"])
        src_n = src_of(jnp.maximum(sample_n, 0))
        cache = state["cache"]

        def copy_prompts(kv):
            # Only the prompt region [0, Tp) is written; stale completion slots are invalidated through valid_bs
            # below. Under a cond, so steps where no sample enters skip the (N, Tp) select.
            put = lambda slot, pre: jax.lax.dynamic_update_slice(
                slot, jnp.where(take_n[:, None, None, None], pre[src_n], slot[:, :tp]), (0, 0, 0, 0)
            )
            return tuple(tuple(put(s, q) for s, q in zip(kv_slot, kv_pre)) for kv_slot, kv_pre in kv)

        k, v = jax.lax.cond(
            jnp.any(take_n), copy_prompts, lambda kv: (kv[0][0], kv[1][0]), ((cache.k, pre_k), (cache.v, pre_v))
        )
        prompt_valid_ns = jnp.concatenate([prompt_mask_pt[src_n], jnp.zeros((n, t_new), bool)], axis=1)
        cache = KVCache(
            k=k, v=v, valid_bs=jnp.where(take_n[:, None], prompt_valid_ns, cache.valid_bs),
            pos_b=jnp.where(take_n, pre_pos_p[src_n], cache.pos_b), index=cache.index,
        )
        return _shard_rows(
            dict(
                state,
                cache=cache,
                sample_n=sample_n,
                step_n=jnp.where(take_n, 0, state["step_n"]),
                active_n=state["active_n"] | take_n,
                fresh_n=take_n,
                tail_nk=jnp.where(take_n[:, None], -1, state["tail_nk"]),
                next_sample=state["next_sample"] + take_n.sum(dtype=jnp.int32),
            ),
            mesh,
        )

    def sample_and_record(state, logits_nv):
        """Sample token step_n of each active slot's sample, write it at (sample, step), stop finished samples."""
        sample_n, step_n, active_n = state["sample_n"], state["step_n"], state["active_n"]
        logits_nv = jnp.where(state["fresh_n"][:, None], prompt_logits_pv[src_of(jnp.maximum(sample_n, 0))], logits_nv)
        keys_n = jax.vmap(jax.random.fold_in)(keys_b[jnp.maximum(sample_n, 0)], step_n)
        tokens_n, logps_n = select_tokens(logits_nv, keys_n, config)
        tail_nk = jnp.concatenate([state["tail_nk"][:, 1:], tokens_n[:, None]], axis=1)
        stop_n = jnp.zeros((n,), bool)
        if config.eos_id is not None:
            stop_n |= tokens_n == config.eos_id
        for seq in config.stop_sequences:
            stop_n |= jnp.all(tail_nk[:, k_stop - len(seq) :] == jnp.asarray(seq, jnp.int32), axis=1)
        stop_n &= active_n
        row_n = jnp.where(active_n, sample_n, b)  # inactive slots write out of bounds: dropped
        put = lambda buf, val: buf.at[row_n, step_n].set(val.astype(buf.dtype), mode="drop")
        return dict(
            state,
            tokens_bt=put(state["tokens_bt"], tokens_n),
            logps_bt=put(state["logps_bt"], logps_n),
            mask_bt=put(state["mask_bt"], jnp.ones((n,), bool)),
            stopped_b=state["stopped_b"].at[row_n].set(stop_n, mode="drop"),
            tail_nk=tail_nk,
            last_n=jnp.where(active_n, tokens_n, state["last_n"]),
            step_n=jnp.where(active_n, step_n + 1, step_n),
            active_n=active_n & ~stop_n & (step_n + 1 < budget_b[jnp.maximum(sample_n, 0)]),
            fresh_n=jnp.zeros((n,), bool),
        )

    state = refill(state)
    state = refill(sample_and_record(state, jnp.zeros((n, prompt_logits_pv.shape[1]), jnp.float32)))

    def body(state):
        feed_n = state["active_n"] & ~state["fresh_n"]
        index_n = tp + jnp.maximum(state["step_n"] - 1, 0)  # the fed token is completion token step_n - 1
        logits_nv, cache = _decode_step_per_row(model, state["last_n"], feed_n, state["cache"], index_n)
        return refill(sample_and_record(dict(state, cache=cache), logits_nv))

    state = jax.lax.while_loop(lambda s: jnp.any(s["active_n"]), body, state)
    out = _shard_rows(
        dict(tokens_bt=state["tokens_bt"], logps_bt=state["logps_bt"], mask_bt=state["mask_bt"]), mesh
    )
    return Rollout(
        prompt_tokens_pt=prompt_tokens_pt[:: 1 if config.share_prefill else g],
        prompt_mask_pt=prompt_mask_pt[:: 1 if config.share_prefill else g],
        completion_tokens_bt=out["tokens_bt"],
        completion_mask_bt=out["mask_bt"],
        lengths_b=out["mask_bt"].sum(axis=1, dtype=jnp.int32),
        logps_bt=out["logps_bt"],
        group_b=jnp.arange(b, dtype=jnp.int32) // g,
        truncated_b=~state["stopped_b"],
        logps_kind=config.logps_kind,
    )


_rollout_jit = jax.jit(_rollout, static_argnames=("graphdef", "config", "mesh"))
_rollout_continuous_jit = jax.jit(_rollout_continuous, static_argnames=("graphdef", "config", "mesh"))


def rollout_program(config: SamplingConfig):
    """(the jitted rollout `sample` runs for `config`, the config it is traced with): host-only fields are reset so
    that they do not key the compilation cache. r1jax/compile.py compiles the same program from abstract inputs."""
    traced_config = config.replace(prompt_bucket=1, completion_bucket=0, bucket_mode="pow2")
    return (_rollout_continuous_jit if config.scheduler == "continuous" else _rollout_jit), traced_config


def num_compilations() -> int:
    """How many (shape, config) variants of the rollout have been traced in this process."""
    return TRACE_COUNTS["rollout"]


def sample(
    model_or_graphdef,
    params,
    prompts: Sequence[Sequence[int]],
    rng: jax.Array,
    config: SamplingConfig,
    *,
    mesh: jax.sharding.Mesh | None = None,
    budgets: Sequence[int] | None = None,
) -> Rollout:
    """G samples for each of P prompts (lists of token ids) -> Rollout.

    `model_or_graphdef, params`: an NNX GraphDef and its State (from `nnx.split(model)`), jitted over as an argument so
    updated params do not recompile; or a model with params=None. With a `mesh` (Auto axis types), prompts and rows
    are split over its ('data', 'fsdp') axes, so P must be a multiple of their size; params are used where the caller
    placed them. One compilation per (prompt bucket, P, config).

    `budgets`: optional per-sample completion budgets (P·G ints in 1..max_new_tokens, row order p * G + g); a
    sample that reaches its budget stops and is `truncated`, as at max_new_tokens. A traced input: changing the
    budgets does not recompile.
    """
    graphdef, params = _split(model_or_graphdef, params)
    tokens_pt, mask_pt = pad_prompts(prompts, config)
    num_rows = len(prompts) * config.num_samples
    if budgets is None:
        budget_b = np.full((num_rows,), config.max_new_tokens, np.int32)
    else:
        budget_b = np.asarray(budgets, np.int32)
        if budget_b.shape != (num_rows,) or budget_b.min() < 1 or budget_b.max() > config.max_new_tokens:
            raise ValueError(
                f"budgets: expected {num_rows} ints in [1, sampling.max_new_tokens={config.max_new_tokens}], got "
                f"shape {budget_b.shape}, range [{budget_b.min()}, {budget_b.max()}]"
            )
    multiprocess = mesh is not None and jax.process_count() > 1
    if mesh is not None:
        # Across processes `prompts` are this process's own (r1jax.distributed): it holds their shards only.
        shards = distributed.local_data_shards(mesh)
        if len(prompts) % shards:
            raise ValueError(
                f"len(prompts)={len(prompts)} is not a multiple of the {shards} shards of mesh axes {_batch_spec(mesh)}"
            )
        slots = min(config.num_slots or len(prompts) * config.num_samples, len(prompts) * config.num_samples)
        if config.scheduler == "continuous" and slots % shards:
            raise ValueError(
                f"sampling.num_slots={config.num_slots} ({slots} slots) is not a multiple of the {shards} shards of "
                f"mesh axes {_batch_spec(mesh)}"
            )
        if multiprocess:  # every process contributes the same prompt width to the global array
            extra = distributed.process_max(tokens_pt.shape[1]) - tokens_pt.shape[1]
            tokens_pt = np.pad(tokens_pt, ((0, 0), (extra, 0)), constant_values=config.pad_id)
            mask_pt = np.pad(mask_pt, ((0, 0), (extra, 0)))
        sharding = NamedSharding(mesh, _batch_spec(mesh))
        tokens_pt, mask_pt, budget_b = distributed.host_to_global(
            (tokens_pt, mask_pt, budget_b), (sharding, sharding, sharding)
        )
        rng = distributed.host_to_global(rng, NamedSharding(mesh, PS()))
    rollout_fn, traced_config = rollout_program(config)
    rollout = rollout_fn(graphdef, params, tokens_pt, mask_pt, budget_b, rng, config=traced_config, mesh=mesh)
    if config.completion_bucket:
        rollout = trim_completions(rollout, config)
    if multiprocess:  # this process's prompts and their G completions each, as numpy (rows p * G + g, p local)
        rollout = distributed.global_to_host(rollout)
        rollout = rollout.replace(group_b=np.arange(rollout.lengths_b.shape[0], dtype=np.int32) // config.num_samples)
    return rollout


def kv_cache_bytes(model_cfg, config: SamplingConfig, num_prompts: int, prompt_len: int) -> dict[str, int]:
    """Bytes of the sampler's KV caches for P prompts padded to Tp tokens: 'prefill' (the per-prompt cache, P × Tp,
    or P × (Tp + T) repeated to P·G rows under 'static') and 'decode' (rows × (Tp + T): P·G rows under 'static',
    num_slots rows under 'continuous'), each counting keys, values and the validity mask."""
    itemsize = jnp.dtype(model_cfg.dtype).itemsize
    per_token = model_cfg.num_layers * 2 * model_cfg.num_kv_heads * model_cfg.head_dim * itemsize + 1
    rows = num_prompts * config.num_samples
    width = prompt_len + config.max_new_tokens
    prefill_rows = num_prompts if config.share_prefill else rows
    if config.scheduler == "continuous":
        slots = min(config.num_slots or rows, rows)
        return dict(prefill=prefill_rows * prompt_len * per_token, decode=slots * width * per_token)
    return dict(prefill=prefill_rows * width * per_token, decode=rows * width * per_token)


def trim_completions(rollout: Rollout, config: SamplingConfig) -> Rollout:
    """Cut the completion axis to the bucketed longest completion (one host sync), so the trainer's forward skips
    the all-padding tail while compiling for only a few widths."""
    longest = int(jax.device_get(rollout.lengths_b.max()))
    width = min(bucket_length(longest, config.completion_bucket, config.bucket_mode), config.max_new_tokens)
    cut = lambda x: x[:, :width]
    return rollout.replace(
        completion_tokens_bt=cut(rollout.completion_tokens_bt),
        completion_mask_bt=cut(rollout.completion_mask_bt),
        logps_bt=cut(rollout.logps_bt),
    )


# ----------------------------------------------------------------------------------------------------------------
# Log-probs of completions (trainer side) and the host API
# ----------------------------------------------------------------------------------------------------------------


def sequence_logps(
    model, tokens_bs, mask_bs, completion_bt, *, temperature: float = 1.0, implementation: str = "auto",
    return_entropy: bool = False, group_size: int = 1, mesh=None,
):
    """log pi of the last Tc tokens of each [left-padded prompt ; completion] row (B, S).

    The one code path for policy log-probs: the sampler's `completion_logps` and every trainer's loss call it, so
    sampler and trainer agree on log-probs by construction. Uses r1jax.kernels' fused grouped log-prob, which
    never materialises the (B·Tc, V) logits ('xla' does, as the oracle). Returns logps_bt (and entropy_bt).

    `group_size=1`: one no-cache forward over the B rows. `group_size=G > 1` (GRPO's batches: every G consecutive
    rows are one prompt's samples, so their first S − Tc tokens are the same): each prompt runs once, into a KV
    cache, and its G completions run against copies of that cache, like the sampler's shared prefill. The prompt's
    forward and backward then cost P rows instead of P·G; the gradient through the copies is the sum over the
    group, so values and gradients equal the plain forward's up to float rounding (`tests/test_sampling.py`).
    The rows' prompts are not checked for equality here: the caller guarantees it. `mesh`: the mesh the caller
    compiles for; the kernel's implementation follows its devices, and Pallas kernels run in shard_map over it.
    """
    tc = completion_bt.shape[1]
    if group_size > 1:
        h_btd = _shared_prompt_hidden(model, tokens_bs, mask_bs, tc, group_size)
    else:
        hidden_bsd, _ = model(_model_ids(tokens_bs, mask_bs), mask_bt=mask_bs)
        h_btd = hidden_bsd[:, -tc - 1 : -1]  # the position before each completion token predicts it
    return grouped_logprob(
        h_btd.astype(model.cfg.dtype),
        model.lm_head_weight().astype(model.cfg.dtype),
        completion_bt,
        temperature=temperature,
        return_entropy=return_entropy,
        implementation=implementation,
        mesh=mesh,
    )


def _shared_prompt_hidden(model, tokens_bs, mask_bs, tc: int, g: int):
    """Hidden states (B, Tc, D) predicting the completion tokens, each group's prompt run once (see above)."""
    b, s = tokens_bs.shape
    if b % g:
        raise ValueError(f"group_size={g} does not divide the batch's {b} rows")
    tp = s - tc
    prompt_pt, pmask_pt = tokens_bs[::g, :tp], mask_bs[::g, :tp]
    comp_bt, cmask_bt = tokens_bs[:, tp:], mask_bs[:, tp:]
    cache = KVCache.init(model.cfg, b // g, s)
    remat = model.cfg.remat  # a training forward: recompute blocks in the backward like the no-cache path
    hidden_ptd, cache = model(_model_ids(prompt_pt, pmask_pt), mask_bt=pmask_pt, cache=cache, remat=remat)
    hidden_btd, _ = model(_model_ids(comp_bt, cmask_bt), mask_bt=cmask_bt, cache=cache.repeat(g), remat=remat)
    # the prompt's last position (left padding: the last column) predicts the first completion token
    last_b1d = jnp.repeat(hidden_ptd[:, -1:], g, axis=0)
    return jnp.concatenate([last_b1d, hidden_btd[:, :-1]], axis=1)


def completion_logps(
    model_or_graphdef, params, rollout: Rollout, *, temperature: float = 1.0, implementation: str = "xla"
) -> jax.Array:
    """log pi(completion token | prompt, earlier tokens) (B, T) f32, 0 where the completion mask is 0.

    `sequence_logps` over [left-padded prompt ; completion] with the sampler's mask and position convention, so at
    temperature T (no truncation) it reproduces the sampler's log-probs. Pure and differentiable in params.
    `params=None` with a model uses the model's own.
    """
    model = model_or_graphdef if params is None else nnx.merge(*_split(model_or_graphdef, params))
    tokens_bs = jnp.concatenate([rollout.prompt_tokens_pt[rollout.group_b], rollout.completion_tokens_bt], axis=1)
    mask_bs = jnp.concatenate([rollout.prompt_mask_pt[rollout.group_b], rollout.completion_mask_bt], axis=1)
    logps_bt = sequence_logps(
        model, tokens_bs, mask_bs, rollout.completion_tokens_bt, temperature=temperature,
        implementation=implementation,
    )
    return jnp.where(rollout.completion_mask_bt, logps_bt, 0.0)


def _cut_at_eos(tokens: Sequence[int], eos_id: int | None) -> list[int]:
    tokens = [int(x) for x in tokens]
    return tokens[: tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens


def generate(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    eos_id: int | None = None,
    seed: int = 0,
    scheduler: str = "static",
    num_slots: int = 0,
) -> list[list[list[int]]]:
    """Per prompt, `num_samples` completions as token-id lists, cut at the first EOS (excluded). T=0 is greedy."""
    config = SamplingConfig(
        scheduler=scheduler,
        num_slots=num_slots,
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=1.0 if temperature == 0 else temperature,
        top_p=top_p,
        top_k=top_k,
        greedy=temperature == 0,
        eos_id=eos_id,
    )
    rollout = sample(model, None, prompt_ids, jax.random.key(seed), config)
    tokens_bt, mask_bt = jax.device_get((rollout.completion_tokens_bt, rollout.completion_mask_bt))
    rows = [_cut_at_eos(tok[msk], eos_id) for tok, msk in zip(tokens_bt, mask_bt)]
    return [rows[i * num_samples : (i + 1) * num_samples] for i in range(len(prompt_ids))]


def no_cache_step(graphdef, params, buf_bt, prompt_mask_bt, t, tp: int):
    """Step t of greedy decoding without a cache: the full forward over the fixed-size buffer
    [left-padded prompt (tp) ; generated], generated tokens masked in up to step t; writes token t at tp + t."""
    model = nnx.merge(graphdef, params)
    slots_s = jnp.arange(buf_bt.shape[1])
    mask_bt = prompt_mask_bt | ((slots_s >= tp) & (slots_s < tp + t))
    hidden_btd, _ = model(_model_ids(buf_bt, mask_bt), mask_bt=mask_bt)
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
    return [_cut_at_eos(row, eos_id) for row in out_pt]
