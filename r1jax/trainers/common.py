"""What every trainer shares: the train state, the optimizer, model loading, sharded state creation and resume.

The update itself stays in each trainer (one readable step per stage); this module only holds the plumbing
that would otherwise be copied between them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct

from r1jax import checkpoint as ckpt_lib
from r1jax import sharding
from r1jax.models import Transformer, get_preset, init_model

log = logging.getLogger(__name__)


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
    from r1jax.tokenizer import load_tokenizer

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
    # Moments are zeros_like(params) and keep their shardings; scalars (step counts) are replicated on the mesh,
    # so that the state the step returns has exactly the shardings it was given (no second compilation).
    opt_state = jax.jit(optimizer.init)(params)
    opt_state = jax.tree.map(
        lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding) else jax.device_put(x, rep), opt_state
    )
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


def abstract_state(state: TrainState, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def state_to_dict(state: TrainState) -> dict:
    return {f: getattr(state, f) for f in state.__dataclass_fields__}


def run_identity(config, keys) -> dict:
    """The settings that make a checkpoint resumable, as plain JSON values (checked on resume)."""
    out = {}
    for key in keys:
        node = config
        for part in key.split("."):
            node = node[part]
        out[key] = json.loads(json.dumps(node.to_dict() if hasattr(node, "to_dict") else node, default=list))
    return out


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_identity(cfg) -> dict:
    """The model fields a checkpoint's state depends on (shapes, parameter dtype), as JSON values; compute dtype
    and remat may change between a run and its resume."""
    return {k: json.loads(json.dumps(v, default=str)) for k, v in cfg.__dict__.items() if k not in ("dtype", "remat")}


def restore_or_start(checkpointer, state, shardings, identity: dict, restart_from_weights: bool):
    """(state, data_state or None, start_step). Resumes from the newest usable checkpoint of this workdir.

    Settings that differ from the checkpoint's `identity` are refused, unless `restart_from_weights`: then a new
    run starts at step 0 from the checkpoint's params (fresh optimizer state and data order). A checkpoint
    written by that new run has the new identity, so restarting the same command after a kill resumes it.
    """
    target = abstract_state(state_to_dict(state), state_to_dict(shardings))
    try:
        found = checkpointer.restore_latest(target, identity)
    except ckpt_lib.IncompatibleCheckpointError as e:
        if not restart_from_weights:
            raise
        step, saved, _ = checkpointer.restore_latest(target, None)
        log.warning(
            "restart_from_weights: %s. Starting a new run at step 0 from the weights of checkpoint step %d; "
            "the old run's steps move to %s/superseded at the first save",
            e,
            step,
            checkpointer.directory,
        )
        checkpointer.supersede_at_next_save(checkpointer.all_steps())
        return state.replace(params=saved["params"]), None, 0
    if found is None:
        return state, None, 0
    step, saved, data_state = found
    log.info("resumed from checkpoint step %d", step)
    return TrainState(**saved), data_state, step


def drop_records_after(path: str, step: int) -> int:
    """Keep the JSONL records of `path` with "step" <= `step` (the restored checkpoint's); returns how many went.

    A killed run has appended records (ledger, metrics) for steps after its last checkpoint, and the resumed run
    writes those steps again. The dropped lines (and a torn last line) go to `path + '.dropped'`, not lost.
    """
    if not os.path.exists(path):
        return 0
    keep, drop = [], []
    with open(path) as f:
        for line in f:
            try:
                ok = int(json.loads(line)["step"]) <= step
            except (ValueError, KeyError, TypeError):
                ok = not line.strip()  # blank lines are harmless; a torn or foreign one is not kept
            (keep if ok else drop).append(line if line.endswith("\n") else line + "\n")
    if drop:
        with open(path + ".dropped", "a") as f:
            f.writelines(drop)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)
        log.info("%s: dropped %d records after step %d (a run killed after its last checkpoint)", path, len(drop), step)
    return len(drop)
