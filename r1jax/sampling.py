"""Group rollouts with a KV cache: P prompts, G samples each, one jitted decode loop per shape bucket.

The sampler of GRPO (DESIGN.md, "Data flow of one RL step"): prompts are left-padded on the host to a bucketed
length, prefilled once per prompt, and the prompt's KV cache is repeated to its G samples (G× fewer prefill FLOPs
than prefilling every copy). Decoding is one `lax.while_loop` that samples a token per row per step (temperature,
top-k, top-p or greedy), stops a row on EOS or on any stop sequence, and ends early once every row is done. The
whole rollout is a single jitted function of (params, prompt arrays, rng): the trainer passes updated params without
recompiling, and nothing returns to the host between tokens.

Layout: row b = p * G + g holds sample g of prompt p (`group_b[b] = p`). Every row writes at the same cache slot
(prompts are left-padded), RoPE positions continue from each prompt's own length, so padding never shifts them.

Randomness: row b uses key fold_in(fold_in(rng, b), t) at step t, so a row's sample depends only on (rng, b, its
logits), not on the batch size, the mesh, or whether its prefill was shared.

Log-probs recorded by the sampler (`Rollout.logps_kind`):
  'raw'        the model's own distribution softmax(logits): temperature 1 without top-k/top-p, and also greedy
               decoding (whose sampling distribution is a point mass, so the raw log-probs are the useful ones).
               Equal to `completion_logps(..., temperature=1)`.
  'tempered'   softmax(logits / T) with T != 1 and no truncation; equal to `completion_logps(..., temperature=T)`.
  'truncated'  the renormalised top-k / top-p distribution actually sampled from; no forward pass reproduces it,
               so a trainer that needs pi_old should recompute with `completion_logps` instead.

Simplifications: no repetition penalty, min-p, or beam search; top-p sorts the full vocabulary every step.
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
    greedy: bool = False  # argmax instead of sampling
    eos_id: int | None = None  # stops a row; included in the completion mask
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # token-id sequences that stop a row (included in the mask)
    pad_id: int = 0  # fills prompt padding and completion slots after a row stops
    prompt_bucket: int = 32  # prompts are padded to a bucketed length: the minimum / the granularity
    completion_bucket: int = 0  # >0: trim the completion axis to a bucketed max(lengths) on the host (0 = keep all)
    bucket_mode: str = "pow2"  # 'pow2': bucket * 2^k; 'multiple': a multiple of the bucket
    share_prefill: bool = True  # False prefills each of the G copies separately (G× FLOPs; tests and benchmarks)

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"sampling.num_samples={self.num_samples}: need at least 1 sample per prompt")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens={self.max_new_tokens}: must be at least 1")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"sampling.temperature={self.temperature}: must be > 0 unless greedy=True")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p={self.top_p}: must be in (0, 1]")
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
        sorted_bv = -jnp.sort(-x, axis=-1)  # descending
        probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
        # Keep a token iff the mass strictly before it is < top_p: the token crossing the threshold stays in.
        mass_before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv
        keep_bv = mass_before_bv < config.top_p
        cutoff_b1 = jnp.min(jnp.where(keep_bv, sorted_bv, jnp.inf), axis=-1, keepdims=True)
        x = jnp.where(x < cutoff_b1, -jnp.inf, x)
    return x


def select_tokens(logits_bv: jax.Array, keys_b: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """One token per row from f32 logits (B, V) with one PRNG key per row -> (tokens_b int32, logps_b f32).

    logps_b are under the distribution named by `config.logps_kind`.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if config.greedy:
        tokens_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        logp_bv = jax.nn.log_softmax(logits_bv, axis=-1)
    else:
        x_bv = process_logits(logits_bv, config)
        gumbel_bv = jax.vmap(lambda k: jax.random.gumbel(k, x_bv.shape[-1:], jnp.float32))(keys_b)
        tokens_b = jnp.argmax(x_bv + gumbel_bv, axis=-1).astype(jnp.int32)  # Gumbel-max: a sample of softmax(x)
        logp_bv = jax.nn.log_softmax(x_bv, axis=-1)
    logps_b = jnp.take_along_axis(logp_bv, tokens_b[:, None], axis=-1)[:, 0]
    return tokens_b, logps_b


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


def _prefill(model, prompt_tokens_pt, prompt_mask_pt, config: SamplingConfig, mesh):
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


def _rollout(graphdef, params, prompt_tokens_pt, prompt_mask_pt, rng, config: SamplingConfig, mesh):
    TRACE_COUNTS["rollout"] += 1
    model = nnx.merge(graphdef, params)
    p, g, t_new = prompt_tokens_pt.shape[0], config.num_samples, config.max_new_tokens
    b = p * g
    cache, logits_bv = _prefill(model, prompt_tokens_pt, prompt_mask_pt, config, mesh)
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
                done_b=state["done_b"] | (active_b & stop_b),
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
        done_b=jnp.zeros((b,), bool),
        last_b=jnp.zeros((b,), jnp.int32),
    )
    state = record(_shard_rows(state, mesh), *select_tokens(logits_bv, _step_keys(keys_b, 0), config))

    def cond(state):
        return (state["t"] < t_new) & ~jnp.all(state["done_b"])

    def body(state):
        hidden_b1d, cache = model(state["last_b"][:, None], cache=state["cache"])
        logits_bv = model.logits(hidden_b1d[:, 0])
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
        truncated_b=~state["done_b"],
        logps_kind=config.logps_kind,
    )


_rollout_jit = jax.jit(_rollout, static_argnames=("graphdef", "config", "mesh"))


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
) -> Rollout:
    """G samples for each of P prompts (lists of token ids) -> Rollout.

    `model_or_graphdef, params`: an NNX GraphDef and its State (from `nnx.split(model)`), jitted over as an argument so
    updated params do not recompile; or a model with params=None. With a `mesh` (Auto axis types), prompts and rows
    are split over its ('data', 'fsdp') axes, so P must be a multiple of their size; params are used where the caller
    placed them. One compilation per (prompt bucket, P, config).
    """
    graphdef, params = _split(model_or_graphdef, params)
    tokens_pt, mask_pt = pad_prompts(prompts, config)
    multiprocess = mesh is not None and jax.process_count() > 1
    if mesh is not None:
        # Across processes `prompts` are this process's own (r1jax.distributed): it holds their shards only.
        shards = distributed.local_data_shards(mesh)
        if len(prompts) % shards:
            raise ValueError(
                f"len(prompts)={len(prompts)} is not a multiple of the {shards} shards of mesh axes {_batch_spec(mesh)}"
            )
        if multiprocess:  # every process contributes the same prompt width to the global array
            extra = distributed.process_max(tokens_pt.shape[1]) - tokens_pt.shape[1]
            tokens_pt = np.pad(tokens_pt, ((0, 0), (extra, 0)), constant_values=config.pad_id)
            mask_pt = np.pad(mask_pt, ((0, 0), (extra, 0)))
        sharding = NamedSharding(mesh, _batch_spec(mesh))
        tokens_pt, mask_pt = distributed.host_to_global((tokens_pt, mask_pt), (sharding, sharding))
        rng = distributed.host_to_global(rng, NamedSharding(mesh, PS()))
    # Host-only fields are reset so that they do not key the compilation cache.
    traced_config = config.replace(prompt_bucket=1, completion_bucket=0, bucket_mode="pow2")
    rollout = _rollout_jit(graphdef, params, tokens_pt, mask_pt, rng, config=traced_config, mesh=mesh)
    if config.completion_bucket:
        rollout = trim_completions(rollout, config)
    if multiprocess:  # this process's prompts and their G completions each, as numpy (rows p * G + g, p local)
        rollout = distributed.global_to_host(rollout)
        rollout = rollout.replace(group_b=np.arange(rollout.lengths_b.shape[0], dtype=np.int32) // config.num_samples)
    return rollout


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
    return_entropy: bool = False,
):
    """log pi of the last Tc tokens of each [left-padded prompt ; completion] row (B, S): one no-cache forward.

    The one code path for policy log-probs: the sampler's `completion_logps` and every trainer's loss call it, so
    sampler and trainer agree on log-probs by construction. Uses r1jax.kernels' fused grouped log-prob, which
    never materialises the (B·Tc, V) logits ('xla' does, as the oracle). Returns logps_bt (and entropy_bt).
    """
    tc = completion_bt.shape[1]
    hidden_bsd, _ = model(_model_ids(tokens_bs, mask_bs), mask_bt=mask_bs)
    h_btd = hidden_bsd[:, -tc - 1 : -1]  # the position before each completion token predicts it
    return grouped_logprob(
        h_btd.astype(model.cfg.dtype),
        model.lm_head_weight().astype(model.cfg.dtype),
        completion_bt,
        temperature=temperature,
        return_entropy=return_entropy,
        implementation=implementation,
    )


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
) -> list[list[list[int]]]:
    """Per prompt, `num_samples` completions as token-id lists, cut at the first EOS (excluded). T=0 is greedy."""
    config = SamplingConfig(
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
