"""Device mesh from config and the logical-axis rules that place parameters and batches on it.

The mesh has axes ('data', 'fsdp', 'tensor'). Model parameters name their axes logically ('embed', 'mlp', ...,
see r1jax/models/transformer.py); `RULES` maps each logical name to a mesh axis (or None: replicated). Batches
are sharded over ('data', 'fsdp'). The same code runs on 1 device, on 8 fake CPU devices and on a pod slice.
"""

from __future__ import annotations

import math
import types

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.models import Transformer

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis. FSDP shards the embedding dimension of every weight; tensor parallelism shards
# heads and the MLP hidden dimension (Megatron layout); the vocabulary is sharded over 'tensor' too.
RULES: tuple[tuple[str, str | None], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("act_batch", BATCH_AXES),
)


def resolve_mesh_shape(shape, num_devices: int | None = None) -> tuple[int, int, int]:
    """Sizes for ('data', 'fsdp', 'tensor'); one entry may be -1 (= the rest). Raises naming the field."""
    n = jax.device_count() if num_devices is None else num_devices
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"mesh.shape={shape}: needs 3 sizes for axes {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape={shape}: sizes must be positive, with at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n % known:
            raise ValueError(f"mesh.shape={shape}: {n} devices are not divisible by {known}")
        shape = tuple(n // known if s == -1 else s for s in shape)
    if math.prod(shape) != n:
        raise ValueError(f"mesh.shape={shape}: product {math.prod(shape)} != device count {n}")
    return shape


def make_mesh(shape=(-1, 1, 1), devices=None) -> Mesh:
    """An Auto-axis mesh (shardings are propagated by the compiler from our explicit in/out shardings) over
    `devices` (default: all of them)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = resolve_mesh_shape(shape, len(devices))
    devices = np.asarray(devices).reshape(shape)
    return Mesh(devices, MESH_AXES)


def logical_to_spec(axes, rules=RULES, shape=None, mesh: Mesh | None = None) -> P:
    """PartitionSpec for a tuple of logical axis names; an axis that does not divide its mesh size is replicated."""
    table = dict(rules)
    spec, used = [], set()
    for i, name in enumerate(axes or ()):
        mesh_axis = table.get(name)
        if mesh_axis is None or mesh_axis in used:
            spec.append(None)
            continue
        if shape is not None and mesh is not None:
            size = math.prod(mesh.shape[a] for a in np.atleast_1d(mesh_axis))
            if shape[i] % size:
                spec.append(None)
                continue
        used.add(mesh_axis)
        spec.append(mesh_axis)
    return P(*spec)


def param_shardings(state: nnx.State, mesh: Mesh, rules=RULES) -> dict:
    """NamedShardings (a pure dict, like the params) from each NNX Variable's `logical_axes` metadata."""

    def one(v):
        axes = v.get_metadata().get("logical_axes") if isinstance(v, nnx.Variable) else None
        value = v.get_value() if isinstance(v, nnx.Variable) else v
        return NamedSharding(mesh, logical_to_spec(axes, rules, np.shape(value), mesh))

    return nnx.to_pure_dict(jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


# ---------------------------------------------------------------------------------------------------------------
# Memory per device (docs/scaling.md's numbers come from here)


def memory_estimate(
    model_cfg,
    mesh_shape,
    batch: int,
    seq: int,
    *,
    rollout_batch: int | None = None,
    reference_model: bool = False,
    remat: bool | None = None,
    logprob_block: int = 1024,
    rules=RULES,
) -> dict:
    """Estimated bytes per device of one GRPO update and of its rollouts, from shapes alone (nothing is allocated).

    model_cfg: an r1jax.models.ModelConfig (param_dtype, dtype and remat are read from it; `remat` overrides).
    mesh_shape: sizes of ('data', 'fsdp', 'tensor'). batch: sequences in one update (split over data × fsdp).
    seq: tokens per sequence (prompt + completion). rollout_batch: P·G rows sampled at once (default `batch`).
    reference_model: β > 0 keeps a frozen copy of the initial weights.

    Resident all the time (each weight divided by the mesh sizes the RULES give its axes):
      params (param_dtype), optimizer (AdamW: 2 moments in param_dtype), reference params.
    Update only: grads (param_dtype); activations (compute dtype):
      per layer, with b rows per device, t = tensor size, dt = compute bytes:
        b·S·(4·D + 2·(H + 2·K)·Dh/t + 4·F/t)·dt          block input, norms, q/k/v, MLP gate/up/product
        + b·(H/t)·S²·(4 + dt)                              f32 attention logits and probabilities (no flash)
      remat: the block inputs of all L layers (L·b·S·D·dt) plus one layer's set, live during its recompute;
      no remat: L layers' sets; plus the FSDP all-gather of one block's weights (twice, for prefetch) and the
      log-prob head's hidden states and one (block, V/t) f32 tile pair of the fused kernel.
    Rollouts: the KV cache 2·L·rows·K/t·Dh·S·dt and one (rows, V/t) f32 logits row.
    Not counted: XLA temporaries and fragmentation (keep ~20% headroom), host-side buffers. XLA:CPU does not reach
    the remat figure: at Qwen2.5-0.5B, 16 × 384 tokens, f32, its buffer assignment holds 26.8 GiB of temporaries
    where this gives 11.7 GiB in all (benchmarks/measure/grpo_memory.py; measurements in docs/scaling.md, cause not
    isolated).
    """
    cfg = model_cfg if remat is None else model_cfg.replace(remat=remat)
    shape = dict(zip(MESH_AXES, (int(s) for s in mesh_shape)))
    if len(shape) != 3 or min(shape.values()) < 1:
        raise ValueError(f"mesh_shape={tuple(mesh_shape)}: needs 3 positive sizes for {MESH_AXES}")
    dp, t = shape["data"] * shape["fsdp"], shape["tensor"]
    rollout_batch = batch if rollout_batch is None else rollout_batch
    for name, value in (("batch", batch), ("rollout_batch", rollout_batch)):
        if value % dp:
            raise ValueError(f"{name}={value}: not divisible by data × fsdp = {dp}")
    mesh = types.SimpleNamespace(shape=shape)  # logical_to_spec only reads sizes
    pbytes, dt = _dtype_bytes(cfg.param_dtype), _dtype_bytes(cfg.dtype)

    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    param_elems = block_elems = 0
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        value = var.get_value()
        spec = logical_to_spec(var.get_metadata().get("logical_axes"), rules, value.shape, mesh)
        shards = math.prod(shape[a] for a in spec if a is not None)
        param_elems += math.prod(value.shape) / shards
        if "blocks" in path and path[path.index("blocks") + 1] == 0:  # one block, gathered over fsdp (÷ tensor only)
            block_elems += math.prod(value.shape) / math.prod(shape[a] for a in spec if a == "tensor")

    d, f, h, k, dh, L, v = (
        cfg.embed_dim, cfg.mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.num_layers, cfg.vocab_size
    )
    split = lambda n: n / t if n % t == 0 else n  # axes that do not divide the tensor size are replicated
    b, rb = batch // dp, rollout_batch // dp
    layer = b * seq * (4 * d + 2 * (split(h) + 2 * split(k)) * dh + 4 * split(f)) * dt
    layer += b * split(h) * seq * seq * (4 + dt)
    activations = (L * b * seq * d * dt + layer) if cfg.remat else L * layer
    activations += 2 * block_elems * dt if shape["fsdp"] > 1 else 0
    logprob = b * seq * d * dt + 2 * min(logprob_block, b * seq) * split(v) * 4

    out = {
        "params": param_elems * pbytes,
        "optimizer": 2 * param_elems * pbytes,
        "reference_params": param_elems * pbytes if reference_model else 0.0,
        "grads": param_elems * pbytes,
        "activations": float(activations),
        "logprob_head": float(logprob),
        "kv_cache": float(2 * L * rb * split(k) * dh * seq * dt),
        "rollout_logits": float(rb * split(v) * 4),
        "rows_per_device": b,
        "rollout_rows_per_device": rb,
    }
    resident = out["params"] + out["optimizer"] + out["reference_params"]
    out["update_total"] = resident + out["grads"] + out["activations"] + out["logprob_head"]
    out["rollout_total"] = resident + out["kv_cache"] + out["rollout_logits"]
    out["peak"] = max(out["update_total"], out["rollout_total"])
    return out


def _dtype_bytes(name: str) -> int:
    """Bytes of a dtype given by name ('float32', 'bfloat16', ...)."""
    import jax.numpy as jnp

    return jnp.dtype(name).itemsize
