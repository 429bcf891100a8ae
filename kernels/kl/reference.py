"""Plain-XLA exact KL(π_p ‖ π_q): the oracle for the blockwise implementations.

Materialises both (N, V) logit arrays and is differentiated by JAX autodiff;
the q side is wrapped in stop_gradient, as in the blockwise versions.
"""

import jax
import jax.numpy as jnp


def kl(h_p_nd, w_p_dv, h_q_ne, w_q_ev, *, temperature: float):
    """Returns kl_n, f32."""
    h_q_ne, w_q_ev = jax.lax.stop_gradient((h_q_ne, w_q_ev))
    logp_nv = jax.nn.log_softmax(jnp.dot(h_p_nd, w_p_dv, preferred_element_type=jnp.float32) / temperature, axis=-1)
    logq_nv = jax.nn.log_softmax(jnp.dot(h_q_ne, w_q_ev, preferred_element_type=jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(logp_nv) * (logp_nv - logq_nv), axis=-1)
