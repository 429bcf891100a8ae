"""Per-tile math of the grouped log-prob, shared by the chunked and Pallas implementations.

A tile is a (rows, cols) block of tempered logits z = (h @ W) / T in f32.
Row statistics are (rows, 1) arrays so that the same code lowers in plain
XLA, in Triton and in Mosaic (keepdims reductions, no 1-D layouts).

Forward, per row, with an online log-sum-exp over vocabulary blocks:
    m  running max of z
    s  Σ exp(z - m)
    a  Σ exp(z - m) z            (for the entropy: E_p[z] = a / s)
    tz z[target]
    lse = m + log s,  log π(target) = tz - lse,  H = lse - E_p[z].

Backward, per logit, with p = exp(z - lse):
    ∂ log π(t) / ∂z_k = 1[k = t] - p_k
    ∂ H / ∂z_k        = p_k (E_p[z] - z_k)
and ∂/∂(h W) = (∂/∂z) / T.
"""

import jax.numpy as jnp
from jax import lax

from r1jax.kernels._common import NEG_BIG


def init_stats(rows: int):
    """(m, s, a, tz), each (rows, 1) f32."""
    m = jnp.full((rows, 1), NEG_BIG, jnp.float32)
    zero = jnp.zeros((rows, 1), jnp.float32)
    return m, zero, zero, zero


def update_stats(stats, z, col0, col_ok, targets):
    """Folds one logit tile into the running row statistics.

    z: (rows, cols) f32 tempered logits; col0: global index of column 0;
    col_ok: (1, cols) or (rows, cols) bool, False for columns outside the
    vocabulary (their z may be garbage, even NaN); targets: (rows, 1) int.
    """
    m, s, a, tz = stats
    z_safe = jnp.where(col_ok, z, 0.0)
    z_max = jnp.max(jnp.where(col_ok, z, NEG_BIG), axis=1, keepdims=True)
    m_new = jnp.maximum(m, z_max)
    scale = jnp.exp(m - m_new)
    e = jnp.where(col_ok, jnp.exp(z_safe - m_new), 0.0)
    s = s * scale + jnp.sum(e, axis=1, keepdims=True)
    a = a * scale + jnp.sum(e * z_safe, axis=1, keepdims=True)
    cols = col0 + lax.broadcasted_iota(jnp.int32, z.shape, 1)
    hit = jnp.logical_and(cols == targets, col_ok)
    tz = tz + jnp.sum(jnp.where(hit, z_safe, 0.0), axis=1, keepdims=True)
    return m_new, s, a, tz


def finalize_stats(stats):
    """(logp, entropy, lse), each (rows, 1) f32."""
    m, s, a, tz = stats
    lse = m + jnp.log(s)
    entropy = lse - a / s
    return tz - lse, entropy, lse


def logits_grad(z, col0, ok, targets, lse, entropy, g_logp, g_entropy, inv_temperature: float):
    """Cotangent of h @ W for one tile, f32, zero where `ok` is False.

    z: (rows, cols) tempered logits; ok: bool mask broadcastable to z (valid
    row and column); targets, lse, entropy, g_logp: (rows, 1); g_entropy:
    (rows, 1) or None when the entropy output is unused.
    """
    z_safe = jnp.where(ok, z, 0.0)
    p = jnp.where(ok, jnp.exp(z_safe - lse), 0.0)
    cols = col0 + lax.broadcasted_iota(jnp.int32, z.shape, 1)
    onehot = jnp.where(cols == targets, 1.0, 0.0)
    dz = g_logp * (onehot - p)
    if g_entropy is not None:
        dz = dz + g_entropy * p * ((lse - entropy) - z_safe)
    return jnp.where(ok, dz, 0.0) * inv_temperature
