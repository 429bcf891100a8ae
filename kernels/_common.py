"""Helpers shared by the kernels: argument checks, backend choice, block arithmetic.

Every kernel takes token-major hidden states `h` (..., D) and an LM head `w`
(D, V) and works on the flattened (N, D) view; the checks here run before
anything is traced so that a bad call fails with a message naming the
argument and its shape.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("auto", "xla", "chunked", "pallas", "pallas_gpu", "pallas_tpu")

# Finite stand-in for -inf as the initial running max: exp(init - m) is then 0
# (not NaN) even when a whole block of a row is masked out.
NEG_BIG = -1e30


def check_temperature(temperature) -> float:
    """Temperature is static (it is baked into the kernels); it must be a positive number."""
    try:
        value = float(temperature)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise ValueError(f"temperature={temperature!r}: must be a Python number (it is static in the kernels)") from e
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"temperature={temperature!r}: must be a finite number > 0")
    return value


def check_hidden_and_head(h_name: str, h, w_name: str, w) -> None:
    if h.ndim < 1:
        raise ValueError(f"{h_name}.shape={h.shape}: need at least one axis (..., D)")
    if not jnp.issubdtype(h.dtype, jnp.floating):
        raise ValueError(f"{h_name}.dtype={h.dtype}: hidden states must be floating point")
    if w.ndim != 2:
        raise ValueError(f"{w_name}.shape={w.shape}: the LM head must be 2-D (D, V)")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"{w_name}.dtype={w.dtype}: the LM head must be floating point")
    if h.shape[-1] != w.shape[0]:
        raise ValueError(
            f"{h_name}.shape={h.shape}, {w_name}.shape={w.shape}: the last axis of {h_name} "
            f"({h.shape[-1]}) must equal the first axis of {w_name} ({w.shape[0]})"
        )
    if w.shape[1] == 0:
        raise ValueError(f"{w_name}.shape={w.shape}: the vocabulary axis is empty")


def _target_device(mesh=None):
    """The abstract device (platform, device_kind) of `mesh` (a Mesh or AbstractMesh), else of the mesh set with
    `jax.set_mesh` (readable inside jit as the abstract mesh); None when neither names one."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    mesh = getattr(mesh, "abstract_mesh", mesh)  # a concrete Mesh's abstract view
    return None if mesh.empty else mesh.abstract_device


def target_platform(mesh=None) -> str:
    """The platform ('cpu', 'gpu', 'tpu') that a kernel call is compiled for.

    The target is the mesh's devices (an explicit `mesh`, else the one set with `jax.set_mesh`), and only without
    a mesh the process's default backend: a CPU host compiling for abstract TPU devices (libtpu's compile-only
    topologies) must choose the Mosaic kernels, compiled, not the CPU path.
    """
    device = _target_device(mesh)
    if device is None:
        return jax.default_backend()
    return "gpu" if device.platform in ("cuda", "rocm") else device.platform


def target_device_kind(mesh=None) -> str:
    """`device_kind` of the target ('TPU v5 lite', ...), from the mesh as in `target_platform`."""
    device = _target_device(mesh)
    return jax.devices()[0].device_kind if device is None else device.device_kind


def resolve_implementation(implementation: str, platform: str | None = None) -> str:
    """Maps 'auto' and 'pallas' to a concrete implementation for `platform` (default: `target_platform()`)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}: expected one of {IMPLEMENTATIONS}")
    platform = target_platform() if platform is None else platform
    if implementation == "auto":
        return "pallas_tpu" if platform == "tpu" else "pallas_gpu" if platform == "gpu" else "chunked"
    if implementation == "pallas":
        # On CPU the TPU kernels run in interpret mode: same code, slow, for tests.
        return "pallas_gpu" if platform == "gpu" else "pallas_tpu"
    return implementation


def interpret_default(implementation: str, platform: str | None = None) -> bool:
    """'pallas_tpu' compiles for TPU and 'pallas_gpu' for GPU targets; for any other target they run interpreted."""
    platform = target_platform() if platform is None else platform
    return platform != implementation.removeprefix("pallas_")


def pallas_options(implementation: str, options: dict, mesh=None):
    """Options and mesh of a blockwise call: interpret mode and the chip (for block sizes) from the target.

    Returns the mesh to shard_map the kernels over, or None: only the Pallas kernels need it (XLA partitions
    the chunked implementation itself), and only on more than one device.
    """
    if not implementation.startswith("pallas"):
        return options, None
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    options = dict(options)
    if "interpret" not in options:
        options["interpret"] = interpret_default(implementation, target_platform(mesh))
    if implementation == "pallas_tpu" and "device_kind" not in options:
        options["device_kind"] = target_device_kind(mesh)
    return options, (None if mesh.empty or mesh.size == 1 else mesh)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def block_start(k, block: int, size: int):
    """Start of block k, clamped so that the block lies inside [0, size).

    The last block of a ragged axis then overlaps its predecessor instead of
    reading past the end (no padding copy of W or h); `fresh_mask` marks the
    positions that no earlier block has covered.
    """
    return jnp.minimum(k * block, size - block)


def fresh_mask(k, start, block: int, shape, axis: int):
    """True where the global index start + iota >= k * block (not yet covered)."""
    return start + lax.broadcasted_iota(jnp.int32, shape, axis) >= k * block


def shrink_block(block: int, size: int) -> int:
    """A block never exceeds the axis it tiles (small problems use one block)."""
    if block <= 0:
        raise ValueError(f"block size {block}: must be > 0")
    return min(block, size)


def loop_slice(x, k, start, size: int, axis: int):
    """Block of x at `start` along `axis`, read inside loop iteration k (for the lax-loop kernels).

    The optimization barrier ties x to the loop counter. Without it XLA:CPU,
    which widens bf16 dynamic slices to f32, hoists that convert out of the
    loop and materialises an f32 copy of all of W (and h).
    """
    x, _ = lax.optimization_barrier((x, k))
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def dot_f32(a, b, contract):
    """2-D matmul contracting dims `contract` = ((a_dim,), (b_dim,)), f32 accumulation."""
    return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def promote(h, w):
    """h and W in one dtype: the kernels feed both to one matmul (a mixed pair costs a cast copy)."""
    dtype = jnp.promote_types(h.dtype, w.dtype)
    return h.astype(dtype), w.astype(dtype)
