"""kl: every implementation against the plain-XLA oracle, plus KL(p‖p) = 0 and KL ≥ 0.

p and q have different hidden sizes (a student D and a teacher E); N and V
are not multiples of the tiny blocks, D and E are odd; the Pallas kernels run
in interpret mode on CPU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import kernels
from r1jax.kernels.kl import api

N, D, E, V = 37, 21, 11, 75
TEMPERATURE = 1.3
BLOCKS = {
    "chunked": dict(block_n=8, block_v=16),
    "pallas_tpu": dict(block_n=8, block_v=16),
    "pallas_gpu": dict(block_n=16, block_v=16, block_d=16),
}
IMPLEMENTATIONS = list(BLOCKS)
# As in test_grouped_logprob.py: 2·γ_V of the sum's scale in f32 (V = 75 here), bf16's rounding in bf16.
TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _inputs(dtype, n=N, seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    h_p = jax.random.normal(k[0], (n, D), jnp.float32).astype(dtype)
    w_p = (jax.random.normal(k[1], (D, V), jnp.float32) * 0.5).astype(dtype)
    h_q = jax.random.normal(k[2], (n, E), jnp.float32).astype(dtype)
    w_q = (jax.random.normal(k[3], (E, V), jnp.float32) * 0.7).astype(dtype)
    return h_p, w_p, h_q, w_q


def _rel_err(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref)) / max(np.max(np.abs(ref)), 1e-30))


@functools.partial(jax.jit, static_argnames=("implementation", "options"))
def _value_and_grads(h_p, w_p, h_q, w_q, *, implementation, options=()):
    g = jnp.linspace(-1.0, 2.0, h_p.shape[0])

    def loss(h_p, w_p, h_q, w_q):
        kl = api.kl_nd(h_p, w_p, h_q, w_q, temperature=TEMPERATURE, implementation=implementation, **dict(options))
        return jnp.sum(g * kl), kl

    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(h_p, w_p, h_q, w_q)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_matches_oracle_values_and_gradients(implementation, dtype):
    args = _inputs(dtype)
    options = tuple(sorted(BLOCKS[implementation].items()))
    (_, kl), grads = _value_and_grads(*args, implementation=implementation, options=options)
    (_, kl0), grads0 = _value_and_grads(*args, implementation="xla")
    assert kl.dtype == jnp.float32 and kl.shape == (N,)
    tol = TOLERANCE[dtype]
    assert _rel_err(kl, kl0) < tol
    for name, x, ref in [("dh_p", grads[0], grads0[0]), ("dw_p", grads[1], grads0[1])]:
        assert x.dtype == dtype and _rel_err(x, ref) < tol, (name, _rel_err(x, ref))
    # The q side is a constant: zero gradients (as in the oracle's stop_gradient).
    assert not np.any(np.asarray(grads[2])) and not np.any(np.asarray(grads[3]))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_kl_of_p_with_itself_is_zero_and_kl_is_nonnegative(implementation):
    h_p, w_p, h_q, w_q = _inputs(jnp.float32, seed=1)
    kl_fn = jax.jit(
        functools.partial(api.kl_nd, temperature=TEMPERATURE, implementation=implementation, **BLOCKS[implementation])
    )
    np.testing.assert_allclose(kl_fn(h_p, w_p, h_p, w_p), 0.0, atol=1e-6)
    # A near-copy of p (small KL, where cancellation bites) and a teacher with another hidden size.
    assert np.min(np.asarray(kl_fn(h_p, w_p, h_p, w_p * 1.01))) >= -1e-6
    assert np.min(np.asarray(kl_fn(h_p, w_p, h_q, w_q))) > 1e-3


@pytest.mark.parametrize("implementation", ["chunked", "pallas"])
def test_public_api_keeps_leading_axes(implementation):
    h_p, w_p, h_q, w_q = _inputs(jnp.float32, n=6, seed=2)
    shaped = (h_p.reshape(2, 3, D), w_p, h_q.reshape(2, 3, E), w_q)

    def loss(h_p, w_p, implementation):
        kl_bt = kernels.kl(h_p, w_p, shaped[2], w_q, temperature=TEMPERATURE, implementation=implementation)
        return jnp.sum(kl_bt * jnp.arange(6.0).reshape(2, 3)), kl_bt

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), static_argnums=2)
    (_, kl_bt), (dh, dw) = grad(shaped[0], w_p, implementation)
    (_, kl0), (dh0, dw0) = grad(shaped[0], w_p, "xla")
    assert kl_bt.shape == (2, 3) and dh.shape == (2, 3, D)
    for x, ref in [(kl_bt, kl0), (dh, dh0), (dw, dw0)]:
        assert _rel_err(x, ref) < 1e-5


def test_auto_on_cpu_matches_oracle():
    args = _inputs(jnp.float32, seed=3)
    np.testing.assert_allclose(kernels.kl(*args), kernels.kl(*args, implementation="xla"), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((4, 8), (8, 16), (5, 6), (6, 16)), "leading"),
        (((4, 8), (8, 16), (4, 6), (6, 15)), "same vocabulary"),
        (((4, 8), (8, 16), (4, 6), (7, 16)), "last axis of h_q_ne"),
        (((4, 9), (8, 16), (4, 6), (6, 16)), "last axis of h_p_nd"),
    ],
)
def test_shape_errors_name_the_argument(shapes, match):
    with pytest.raises(ValueError, match=match):
        kernels.kl(*(jnp.zeros(s) for s in shapes))
