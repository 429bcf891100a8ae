"""Per-tile math of the exact KL(π_p ‖ π_q), shared by the chunked and Pallas implementations.

With tempered logits zp = (h_p @ W_p) / T and zq = (h_q @ W_q) / T over the
same vocabulary, per row and with an online log-sum-exp for each side:
    KL = Σ p (log p - log q) = E_p[zp - zq] - lse_p + lse_q
    a  = Σ exp(zp - m_p) (zp - zq),   E_p[zp - zq] = a / s_p.
Only the p side is differentiated:
    ∂KL / ∂zp_k = p_k ((zp_k - zq_k) - E_p[zp - zq]),   E_p[zp - zq] = KL + lse_p - lse_q.
Row statistics are (rows, 1) f32 arrays (see grouped_logprob/tiles.py).
"""

import jax.numpy as jnp

from r1jax.kernels._common import NEG_BIG


def init_stats(rows: int):
    """(m_p, s_p, a, m_q, s_q), each (rows, 1) f32."""
    m = jnp.full((rows, 1), NEG_BIG, jnp.float32)
    zero = jnp.zeros((rows, 1), jnp.float32)
    return m, zero, zero, m, zero


def _fold(m, s, z, ok):
    m_new = jnp.maximum(m, jnp.max(jnp.where(ok, z, NEG_BIG), axis=1, keepdims=True))
    scale = jnp.exp(m - m_new)
    e = jnp.where(ok, jnp.exp(z - m_new), 0.0)
    return m_new, scale, e, s * scale + jnp.sum(e, axis=1, keepdims=True)


def update_stats(stats, zp, zq, col_ok):
    """Folds one pair of (rows, cols) f32 logit tiles in; col_ok masks columns outside V."""
    m_p, s_p, a, m_q, s_q = stats
    zp = jnp.where(col_ok, zp, 0.0)
    zq = jnp.where(col_ok, zq, 0.0)
    m_p, scale_p, e_p, s_p = _fold(m_p, s_p, zp, col_ok)
    a = a * scale_p + jnp.sum(e_p * (zp - zq), axis=1, keepdims=True)
    m_q, _, _, s_q = _fold(m_q, s_q, zq, col_ok)
    return m_p, s_p, a, m_q, s_q


def finalize_stats(stats):
    """(kl, lse_p, lse_q), each (rows, 1) f32."""
    m_p, s_p, a, m_q, s_q = stats
    lse_p = m_p + jnp.log(s_p)
    lse_q = m_q + jnp.log(s_q)
    return a / s_p - lse_p + lse_q, lse_p, lse_q


def logits_grad(zp, zq, ok, lse_p, lse_q, kl, g, inv_temperature: float):
    """Cotangent of h_p @ W_p for one tile, f32, zero where `ok` is False; per-row args are (rows, 1)."""
    zp = jnp.where(ok, zp, 0.0)
    zq = jnp.where(ok, zq, 0.0)
    p = jnp.where(ok, jnp.exp(zp - lse_p), 0.0)
    e_delta = kl + lse_p - lse_q
    return jnp.where(ok, g * p * ((zp - zq) - e_delta), 0.0) * inv_temperature
