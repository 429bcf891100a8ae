"""Compile the kernels for a TPU chip from any host: libtpu's compile-only client, no TPU needed.

`jax.experimental.topologies.get_topology_desc` gives abstract TPU devices for a named topology ('v5e:2x2');
jitting onto them and calling `.lower(...).compile()` runs the real XLA:TPU compiler, Mosaic included, so a
kernel that does not fit VMEM fails here as it would on the chip. Several processes may load libtpu at once
(parallel test workers) only with ALLOW_MULTIPLE_LIBTPU_LOAD=1, which `topology_devices` sets.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from r1jax.kernels.grouped_logprob.api import grouped_logprob
from r1jax.kernels.kl.api import kl

# One chip of each generation, as libtpu names its topologies.
CHIPS = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
# The LM heads (D, V) of the Qwen2.5 models.
HEADS = {"0.5b": (896, 151936), "1.5b": (1536, 151936), "7b": (3584, 152064), "32b": (5120, 152064)}


def libtpu_error() -> str | None:
    """Why TPU programs cannot be compiled here (libtpu missing or failing to load), or None if they can."""
    try:
        topology_devices("v5e:2x2")
    except Exception as e:  # ImportError, RuntimeError from the plugin: any of them means "cannot compile"
        return f"{type(e).__name__}: {e}"
    return None


def topology_devices(topology: str):
    """Abstract devices of a TPU topology (compile-only)."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices


def mosaic_calls(compiled) -> int:
    """How many Mosaic (Pallas TPU) kernel calls a compiled program holds."""
    return compiled.as_text().count('custom_call_target="tpu_custom_call"')


def kernel_program(kernel: str, d: int, v: int, dtype, n: int, mesh: Mesh):
    """(function, abstract args) of one kernel's value and gradient (w.r.t. h and W) on `mesh`, tokens split
    over its non-'tensor' axes and the head's vocabulary over 'tensor'; `kernel` is 'logprob' or 'kl'."""
    tok = tuple(a for a in mesh.axis_names if a != "tensor")
    head = "tensor" if "tensor" in mesh.axis_names else None

    def arg(shape, spec, dt=dtype):
        return jax.ShapeDtypeStruct(shape, dt, sharding=NamedSharding(mesh, spec))

    h, w = arg((n, d), P(tok, None)), arg((d, v), P(None, head))
    if kernel == "logprob":

        def loss(h, w, t):
            logp, ent = grouped_logprob(h, w, t, return_entropy=True, mesh=mesh)
            return jnp.sum(logp) + 0.01 * jnp.sum(ent)

        return jax.value_and_grad(loss, argnums=(0, 1)), (h, w, arg((n,), P(tok), jnp.int32))

    def loss(h, w, h_q, w_q):
        return jnp.sum(kl(h, w, h_q, w_q, mesh=mesh))

    return jax.value_and_grad(loss, argnums=(0, 1)), (h, w, h, w)


def compile_kernel(kernel: str, chip: str, head: str, dtype, n: int = 16384, mesh_shape=(1, 1, 1)):
    """Compiles `kernel_program` for one chip generation; returns (compiled, seconds)."""
    devices = topology_devices(CHIPS[chip])
    count = int(np.prod(mesh_shape))
    mesh = Mesh(np.asarray(devices[:count]).reshape(mesh_shape), ("data", "fsdp", "tensor"))
    fn, args = kernel_program(kernel, *HEADS[head], dtype, n, mesh)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start
