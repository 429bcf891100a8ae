"""Public entry point of the grouped log-prob: checks, dispatch, custom VJP.

`grouped_logprob` returns log π(target) (and optionally the entropy) of the
tempered distribution softmax((h @ W) / T) for every token, without holding
the (N, V) logits except in the 'xla' oracle. The blockwise implementations
share one custom VJP: the forward keeps only (logp, entropy, lse) per token,
the backward recomputes logits tile by tile (see tiles.py for the formulas).
On a mesh of more than one device the Pallas kernels run inside `shard_map`
(kernels/_sharded.py): XLA cannot partition a Mosaic or Triton call.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from r1jax.kernels import _common, _sharded
from r1jax.kernels.grouped_logprob import chunked, reference


@dataclasses.dataclass(frozen=True)
class _Spec:
    """Static configuration of one blockwise call (hashable: a custom_vjp nondiff argument)."""

    implementation: str  # 'chunked' | 'pallas_gpu' | 'pallas_tpu'
    temperature: float
    return_entropy: bool
    options: tuple  # sorted (name, value) pairs: block sizes, interpret, device_kind
    mesh: Any = None  # a Mesh of > 1 device: the kernels run per device inside shard_map

    def module(self):
        if self.implementation == "chunked":
            return chunked
        if self.implementation == "pallas_gpu":
            from r1jax.kernels.grouped_logprob import pallas_gpu

            return pallas_gpu
        from r1jax.kernels.grouped_logprob import pallas_tpu

        return pallas_tpu


    def forward(self, *args):
        kw = dict(self.options, temperature=self.temperature)
        if self.mesh is None:
            return self.module().forward(*args, **kw)
        return _sharded.logprob_forward(self.module(), self.mesh, *args, **kw)

    def backward(self, *args):
        kw = dict(self.options, temperature=self.temperature)
        if self.mesh is None:
            return self.module().backward(*args, **kw)
        return _sharded.logprob_backward(self.module(), self.mesh, *args, **kw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _blockwise(h_nd, w_dv, targets_n, spec: _Spec):
    logp_n, entropy_n, _ = spec.forward(h_nd, w_dv, targets_n)
    return logp_n, entropy_n


def _blockwise_fwd(h_nd, w_dv, targets_n, spec: _Spec):
    logp_n, entropy_n, lse_n = spec.forward(h_nd, w_dv, targets_n)
    return (logp_n, entropy_n), (h_nd, w_dv, targets_n, lse_n, entropy_n)


def _blockwise_bwd(spec: _Spec, residuals, cotangents):
    h_nd, w_dv, targets_n, lse_n, entropy_n = residuals
    g_logp_n, g_entropy_n = cotangents
    dh_nd, dw_dv = spec.backward(
        h_nd,
        w_dv,
        targets_n,
        lse_n,
        entropy_n,
        g_logp_n.astype(jnp.float32),
        g_entropy_n.astype(jnp.float32) if spec.return_entropy else None,
    )
    return dh_nd, dw_dv, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def grouped_logprob_nd(
    h_nd, w_dv, targets_n, *, temperature: float, return_entropy: bool, implementation: str, mesh=None, **options
):
    """Flat (N, D) form with implementation options (block sizes, `interpret`); returns (logp_n, entropy_n|None).

    `implementation` must be concrete ('xla', 'chunked', 'pallas_gpu',
    'pallas_tpu'); tests and benchmarks call this to pick block sizes.
    """
    if implementation == "xla":
        if options:
            raise ValueError(f"options={options}: the 'xla' implementation takes no block sizes")
        return reference.grouped_logprob(h_nd, w_dv, targets_n, temperature=temperature, return_entropy=return_entropy)
    options, mesh = _common.pallas_options(implementation, options, mesh)
    spec = _Spec(implementation, temperature, return_entropy, tuple(sorted(options.items())), mesh)
    logp_n, entropy_n = _blockwise(h_nd, w_dv, targets_n, spec)
    return logp_n, (entropy_n if return_entropy else None)


def grouped_logprob(
    h_nd, w_dv, targets_n, *, temperature=1.0, return_entropy=False, implementation="auto", mesh=None
):
    """log π(target) of softmax((h @ W) / T) per token, f32, without the (N, V) logits.

    Args:
      h_nd: hidden states (..., D), any float dtype; leading axes are kept.
      w_dv: LM head (D, V).
      targets_n: int token ids with shape h_nd.shape[:-1].
      temperature: T > 0, a Python number.
      return_entropy: also return the entropy -Σ p log p of each token's tempered distribution.
      implementation: 'auto' (pallas on GPU/TPU, chunked on CPU), 'xla' (materialises the
        logits; the oracle), 'chunked', 'pallas' (the current backend's kernels, interpret
        mode on CPU), or 'pallas_gpu' / 'pallas_tpu' to force one backend's kernels.
        'auto' and 'pallas' follow the target: the mesh's devices, not the host's backend.
      mesh: the mesh the call is compiled for (default: the one set with `jax.set_mesh`, if any). On more than
        one device the Pallas kernels run inside shard_map over it (tokens split, vocabulary over 'tensor').

    Returns:
      logp (...) f32, or (logp, entropy) when return_entropy. Differentiable w.r.t. h and W.
    """
    _common.check_hidden_and_head("h_nd", h_nd, "w_dv", w_dv)
    if targets_n.shape != h_nd.shape[:-1]:
        raise ValueError(
            f"targets_n.shape={targets_n.shape}, h_nd.shape={h_nd.shape}: targets must have the shape "
            f"of h without its last axis, {h_nd.shape[:-1]}"
        )
    if not jnp.issubdtype(targets_n.dtype, jnp.integer):
        raise ValueError(f"targets_n.dtype={targets_n.dtype}: token ids must be integers")
    temperature = _common.check_temperature(temperature)
    implementation = _common.resolve_implementation(implementation, _common.target_platform(mesh))

    batch_shape = targets_n.shape
    n = targets_n.size
    if n == 0:
        empty = jnp.zeros(batch_shape, jnp.float32)
        return (empty, empty) if return_entropy else empty
    h_nd, w_dv = _common.promote(h_nd, w_dv)
    logp_n, entropy_n = grouped_logprob_nd(
        h_nd.reshape(n, h_nd.shape[-1]),
        w_dv,
        targets_n.reshape(n),
        temperature=temperature,
        return_entropy=return_entropy,
        implementation=implementation,
        mesh=mesh,
    )
    if return_entropy:
        return logp_n.reshape(batch_shape), entropy_n.reshape(batch_shape)
    return logp_n.reshape(batch_shape)
