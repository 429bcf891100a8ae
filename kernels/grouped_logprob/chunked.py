"""Portable blockwise grouped log-prob (lax loops over vocabulary and token blocks).

The default on CPU, and a fallback anywhere Pallas is unavailable. The outer
loop runs over vocabulary blocks (one W block stays hot while token blocks
stream past), the inner one over token blocks; only a (block_n, block_v) tile
of logits exists at a time. Ragged tails are handled by clamping the last
block's start (see `_common.block_start`) and masking the overlap, so neither
h nor W is padded or copied.

Backward recomputes each logit tile and accumulates dh (N, D) in f32 across
vocabulary blocks and dW one (D, block_v) block at a time, written into dW in
place: nothing of size N×V, and no f32 copy of W.
"""

import jax.numpy as jnp
from jax import lax

from r1jax.kernels._common import block_start, cdiv, dot_f32, fresh_mask, loop_slice, shrink_block
from r1jax.kernels.grouped_logprob import tiles

# Tuned on a 2-core CPU (benchmarks/measure/logprob_memory.py): large tiles keep the
# matmuls efficient; a (1024, 2048) f32 tile is 8 MB.
BLOCK_N = 1024
BLOCK_V = 2048


def forward(h_nd, w_dv, targets_n, *, temperature: float, block_n: int = BLOCK_N, block_v: int = BLOCK_V):
    """Returns (logp_n, entropy_n, lse_n), f32."""
    n, _ = h_nd.shape
    v = w_dv.shape[1]
    bn, bv = shrink_block(block_n, n), shrink_block(block_v, v)
    inv_t = 1.0 / temperature
    t_n1 = targets_n.astype(jnp.int32)[:, None]

    def vocab_block(j, stats):
        v0 = block_start(j, bv, v)
        w_blk = loop_slice(w_dv, j, v0, bv, 1)
        col_ok = fresh_mask(j, v0, bv, (1, bv), 1)

        def token_block(i, stats):
            n0 = block_start(i, bn, n)
            h_blk = loop_slice(h_nd, i, n0, bn, 0)
            z = dot_f32(h_blk, w_blk, ((1,), (0,))) * inv_t  # (bn, bv)
            old = tuple(lax.dynamic_slice_in_dim(s, n0, bn, axis=0) for s in stats)
            t_blk = lax.dynamic_slice_in_dim(t_n1, n0, bn, axis=0)
            new = tiles.update_stats(old, z, v0, col_ok, t_blk)
            # Rows an earlier token block already folded in for this W block keep their value.
            row_ok = fresh_mask(i, n0, bn, (bn, 1), 0)
            new = tuple(jnp.where(row_ok, x, y) for x, y in zip(new, old))
            return tuple(lax.dynamic_update_slice_in_dim(s, x, n0, axis=0) for s, x in zip(stats, new))

        return lax.fori_loop(0, cdiv(n, bn), token_block, stats)

    stats = lax.fori_loop(0, cdiv(v, bv), vocab_block, tiles.init_stats(n))
    logp, entropy, lse = tiles.finalize_stats(stats)
    return logp[:, 0], entropy[:, 0], lse[:, 0]


def backward(
    h_nd,
    w_dv,
    targets_n,
    lse_n,
    entropy_n,
    g_logp_n,
    g_entropy_n,
    *,
    temperature: float,
    block_n: int = BLOCK_N,
    block_v: int = BLOCK_V,
):
    """Returns (dh_nd, dw_dv) in the dtypes of h and W; g_entropy_n may be None."""
    n, d = h_nd.shape
    v = w_dv.shape[1]
    bn, bv = shrink_block(block_n, n), shrink_block(block_v, v)
    inv_t = 1.0 / temperature
    rows = [targets_n.astype(jnp.int32), lse_n, entropy_n, g_logp_n]
    if g_entropy_n is not None:
        rows.append(g_entropy_n)
    rows = [r[:, None] for r in rows]

    def vocab_block(j, carry):
        dh_nd, dw_dv = carry
        v0 = block_start(j, bv, v)
        w_blk = loop_slice(w_dv, j, v0, bv, 1)
        # The clamped last block overlaps its predecessor. dW of the overlap is simply
        # recomputed (same values, and writing dW never needs to read it back, which keeps
        # the update in place), but dh sums over columns: zero them in W for dh.
        w_fresh = jnp.where(fresh_mask(j, v0, bv, (1, bv), 1), w_blk, 0)

        def token_block(i, carry):
            dh_nd, dw_blk = carry
            n0 = block_start(i, bn, n)
            h_blk = loop_slice(h_nd, i, n0, bn, 0)
            t, lse, ent, g_lp, *g_ent = (lax.dynamic_slice_in_dim(r, n0, bn, axis=0) for r in rows)
            z = dot_f32(h_blk, w_blk, ((1,), (0,))) * inv_t
            row_ok = fresh_mask(i, n0, bn, (bn, 1), 0)
            dz = tiles.logits_grad(z, v0, row_ok, t, lse, ent, g_lp, g_ent[0] if g_ent else None, inv_t)
            # Matmul operands in the input dtype (bf16 stays bf16), f32 accumulation.
            dz = dz.astype(h_nd.dtype)
            dw_blk = dw_blk + dot_f32(h_blk, dz, ((0,), (0,)))  # (d, bv)
            dh_blk = lax.dynamic_slice_in_dim(dh_nd, n0, bn, axis=0) + dot_f32(dz, w_fresh, ((1,), (1,)))
            return lax.dynamic_update_slice_in_dim(dh_nd, dh_blk, n0, axis=0), dw_blk

        dh_nd, dw_blk = lax.fori_loop(0, cdiv(n, bn), token_block, (dh_nd, jnp.zeros((d, bv), jnp.float32)))
        return dh_nd, lax.dynamic_update_slice_in_dim(dw_dv, dw_blk.astype(dw_dv.dtype), v0, axis=1)

    init = (jnp.zeros((n, d), jnp.float32), jnp.zeros((d, v), w_dv.dtype))
    dh_nd, dw_dv = lax.fori_loop(0, cdiv(v, bv), vocab_block, init)
    return dh_nd.astype(h_nd.dtype), dw_dv
