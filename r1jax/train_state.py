"""The train state and the model it trains, shared by trainers, evaluation and the GRPO step builder.

`TrainState` and `apply_gradients` (one guarded optimizer update), the optimizer and model config blocks every
experiment declares, model loading (a checkpoint directory or a fresh preset) and sharded state creation. It sits
below `rollouts.py` and `evals.py`, which build steps and load models with it; the trainers' resume plumbing is in
`trainers/common.py`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct

from r1jax import checkpoint as ckpt_lib
from r1jax import sharding
from r1jax.models import Transformer, config_from_hf, get_preset, init_model
from r1jax.tokenizer import load_tokenizer


@struct.dataclass
class TrainState:
    step: jax.Array  # int32, optimizer updates applied
    params: dict  # pure dict of arrays (nnx.to_pure_dict layout)
    opt_state: optax.OptState
    rng: jax.Array  # raw key data (uint32), so orbax can save it
    nonfinite_consecutive: jax.Array  # int32, updates skipped in a row because loss or grads were not finite
    nonfinite_total: jax.Array  # int32


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    """The optimizer fields every experiment declares (AdamW, warmup + cosine, global-norm clipping)."""
    c = ml_collections.ConfigDict()
    c.learning_rate = 1e-6  # peak learning rate
    c.warmup_steps = 0  # linear warmup from 0
    c.decay = "cosine"  # 'cosine' (to final_lr_fraction × peak) or 'constant'
    c.final_lr_fraction = 0.1
    c.b1 = 0.9
    c.b2 = 0.99
    c.weight_decay = 0.0
    c.grad_clip = 1.0  # global-norm clipping (0 = off)
    c.max_consecutive_nonfinite = 5  # stop after this many skipped (NaN/inf) updates in a row
    c.update(overrides)
    return c


def validate_optimizer(c) -> None:
    if c.learning_rate <= 0:
        raise ValueError(f"optim.learning_rate={c.learning_rate}: must be > 0")
    if c.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={c.warmup_steps}: must be >= 0")
    if c.decay not in ("cosine", "constant"):
        raise ValueError(f"optim.decay={c.decay!r}: expected 'cosine' or 'constant'")
    if c.grad_clip < 0:
        raise ValueError(f"optim.grad_clip={c.grad_clip}: must be >= 0")
    if c.max_consecutive_nonfinite < 1:
        raise ValueError(f"optim.max_consecutive_nonfinite={c.max_consecutive_nonfinite}: must be >= 1")


def make_optimizer(c, total_steps: int) -> optax.GradientTransformation:
    if c.decay == "cosine":
        lr = (
            optax.warmup_cosine_decay_schedule(
                0.0,
                c.learning_rate,
                max(c.warmup_steps, 1) if c.warmup_steps else 1,
                max(total_steps, c.warmup_steps + 1),
                end_value=c.learning_rate * c.final_lr_fraction,
            )
            if c.warmup_steps
            else optax.cosine_decay_schedule(c.learning_rate, max(total_steps, 1), alpha=c.final_lr_fraction)
        )
    else:
        lr = optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps) if c.warmup_steps else c.learning_rate
        if c.warmup_steps:
            lr = optax.join_schedules([lr, optax.constant_schedule(c.learning_rate)], [c.warmup_steps])
    parts = [optax.clip_by_global_norm(c.grad_clip)] if c.grad_clip else []
    parts.append(optax.adamw(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay))
    return optax.chain(*parts)


def apply_gradients(state: TrainState, grads, loss, optimizer, grad_scale=None) -> tuple[TrainState, dict]:
    """One optimizer update, skipped (params and optimizer state kept as they are) when loss or grads are not
    finite. `grad_scale` (1.0, or NaN to inject a fault in tests) multiplies the gradients."""
    if grad_scale is not None:
        grads = jax.tree.map(lambda g: g * grad_scale.astype(g.dtype), grads)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + finite.astype(jnp.int32),
        params=keep(new_params, state.params),
        opt_state=keep(new_opt, state.opt_state),
        nonfinite_consecutive=jnp.where(finite, 0, state.nonfinite_consecutive + 1),
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
    )
    return new_state, {"train/grad_norm": grad_norm, "train/update_skipped": (~finite).astype(jnp.float32)}


# ---------------------------------------------------------------------------------------------------------------
# Models


def model_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = "tiny"  # r1jax.models.PRESETS name, used when no checkpoint is given
    c.checkpoint = ""  # a directory: a previous stage's export or a Hugging Face checkpoint
    c.dtype = "float32"  # compute dtype (bfloat16 on accelerators)
    c.param_dtype = "float32"
    c.remat = False  # recompute blocks in the backward pass (long completions)
    c.allowed_root = ""  # if set, `checkpoint` must resolve (after `..` and symlinks) inside this directory
    c.update(overrides)
    return c


def tokenizer_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.path = ""  # '' = the tokenizer stored with model.checkpoint
    c.update(overrides)
    return c


def build_model(c, seed: int, tokenizer_path: str = ""):
    """(model, tokenizer): from `c.checkpoint` when set, else a freshly initialised preset."""
    overrides = dict(dtype=c.dtype, param_dtype=c.param_dtype, remat=c.remat)
    if c.checkpoint and c.allowed_root:
        ckpt_lib.safe_path(c.checkpoint, c.allowed_root)  # refused before anything else looks at the path
    if c.checkpoint:
        if not os.path.isdir(c.checkpoint):
            raise FileNotFoundError(
                f"model.checkpoint={c.checkpoint!r}: no such directory. Pass a local checkpoint directory "
                "(config.json + *.safetensors, e.g. a downloaded Qwen2.5-1.5B) with --config.model.checkpoint=PATH"
            )
        model, tokenizer = ckpt_lib.load_model(c.checkpoint, allowed_root=c.allowed_root, **overrides)
        if tokenizer_path:
            tokenizer = load_tokenizer(tokenizer_path)
        return model, tokenizer
    if not tokenizer_path:
        raise ValueError("tokenizer.path='': a fresh model needs a tokenizer (or set model.checkpoint)")
    tokenizer = load_tokenizer(tokenizer_path)
    cfg = get_preset(c.preset, vocab_size=tokenizer.vocab_size, **overrides)
    return init_model(cfg, seed), tokenizer


def split_model(model: Transformer):
    """(graphdef, params pure dict, NNX state with logical-axis metadata)."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state), state


def merge(graphdef, params) -> Transformer:
    return nnx.merge(graphdef, params)


def create_train_state(model: Transformer, optimizer, mesh, seed: int):
    """(graphdef, sharded TrainState, its shardings)."""
    graphdef, params, nnx_state = split_model(model)
    p_shard = sharding.param_shardings(nnx_state, mesh)
    params = jax.device_put(params, p_shard)
    rep = sharding.replicated(mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_state_shardings(optimizer, params, p_shard, rep))(params)
    state = TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), rep),
        params=params,
        opt_state=opt_state,
        rng=jax.device_put(jax.random.key_data(jax.random.PRNGKey(seed)), rep),
        nonfinite_consecutive=jax.device_put(jnp.zeros((), jnp.int32), rep),
        nonfinite_total=jax.device_put(jnp.zeros((), jnp.int32), rep),
    )
    shardings = jax.tree.map(lambda x: x.sharding, state)
    return graphdef, state, shardings


def opt_state_shardings(optimizer, params, param_shardings, replicated):
    """Shardings of `optimizer.init(params)`: each moment like its parameter (sharded as the parameter is, not
    replicated: `zeros_like` under jit does not inherit its input's sharding, so it is given explicitly), everything
    else (step counts) replicated, so the state the step returns has exactly the shardings it was given."""
    return optax.tree_map_params(
        optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, params), param_shardings,
        transform_non_params=lambda _: replicated,
    )


def model_shape_config(c, tokenizer_vocab: int | None = None):
    """The ModelConfig a run of model config block `c` trains, from config files alone (no weights): the checkpoint's
    config.json when `c.checkpoint` has one, else the preset (whose vocabulary stands in for a tokenizer's)."""
    overrides = dict(dtype=c.dtype, param_dtype=c.param_dtype, remat=c.remat)
    path = os.path.join(c.checkpoint, "config.json") if c.checkpoint else ""
    if path and os.path.exists(path):
        with open(path) as f:
            return config_from_hf(json.load(f)).replace(**overrides)
    if tokenizer_vocab is not None:
        overrides["vocab_size"] = tokenizer_vocab
    return get_preset(c.preset, **overrides)


def abstract_train_state(cfg, optimizer, mesh):
    """(graphdef, TrainState of ShapeDtypeStructs, its shardings): what `create_train_state` returns for a model of
    shape `cfg`, with the same shardings, from `eval_shape` alone: nothing is allocated and `mesh` may hold
    abstract devices (a TPU topology on a CPU host, r1jax/compile.py)."""
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(params=0)))
    graphdef, params, nnx_state = split_model(model)
    p_shard = sharding.param_shardings(nnx_state, mesh)
    rep = sharding.replicated(mesh)
    sds = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    params = jax.tree.map(sds, params, p_shard)
    opt_shapes = jax.eval_shape(optimizer.init, params)
    opt_state = jax.tree.map(sds, opt_shapes, opt_state_shardings(optimizer, params, p_shard, rep))
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    key = jax.eval_shape(lambda: jax.random.key_data(jax.random.PRNGKey(0)))
    state = TrainState(
        step=scalar, params=params, opt_state=opt_state, rng=sds(key, rep), nonfinite_consecutive=scalar,
        nonfinite_total=scalar,
    )
    return graphdef, state, jax.tree.map(lambda x: x.sharding, state)


def abstract_state(state: TrainState, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def state_to_dict(state: TrainState) -> dict:
    return {f: getattr(state, f) for f in state.__dataclass_fields__}
