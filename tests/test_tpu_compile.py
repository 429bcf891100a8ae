"""The kernels and the GRPO step compiled for real TPU chips from this CPU host (libtpu's compile-only client).

A kernel that does not fit a generation's VMEM, or a Mosaic call XLA cannot partition, fails here as it would on
the chip. Each compiled program is checked to hold its Mosaic calls (`tpu_custom_call`), so a silent fallback to
the interpreter or to the chunked XLA path fails the test. The whole kernel matrix
(benchmarks/measure/tpu_kernel_compile.py, 4 chips × 4 Qwen2.5 heads × bf16/f32 × 2 kernels, 16,384 tokens, value
and gradient) takes about 9 minutes on 2 shared cores (benchmarks/RESULTS.md), so the default suite compiles one
hard case per chip and kernel and the rest is marked slow. Skipped, with libtpu's error as the reason, only where
libtpu cannot be loaded.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # parallel test workers each load libtpu

from r1jax.kernels import _common, tpu_compile  # noqa: E402

_LIBTPU_ERROR = tpu_compile.libtpu_error()
pytestmark = pytest.mark.skipif(_LIBTPU_ERROR is not None, reason=f"libtpu cannot be loaded: {_LIBTPU_ERROR}")

DTYPES = {"bf16": jnp.bfloat16, "f32": jnp.float32}
# Default suite: per chip, the grouped log-prob at 7B in bf16 (the head that overflowed v4's and v5e's VMEM with
# fixed blocks) and the KL at 32B in f32 (the largest tiles of all; on v4 in bf16, see KNOWN_OOM).
DEFAULT = {(k, c, h, d) for c in tpu_compile.CHIPS for k, h, d in (("logprob", "7b", "bf16"), ("kl", "32b", "f32"))}
DEFAULT = DEFAULT - {("kl", "v4", "32b", "f32")} | {("kl", "v4", "32b", "bf16")}
# Two (5120, 128) f32 head tiles per side, double-buffered, do not fit v4's 16 MiB of VMEM: the KL kernels would
# need D blocked too. Asserted to fail, so that a change that fixes it (or breaks the error) is noticed.
KNOWN_OOM = {("kl", "v4", "32b", "f32")}
CASES = [
    pytest.param(k, c, h, d, marks=() if (k, c, h, d) in DEFAULT else pytest.mark.slow, id=f"{k}-{c}-{h}-{d}")
    for k in ("logprob", "kl")
    for c in tpu_compile.CHIPS
    for h in tpu_compile.HEADS
    for d in DTYPES
]


@pytest.mark.parametrize("kernel, chip, head, dtype", CASES)
def test_kernel_compiles_for_chip(kernel, chip, head, dtype):
    """Value and gradient at the real head and 16,384 tokens: forward, dh and dW kernels all compiled by Mosaic."""
    if (kernel, chip, head, dtype) in KNOWN_OOM:
        with pytest.raises(Exception, match="vmem"):
            tpu_compile.compile_kernel(kernel, chip, head, DTYPES[dtype])
        return
    compiled, _ = tpu_compile.compile_kernel(kernel, chip, head, DTYPES[dtype])
    assert tpu_compile.mosaic_calls(compiled) == 3


def test_target_decides_the_implementation_not_the_host():
    """On this CPU host, a TPU mesh resolves 'auto' to the compiled Mosaic kernels; no mesh keeps the CPU path."""
    mesh = jax.sharding.Mesh(np.asarray(tpu_compile.topology_devices("v5e:2x2")).reshape(1, 4, 1), ("d", "f", "t"))
    assert jax.default_backend() == "cpu"
    assert _common.resolve_implementation("auto", _common.target_platform(mesh)) == "pallas_tpu"
    assert not _common.interpret_default("pallas_tpu", _common.target_platform(mesh))
    assert _common.target_device_kind(mesh) == "TPU v5 lite"
    assert _common.resolve_implementation("auto") == "chunked"
    assert _common.interpret_default("pallas_tpu")


@pytest.mark.parametrize("mesh_shape", [(1, 4, 1), (1, 2, 2)], ids=["fsdp4", "fsdp2-tensor2"])
@pytest.mark.parametrize("kernel", ["logprob", "kl"])
def test_kernels_compile_inside_the_sharded_program(kernel, mesh_shape):
    """On a multi-chip v5e mesh the kernels run in shard_map; without it XLA refuses to partition Mosaic calls."""
    compiled, _ = tpu_compile.compile_kernel(kernel, "v5e", "0.5b", jnp.bfloat16, n=4096, mesh_shape=mesh_shape)
    assert tpu_compile.mosaic_calls(compiled) == 3


def _abstract_grpo_step(mesh, num_layers: int, batch: int, prompt: int, completion: int):
    """The GRPO update and log-prob pass of the Qwen2.5-0.5B preset (its real head, `num_layers` blocks), built by
    `rollouts.make_grpo_step` on abstract parameters (nnx.eval_shape: nothing is allocated); returns
    (step, abstract state, abstract batch)."""
    import optax
    from flax import nnx

    from r1jax import rollouts, sharding, train_state
    from r1jax.models import get_preset, init_model
    from r1jax.trainers.grpo_config import grpo_config

    cfg = get_preset("qwen2.5-0.5b", num_layers=num_layers, dtype="bfloat16", param_dtype="bfloat16")
    graphdef, params, nnx_state = train_state.split_model(nnx.eval_shape(lambda: init_model(cfg, 0)))
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        params, sharding.param_shardings(nnx_state, mesh),
    )
    rep = sharding.replicated(mesh)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    optimizer = optax.sgd(0.1)  # stateless: the test is about the kernels, not the optimizer's shardings
    state = train_state.TrainState(
        step=scalar, params=params, opt_state=jax.eval_shape(optimizer.init, params),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep), nonfinite_consecutive=scalar, nonfinite_total=scalar,
    )
    c = grpo_config()  # kernels.implementation 'auto'
    c.rl.mu, c.rl.beta, c.sampling.max_new_tokens = 2, 0.05, completion
    step = rollouts.make_grpo_step(c, graphdef, optimizer, mesh, jax.tree.map(lambda x: x.sharding, state))
    shapes = {
        "tokens_bs": ((batch, prompt + completion), jnp.int32), "mask_bs": ((batch, prompt + completion), bool),
        "completion_bt": ((batch, completion), jnp.int32), "loss_mask_bt": ((batch, completion), bool),
        "advantages_b": ((batch,), jnp.float32), "grad_scale": ((), jnp.float32),
        "old_logps_bt": ((batch, completion), jnp.float32), "ref_logps_bt": ((batch, completion), jnp.float32),
    }
    batch_abs = {
        k: jax.ShapeDtypeStruct(shape, dt, sharding=step.batch_shardings[k]) for k, (shape, dt) in shapes.items()
    }
    return step, state, batch_abs


def test_grpo_update_and_logps_compile_with_mosaic_on_a_v5e_mesh():
    """The GRPO update and the log-prob pass with kernels 'auto' on v5e:2x2 as mesh (1, 4, 1): the Mosaic kernels
    are chosen from the mesh (not from this CPU host) and sit inside the sharded programs (fwd in the log-prob
    pass; fwd, dh, dW in the update)."""
    from r1jax import sharding

    mesh = sharding.make_mesh((1, 4, 1), devices=tpu_compile.topology_devices("v5e:2x2"))
    step, state, batch = _abstract_grpo_step(mesh, num_layers=1, batch=8, prompt=32, completion=64)
    logps = step.logps.lower(state.params, batch).compile()
    assert tpu_compile.mosaic_calls(logps) == 1
    update = step.train_step.lower(state, batch).compile()
    assert tpu_compile.mosaic_calls(update) == 3
