"""Plain-XLA grouped log-prob: the oracle for the blockwise implementations.

It materialises the (N, V) logits, which is exactly what the other
implementations avoid, and is differentiated by JAX autodiff (no custom VJP),
so it checks their hand-written backward passes too.
"""

import jax
import jax.numpy as jnp


def grouped_logprob(h_nd, w_dv, targets_n, *, temperature: float, return_entropy: bool):
    """Returns (logp_n, entropy_n or None), f32 (f64 for f64 inputs)."""
    # f32 logits; f64 inputs (x64 oracles in the tests) keep f64
    logits_nv = jnp.dot(h_nd, w_dv, preferred_element_type=jnp.promote_types(h_nd.dtype, jnp.float32)) / temperature
    logz_n = jax.nn.logsumexp(logits_nv, axis=-1)
    logp_n = jnp.take_along_axis(logits_nv, targets_n[:, None].astype(jnp.int32), axis=-1)[:, 0] - logz_n
    if not return_entropy:
        return logp_n, None
    p_nv = jax.nn.softmax(logits_nv, axis=-1)
    entropy_n = logz_n - jnp.sum(p_nv * logits_nv, axis=-1)
    return logp_n, entropy_n
