"""Device mesh from config and the logical-axis rules that place parameters and batches on it.

The mesh has axes ('data', 'fsdp', 'tensor'). Model parameters name their axes logically ('embed', 'mlp', ...,
see r1jax/models/transformer.py); `RULES` maps each logical name to a mesh axis (or None: replicated). Batches
are sharded over ('data', 'fsdp'). The same code runs on 1 device, on 8 fake CPU devices and on a pod slice.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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


def make_mesh(shape=(-1, 1, 1)) -> Mesh:
    """An Auto-axis mesh (shardings are propagated by the compiler from our explicit in/out shardings)."""
    shape = resolve_mesh_shape(shape)
    devices = np.asarray(jax.devices()).reshape(shape)
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
