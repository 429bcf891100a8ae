"""The sampler's entry points: `sample` (P prompts × G samples -> Rollout, on one process or many), `generate`
(token-id lists in and out), and the KV cache's size.

`sample` pads prompts on the host to a bucketed length (`padding.py`), places them on the mesh, and runs one
jitted rollout of the engine named by `SamplingConfig.scheduler` ('static': `static.py`, 'continuous':
`continuous.py`). The whole rollout is a single jitted function of (params, prompt arrays, rng): the trainer passes
updated params without recompiling, and nothing returns to the host between tokens.

Simplifications: no repetition penalty, min-p, or beam search.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

from r1jax import distributed
from r1jax.sampling.config import TRACE_COUNTS, Rollout, SamplingConfig
from r1jax.sampling.continuous import rollout_continuous
from r1jax.sampling.decode import batch_spec
from r1jax.sampling.padding import cut_at_eos, pad_prompts, trim_completions
from r1jax.sampling.static import rollout_static

_rollout_static_jit = jax.jit(rollout_static, static_argnames=("graphdef", "config", "mesh"))
_rollout_continuous_jit = jax.jit(rollout_continuous, static_argnames=("graphdef", "config", "mesh"))


def _split(model_or_graphdef, params):
    if isinstance(model_or_graphdef, nnx.Module):
        graphdef, state = nnx.split(model_or_graphdef)
        return graphdef, state if params is None else params
    if params is None:
        raise ValueError("params=None: pass the params State together with a GraphDef (or pass the model itself)")
    return model_or_graphdef, params


def rollout_program(config: SamplingConfig):
    """(the jitted rollout `sample` runs for `config`, the config it is traced with): host-only fields are reset so
    that they do not key the compilation cache. r1jax/compile.py compiles the same program from abstract inputs."""
    traced_config = config.replace(prompt_bucket=1, completion_bucket=0, bucket_mode="pow2")
    return (_rollout_continuous_jit if config.scheduler == "continuous" else _rollout_static_jit), traced_config


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
    budget_b = _budgets(budgets, len(prompts) * config.num_samples, config)
    multiprocess = mesh is not None and jax.process_count() > 1
    if mesh is not None:
        tokens_pt, mask_pt, budget_b, rng = _to_mesh(mesh, tokens_pt, mask_pt, budget_b, rng, config)
    # Host-only fields are reset so that they do not key the compilation cache.
    rollout_fn, traced_config = rollout_program(config)
    rollout = rollout_fn(graphdef, params, tokens_pt, mask_pt, budget_b, rng, config=traced_config, mesh=mesh)
    if config.completion_bucket:
        rollout = trim_completions(rollout, config)
    if multiprocess:  # this process's prompts and their G completions each, as numpy (rows p * G + g, p local)
        rollout = distributed.global_to_host(rollout)
        rollout = rollout.replace(group_b=np.arange(rollout.lengths_b.shape[0], dtype=np.int32) // config.num_samples)
    return rollout


def _budgets(budgets: Sequence[int] | None, num_rows: int, config: SamplingConfig) -> np.ndarray:
    """Per-sample completion budgets (num_rows,) int32: max_new_tokens each unless given, checked."""
    if budgets is None:
        return np.full((num_rows,), config.max_new_tokens, np.int32)
    budget_b = np.asarray(budgets, np.int32)
    if budget_b.shape != (num_rows,) or budget_b.min() < 1 or budget_b.max() > config.max_new_tokens:
        raise ValueError(
            f"budgets: expected {num_rows} ints in [1, sampling.max_new_tokens={config.max_new_tokens}], got "
            f"shape {budget_b.shape}, range [{budget_b.min()}, {budget_b.max()}]"
        )
    return budget_b


def _to_mesh(mesh, tokens_pt, mask_pt, budget_b, rng, config: SamplingConfig):
    """This process's host arrays as global arrays split over the mesh's data axes (the rng replicated).

    Across processes the prompts are this process's own (r1jax.distributed): it holds their shards only, and every
    process pads its prompts to the widest process's width."""
    num_prompts = tokens_pt.shape[0]
    shards = distributed.local_data_shards(mesh)
    if num_prompts % shards:
        raise ValueError(
            f"len(prompts)={num_prompts} is not a multiple of the {shards} shards of mesh axes {batch_spec(mesh)}"
        )
    slots = min(config.num_slots or num_prompts * config.num_samples, num_prompts * config.num_samples)
    if config.scheduler == "continuous" and slots % shards:
        raise ValueError(
            f"sampling.num_slots={config.num_slots} ({slots} slots) is not a multiple of the {shards} shards of "
            f"mesh axes {batch_spec(mesh)}"
        )
    if jax.process_count() > 1:  # every process contributes the same prompt width to the global array
        extra = distributed.process_max(tokens_pt.shape[1]) - tokens_pt.shape[1]
        tokens_pt = np.pad(tokens_pt, ((0, 0), (extra, 0)), constant_values=config.pad_id)
        mask_pt = np.pad(mask_pt, ((0, 0), (extra, 0)))
    sharding = NamedSharding(mesh, batch_spec(mesh))
    tokens_pt, mask_pt, budget_b = distributed.host_to_global(
        (tokens_pt, mask_pt, budget_b), (sharding, sharding, sharding)
    )
    return tokens_pt, mask_pt, budget_b, distributed.host_to_global(rng, NamedSharding(mesh, PS()))


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
    rows = [cut_at_eos(tok[msk], eos_id) for tok, msk in zip(tokens_bt, mask_bt)]
    return [rows[i * num_samples : (i + 1) * num_samples] for i in range(len(prompt_ids))]
