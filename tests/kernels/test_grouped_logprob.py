"""grouped_logprob: every implementation against the plain-XLA oracle, values and gradients.

Shapes are awkward on purpose (N and V not multiples of the blocks, D odd
and not a multiple of the GPU D block) and the blocks tiny, so the ragged
tails and the multi-block online log-sum-exp are exercised; the Pallas
kernels run in interpret mode on CPU.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import kernels
from r1jax.kernels import _common
from r1jax.kernels.grouped_logprob import api

N, D, V = 37, 21, 75
TEMPERATURE = 0.7
# Small blocks: 5 token blocks and 5 vocab blocks, ragged in N, V (and D for the GPU kernels).
BLOCKS = {
    "chunked": dict(block_n=8, block_v=16),
    "pallas_tpu": dict(block_n=8, block_v=16),
    "pallas_gpu": dict(block_n=16, block_v=16, block_d=16),
}
# Largest error relative to the largest value (`_rel_err`). f32: the blockwise and the plain computation sum the
# same V = 75 exp terms (and N = 37 tokens' terms for dW) in other orders: 2·γ_75 = 8.9e-6 of a well-conditioned
# sum's scale (tests/numerics.py), hence 1e-5; measured 1.3e-6 (default ISA) and 1.7e-6 (SSE4_2). bf16: inputs and
# dh, dW carry bf16's 2^-8 relative rounding, a few of them per value.
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _inputs(dtype, n=N, d=D, v=V, seed=0):
    k_h, k_w, k_t = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(k_h, (n, d), jnp.float32).astype(dtype)
    w = (jax.random.normal(k_w, (d, v), jnp.float32) * 0.6).astype(dtype)
    t = jax.random.randint(k_t, (n,), 0, v)
    return h, w, t


def _rel_err(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(np.max(np.abs(ref)), 1e-30))


@functools.partial(jax.jit, static_argnames=("implementation", "return_entropy", "options"))
def _value_and_grads(h, w, t, *, implementation, return_entropy, options=()):
    # Per-token weights on both outputs so that a wrong cotangent plumbing cannot cancel out.
    g_logp = jnp.linspace(-1.0, 2.0, t.shape[0])
    g_ent = jnp.linspace(0.5, -1.5, t.shape[0])

    def loss(h, w):
        logp, ent = api.grouped_logprob_nd(
            h,
            w,
            t,
            temperature=TEMPERATURE,
            return_entropy=return_entropy,
            implementation=implementation,
            **dict(options),
        )
        total = jnp.sum(g_logp * logp) + (jnp.sum(g_ent * ent) if return_entropy else 0.0)
        return total, (logp, ent)

    (_, outs), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(h, w)
    return outs, grads


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("implementation", ["chunked", "pallas_tpu", "pallas_gpu"])
def test_matches_oracle_values_and_gradients(implementation, dtype):
    h, w, t = _inputs(dtype)
    options = tuple(sorted(BLOCKS[implementation].items()))
    (logp, ent), (dh, dw) = _value_and_grads(
        h, w, t, implementation=implementation, return_entropy=True, options=options
    )
    (logp0, ent0), (dh0, dw0) = _value_and_grads(h, w, t, implementation="xla", return_entropy=True)
    assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
    assert dh.dtype == dtype and dw.dtype == dtype and dh.shape == h.shape and dw.shape == w.shape
    tol = TOLERANCE[dtype]
    for name, x, ref in [("logp", logp, logp0), ("entropy", ent, ent0), ("dh", dh, dh0), ("dw", dw, dw0)]:
        assert _rel_err(x, ref) < tol, (name, _rel_err(x, ref))


@pytest.mark.parametrize("implementation", ["chunked", "pallas_tpu", "pallas_gpu"])
def test_gradients_without_entropy(implementation):
    h, w, t = _inputs(jnp.float32, seed=1)
    options = tuple(sorted(BLOCKS[implementation].items()))
    (logp, _), (dh, dw) = _value_and_grads(
        h, w, t, implementation=implementation, return_entropy=False, options=options
    )
    (logp0, _), (dh0, dw0) = _value_and_grads(h, w, t, implementation="xla", return_entropy=False)
    for name, x, ref in [("logp", logp, logp0), ("dh", dh, dh0), ("dw", dw, dw0)]:
        assert _rel_err(x, ref) < 1e-5, (name, _rel_err(x, ref))


@pytest.mark.parametrize("implementation", ["chunked", "pallas"])
def test_public_api_keeps_leading_axes(implementation):
    """h (B, T, D), targets (B, T) -> (B, T), with the default block sizes."""
    h, w, t = _inputs(jnp.float32, n=2 * 5, seed=2)
    h_btd, t_bt = h.reshape(2, 5, D), t.reshape(2, 5)

    def loss(h_btd, w, implementation):
        logp_bt, ent_bt = kernels.grouped_logprob(
            h_btd, w, t_bt, temperature=TEMPERATURE, return_entropy=True, implementation=implementation
        )
        return jnp.sum(logp_bt * jnp.arange(10.0).reshape(2, 5)) + jnp.sum(ent_bt), (logp_bt, ent_bt)

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (_, (logp_bt, ent_bt)), (dh, dw) = grad(h_btd, w, implementation)
    (_, (logp0, ent0)), (dh0, dw0) = grad(h_btd, w, "xla")
    assert logp_bt.shape == (2, 5) and ent_bt.shape == (2, 5) and dh.shape == (2, 5, D)
    for x, ref in [(logp_bt, logp0), (ent_bt, ent0), (dh, dh0), (dw, dw0)]:
        assert _rel_err(x, ref) < 1e-5
    only_logp = kernels.grouped_logprob(h_btd, w, t_bt, temperature=TEMPERATURE, implementation=implementation)
    np.testing.assert_allclose(only_logp, logp0, rtol=1e-5)


def test_uniform_head_golden():
    """W = 0 gives the uniform distribution: log π = -log V and entropy = log V, at any temperature."""
    h, _, t = _inputs(jnp.float32)
    w = jnp.zeros((D, V), jnp.float32)
    logp, ent = kernels.grouped_logprob(h, w, t, temperature=0.3, return_entropy=True)
    np.testing.assert_allclose(logp, -math.log(V), rtol=1e-6)
    np.testing.assert_allclose(ent, math.log(V), rtol=1e-6)


def test_temperature_scales_logits():
    """T = 2 on W equals T = 1 on W / 2."""
    h, w, t = _inputs(jnp.float32, seed=3)
    a = kernels.grouped_logprob(h, w, t, temperature=2.0, implementation="chunked")
    b = kernels.grouped_logprob(h, w / 2, t, temperature=1.0, implementation="chunked")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_auto_on_cpu_is_chunked_and_matches_oracle():
    assert _common.resolve_implementation("auto") == "chunked"
    assert _common.resolve_implementation("pallas") == "pallas_tpu"  # interpret mode on CPU
    assert _common.interpret_default("pallas_tpu") and _common.interpret_default("pallas_gpu")
    h, w, t = _inputs(jnp.float32, seed=4)
    np.testing.assert_allclose(
        kernels.grouped_logprob(h, w, t), kernels.grouped_logprob(h, w, t, implementation="xla"), rtol=1e-5
    )


def test_the_target_platform_decides_not_the_host():
    """A TPU or GPU target gets its compiled kernels from any host; a CPU mesh keeps the CPU path."""
    assert _common.resolve_implementation("auto", "tpu") == "pallas_tpu"
    assert _common.resolve_implementation("auto", "gpu") == "pallas_gpu"
    assert not _common.interpret_default("pallas_tpu", "tpu") and not _common.interpret_default("pallas_gpu", "gpu")
    cpu_mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    assert _common.target_platform(cpu_mesh) == "cpu"
    assert _common.resolve_implementation("auto", _common.target_platform(cpu_mesh)) == "chunked"


@pytest.mark.parametrize("d, dtype", [(896, jnp.bfloat16), (3584, jnp.bfloat16), (5120, jnp.float32)])
def test_tpu_blocks_shrink_with_the_chip_vmem(d, dtype):
    """The block rule: v4 (16 MiB) gets smaller tiles than v5e (64 MiB asked) at the large heads, never larger
    ones; the 0.5B bf16 head keeps the preferred (256, 512) on v5e. (That the tiles fit is the compile matrix's
    job: tests/test_tpu_compile.py.)"""
    from r1jax.kernels import _tpu
    from r1jax.kernels.grouped_logprob import pallas_tpu

    h, w = jax.ShapeDtypeStruct((16384, d), dtype), jax.ShapeDtypeStruct((d, 151936), dtype)
    for part in ("fwd", "dh", "dw"):
        small = pallas_tpu._blocks(part, h, w, None, None, "TPU v4")
        large = pallas_tpu._blocks(part, h, w, None, None, "TPU v5 lite")
        assert small[2] == 16 * _tpu.MIB and large[2] == 64 * _tpu.MIB
        assert small[0] * small[1] <= large[0] * large[1]
        if d == 896:
            assert large[:2] == (256, 512)
        else:
            assert small[0] * small[1] < large[0] * large[1]


def test_chunked_never_holds_the_logits():
    """Compiled fwd+bwd temp memory stays far below one (N, V) f32 array (the oracle needs several)."""
    n, d, v = 1024, 64, 16384
    shapes = (
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )

    def temp_bytes(implementation, **options):
        def loss(h, w, t):
            logp, _ = api.grouped_logprob_nd(
                h, w, t, temperature=1.0, return_entropy=False, implementation=implementation, **options
            )
            return jnp.sum(logp)

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*shapes).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    logits_bytes = n * v * 4
    assert temp_bytes("xla") >= logits_bytes
    assert temp_bytes("chunked", block_n=256, block_v=1024) < logits_bytes / 8


@pytest.mark.parametrize(
    "h_shape, w_shape, t_shape, t_dtype, match",
    [
        ((4, 8), (9, 16), (4,), jnp.int32, "last axis of h_nd"),
        ((4, 8), (8,), (4,), jnp.int32, "w_dv.shape"),
        ((4, 8), (8, 16), (5,), jnp.int32, "targets_n.shape"),
        ((4, 8), (8, 16), (4,), jnp.float32, "targets_n.dtype"),
    ],
)
def test_shape_errors_name_the_argument(h_shape, w_shape, t_shape, t_dtype, match):
    with pytest.raises(ValueError, match=match):
        kernels.grouped_logprob(jnp.zeros(h_shape), jnp.zeros(w_shape), jnp.zeros(t_shape, t_dtype))


def test_bad_temperature_and_implementation():
    h, w, t = jnp.zeros((4, 8)), jnp.zeros((8, 16)), jnp.zeros((4,), jnp.int32)
    with pytest.raises(ValueError, match="temperature=0"):
        kernels.grouped_logprob(h, w, t, temperature=0)
    with pytest.raises(ValueError, match="implementation='triton'"):
        kernels.grouped_logprob(h, w, t, implementation="triton")
