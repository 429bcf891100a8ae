"""Public entry point of the exact per-token KL(π_p ‖ π_q): checks, dispatch, custom VJP.

π_p = softmax((h_p @ W_p) / T) and π_q = softmax((h_q @ W_q) / T) share the
vocabulary but not necessarily the hidden size (a student and a teacher).
Gradients flow to the p side only (h_p, W_p); the q side is a constant, as
in distillation towards a fixed teacher. The blockwise forward keeps
(kl, lse_p, lse_q) per token; the backward recomputes both logit tiles.
On a mesh of more than one device the Pallas kernels run inside `shard_map`
(kernels/_sharded.py).
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from r1jax.kernels import _common, _sharded
from r1jax.kernels.kl import chunked, reference


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Static configuration of one blockwise call (hashable: a custom_vjp nondiff argument)."""

    implementation: str  # 'chunked' | 'pallas_gpu' | 'pallas_tpu'
    temperature: float
    options: tuple  # sorted (name, value) pairs: block sizes, interpret, device_kind
    mesh: Any = None  # a Mesh of > 1 device: the kernels run per device inside shard_map

    def module(self):
        if self.implementation == "chunked":
            return chunked
        if self.implementation == "pallas_gpu":
            from r1jax.kernels.kl import pallas_gpu

            return pallas_gpu
        from r1jax.kernels.kl import pallas_tpu

        return pallas_tpu

    def forward(self, *args):
        kw = dict(self.options, temperature=self.temperature)
        if self.mesh is None:
            return self.module().forward(*args, **kw)
        return _sharded.kl_forward(self.module(), self.mesh, *args, **kw)

    def backward(self, *args):
        kw = dict(self.options, temperature=self.temperature)
        if self.mesh is None:
            return self.module().backward(*args, **kw)
        return _sharded.kl_backward(self.module(), self.mesh, *args, **kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blockwise(h_p_nd, w_p_dv, h_q_ne, w_q_ev, spec: _Spec):
    return spec.forward(h_p_nd, w_p_dv, h_q_ne, w_q_ev)[0]


def _blockwise_fwd(h_p_nd, w_p_dv, h_q_ne, w_q_ev, spec: _Spec):
    kl_n, lse_p_n, lse_q_n = spec.forward(h_p_nd, w_p_dv, h_q_ne, w_q_ev)
    return kl_n, (h_p_nd, w_p_dv, h_q_ne, w_q_ev, lse_p_n, lse_q_n, kl_n)


def _blockwise_bwd(spec: _Spec, residuals, g_n):
    dh_p_nd, dw_p_dv = spec.backward(*residuals, g_n.astype(jnp.float32))
    # The q side is a constant (stop-gradient): zero cotangents.
    return dh_p_nd, dw_p_dv, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def kl_nd(h_p_nd, w_p_dv, h_q_ne, w_q_ev, *, temperature: float, implementation: str, mesh=None, **options):
    """Flat (N, ·) form with implementation options (block sizes, `interpret`); returns kl_n.

    `implementation` must be concrete ('xla', 'chunked', 'pallas_gpu',
    'pallas_tpu'); tests and benchmarks call this to pick block sizes.
    """
    if implementation == "xla":
        if options:
            raise ValueError(f"options={options}: the 'xla' implementation takes no block sizes")
        return reference.kl(h_p_nd, w_p_dv, h_q_ne, w_q_ev, temperature=temperature)
    options, mesh = _common.pallas_options(implementation, options, mesh)
    h_q_ne, w_q_ev = jax.lax.stop_gradient((h_q_ne, w_q_ev))
    spec = _Spec(implementation, temperature, tuple(sorted(options.items())), mesh)
    return _blockwise(h_p_nd, w_p_dv, h_q_ne, w_q_ev, spec)


def kl(h_p_nd, w_p_dv, h_q_ne, w_q_ev, *, temperature=1.0, implementation="auto", mesh=None):
    """Exact KL(π_p ‖ π_q) per token, f32, without the (N, V) logits.

    Args:
      h_p_nd: hidden states of p (..., D), any float dtype; leading axes are kept.
      w_p_dv: LM head of p (D, V).
      h_q_ne: hidden states of q (..., E), same leading axes as h_p_nd.
      w_q_ev: LM head of q (E, V), same V as w_p_dv.
      temperature: T > 0 applied to both logits, a Python number.
      implementation: as in `grouped_logprob` ('auto', 'xla', 'chunked', 'pallas',
        'pallas_gpu', 'pallas_tpu'), resolved for the target (the mesh's devices).
      mesh: as in `grouped_logprob`: the Pallas kernels run inside shard_map over a mesh of > 1 device.

    Returns:
      kl (...) f32. Differentiable w.r.t. h_p and W_p; h_q and W_q get zero gradients.
    """
    _common.check_hidden_and_head("h_p_nd", h_p_nd, "w_p_dv", w_p_dv)
    _common.check_hidden_and_head("h_q_ne", h_q_ne, "w_q_ev", w_q_ev)
    if h_p_nd.shape[:-1] != h_q_ne.shape[:-1]:
        raise ValueError(
            f"h_p_nd.shape={h_p_nd.shape}, h_q_ne.shape={h_q_ne.shape}: the leading (token) axes must match"
        )
    if w_p_dv.shape[1] != w_q_ev.shape[1]:
        raise ValueError(
            f"w_p_dv.shape={w_p_dv.shape}, w_q_ev.shape={w_q_ev.shape}: both heads must have the same vocabulary V"
        )
    temperature = _common.check_temperature(temperature)
    implementation = _common.resolve_implementation(implementation, _common.target_platform(mesh))

    batch_shape = h_p_nd.shape[:-1]
    n = 1
    for size in batch_shape:
        n *= size
    if n == 0:
        return jnp.zeros(batch_shape, jnp.float32)
    h_p_nd, w_p_dv = _common.promote(h_p_nd, w_p_dv)
    h_q_ne, w_q_ev = _common.promote(h_q_ne, w_q_ev)
    kl_n = kl_nd(
        h_p_nd.reshape(n, h_p_nd.shape[-1]),
        w_p_dv,
        h_q_ne.reshape(n, h_q_ne.shape[-1]),
        w_q_ev,
        temperature=temperature,
        implementation=implementation,
        mesh=mesh,
    )
    return kl_n.reshape(batch_shape)
