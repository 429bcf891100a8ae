"""Portable blockwise exact KL(π_p ‖ π_q) (lax loops over vocabulary and token blocks).

Same structure as grouped_logprob/chunked.py: the outer loop runs over
vocabulary blocks (a W_p and a W_q block stay hot), the inner one over token
blocks; ragged tails clamp the last block and mask the overlap. Backward
recomputes both logit tiles and produces dh_p (accumulated in f32) and dW_p
(written one block at a time, in place); the q side gets no gradient.
"""

import jax.numpy as jnp
from jax import lax

from r1jax.kernels._common import block_start, cdiv, dot_f32, fresh_mask, loop_slice, shrink_block
from r1jax.kernels.kl import tiles

# Two logit tiles per step (p and q), so the tokens block is half the log-prob one.
BLOCK_N = 512
BLOCK_V = 2048


def _tiles(h_p, h_q, w_p_blk, w_q_blk, i, n0, bn, inv_t):
    h_p_blk = loop_slice(h_p, i, n0, bn, 0)
    zp = dot_f32(h_p_blk, w_p_blk, ((1,), (0,))) * inv_t
    zq = dot_f32(loop_slice(h_q, i, n0, bn, 0), w_q_blk, ((1,), (0,))) * inv_t
    return h_p_blk, zp, zq


def forward(h_p_nd, w_p_dv, h_q_ne, w_q_ev, *, temperature: float, block_n: int = BLOCK_N, block_v: int = BLOCK_V):
    """Returns (kl_n, lse_p_n, lse_q_n), f32."""
    n = h_p_nd.shape[0]
    v = w_p_dv.shape[1]
    bn, bv = shrink_block(block_n, n), shrink_block(block_v, v)
    inv_t = 1.0 / temperature

    def vocab_block(j, stats):
        v0 = block_start(j, bv, v)
        w_p_blk = loop_slice(w_p_dv, j, v0, bv, 1)
        w_q_blk = loop_slice(w_q_ev, j, v0, bv, 1)
        col_ok = fresh_mask(j, v0, bv, (1, bv), 1)

        def token_block(i, stats):
            n0 = block_start(i, bn, n)
            _, zp, zq = _tiles(h_p_nd, h_q_ne, w_p_blk, w_q_blk, i, n0, bn, inv_t)
            old = tuple(lax.dynamic_slice_in_dim(s, n0, bn, axis=0) for s in stats)
            new = tiles.update_stats(old, zp, zq, col_ok)
            row_ok = fresh_mask(i, n0, bn, (bn, 1), 0)
            new = tuple(jnp.where(row_ok, x, y) for x, y in zip(new, old))
            return tuple(lax.dynamic_update_slice_in_dim(s, x, n0, axis=0) for s, x in zip(stats, new))

        return lax.fori_loop(0, cdiv(n, bn), token_block, stats)

    stats = lax.fori_loop(0, cdiv(v, bv), vocab_block, tiles.init_stats(n))
    return tuple(x[:, 0] for x in tiles.finalize_stats(stats))


def backward(
    h_p_nd,
    w_p_dv,
    h_q_ne,
    w_q_ev,
    lse_p_n,
    lse_q_n,
    kl_n,
    g_n,
    *,
    temperature: float,
    block_n: int = BLOCK_N,
    block_v: int = BLOCK_V,
):
    """Returns (dh_p_nd, dw_p_dv) in the dtypes of h_p and W_p."""
    n, d = h_p_nd.shape
    v = w_p_dv.shape[1]
    bn, bv = shrink_block(block_n, n), shrink_block(block_v, v)
    inv_t = 1.0 / temperature
    rows = [r[:, None] for r in (lse_p_n, lse_q_n, kl_n, g_n)]

    def vocab_block(j, carry):
        dh_nd, dw_dv = carry
        v0 = block_start(j, bv, v)
        w_p_blk = loop_slice(w_p_dv, j, v0, bv, 1)
        w_q_blk = loop_slice(w_q_ev, j, v0, bv, 1)
        # Overlap columns of the clamped last block: dW is recomputed, dh must not count them twice.
        w_fresh = jnp.where(fresh_mask(j, v0, bv, (1, bv), 1), w_p_blk, 0)

        def token_block(i, carry):
            dh_nd, dw_blk = carry
            n0 = block_start(i, bn, n)
            h_p_blk, zp, zq = _tiles(h_p_nd, h_q_ne, w_p_blk, w_q_blk, i, n0, bn, inv_t)
            lse_p, lse_q, kl, g = (lax.dynamic_slice_in_dim(r, n0, bn, axis=0) for r in rows)
            row_ok = fresh_mask(i, n0, bn, (bn, 1), 0)
            dz = tiles.logits_grad(zp, zq, row_ok, lse_p, lse_q, kl, g, inv_t).astype(h_p_nd.dtype)
            dw_blk = dw_blk + dot_f32(h_p_blk, dz, ((0,), (0,)))
            dh_blk = lax.dynamic_slice_in_dim(dh_nd, n0, bn, axis=0) + dot_f32(dz, w_fresh, ((1,), (1,)))
            return lax.dynamic_update_slice_in_dim(dh_nd, dh_blk, n0, axis=0), dw_blk

        dh_nd, dw_blk = lax.fori_loop(0, cdiv(n, bn), token_block, (dh_nd, jnp.zeros((d, bv), jnp.float32)))
        return dh_nd, lax.dynamic_update_slice_in_dim(dw_dv, dw_blk.astype(dw_dv.dtype), v0, axis=1)

    init = (jnp.zeros((n, d), jnp.float32), jnp.zeros((d, v), w_p_dv.dtype))
    dh_nd, dw_dv = lax.fori_loop(0, cdiv(v, bv), vocab_block, init)
    return dh_nd.astype(h_p_nd.dtype), dw_dv
