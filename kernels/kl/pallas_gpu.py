"""Exact KL(π_p ‖ π_q) as Pallas GPU kernels (Triton lowering).

The program layout and helpers of grouped_logprob/pallas_gpu.py: forward
with one program per token block looping over vocab blocks; dh_p with one
program per token block, dW_p with one per vocab block, each recomputing
both logit tiles (p over D blocks of h_p / W_p, q over E blocks of h_q / W_q)
and accumulating into the rows / columns it owns. Masked loads make ragged
N, V, D and E tails contribute zero; blocks are powers of 2, ≥ 16.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from r1jax.kernels._common import cdiv
from r1jax.kernels.grouped_logprob.pallas_gpu import (
    accumulate_dh,
    accumulate_dw,
    check_blocks,
    compiler_params,
    iota,
    load_rows,
    logit_tile,
)
from r1jax.kernels.kl import tiles

BLOCK_N = 64
BLOCK_V = 64
BLOCK_D = 64


def _logit_tiles(hp_ref, wp_ref, hq_ref, wq_ref, row0, col0, row_ok, col_ok, *, bn, bv, bd, inv_t):
    kw = dict(bn=bn, bv=bv, bd=bd, inv_t=inv_t)
    zp = logit_tile(hp_ref, wp_ref, row0, col0, row_ok, col_ok, **kw)
    zq = logit_tile(hq_ref, wq_ref, row0, col0, row_ok, col_ok, **kw)
    return zp, zq


def _forward_kernel(hp_ref, wp_ref, hq_ref, wq_ref, kl_ref, lse_p_ref, lse_q_ref, *, bn, bv, bd, inv_t):
    n, v = hp_ref.shape[0], wp_ref.shape[1]
    row0 = pl.program_id(0) * bn
    row_ok = row0 + iota((bn, 1), 0) < n

    def body(j, stats):
        col0 = j * bv
        col_ok = col0 + iota((1, bv), 1) < v
        zp, zq = _logit_tiles(
            hp_ref, wp_ref, hq_ref, wq_ref, row0, col0, row_ok, col_ok, bn=bn, bv=bv, bd=bd, inv_t=inv_t
        )
        return tiles.update_stats(stats, zp, zq, col_ok)

    stats = lax.fori_loop(0, cdiv(v, bv), body, tiles.init_stats(bn))
    for ref, val in zip((kl_ref, lse_p_ref, lse_q_ref), tiles.finalize_stats(stats)):
        plgpu.store(ref.at[pl.ds(row0, bn), :], val, mask=row_ok)


def forward(
    h_p_nd,
    w_p_dv,
    h_q_ne,
    w_q_ev,
    *,
    temperature: float,
    block_n: int = BLOCK_N,
    block_v: int = BLOCK_V,
    block_d: int = BLOCK_D,
    interpret=False,
):
    """Returns (kl_n, lse_p_n, lse_q_n), f32."""
    check_blocks(block_n=block_n, block_v=block_v, block_d=block_d)
    n = h_p_nd.shape[0]
    out_n1 = jax.ShapeDtypeStruct((n, 1), jnp.float32)
    outs = pl.pallas_call(
        functools.partial(_forward_kernel, bn=block_n, bv=block_v, bd=block_d, inv_t=1.0 / temperature),
        grid=(cdiv(n, block_n),),
        out_shape=[out_n1] * 3,
        compiler_params=compiler_params(),
        interpret=interpret,
        name="kl_fwd",
    )(h_p_nd, w_p_dv, h_q_ne, w_q_ev)
    return tuple(x[:, 0] for x in outs)


def _dz_tile(hp_ref, wp_ref, hq_ref, wq_ref, row_refs, row0, col0, row_ok, col_ok, *, bn, bv, bd, inv_t):
    lse_p, lse_q, kl, g = (load_rows(r, row0, bn, row_ok) for r in row_refs)
    zp, zq = _logit_tiles(hp_ref, wp_ref, hq_ref, wq_ref, row0, col0, row_ok, col_ok, bn=bn, bv=bv, bd=bd, inv_t=inv_t)
    dz = tiles.logits_grad(zp, zq, jnp.logical_and(row_ok, col_ok), lse_p, lse_q, kl, g, inv_t)
    return dz.astype(hp_ref.dtype)


def _dh_kernel(hp_ref, wp_ref, hq_ref, wq_ref, *refs, bn, bv, bd, inv_t):
    *row_refs, dh_ref = refs
    dz_fn = functools.partial(_dz_tile, hp_ref, wp_ref, hq_ref, wq_ref, row_refs, bn=bn, bv=bv, bd=bd, inv_t=inv_t)
    accumulate_dh(hp_ref, wp_ref, dh_ref, dz_fn, bn=bn, bv=bv, bd=bd)


def _dw_kernel(hp_ref, wp_ref, hq_ref, wq_ref, *refs, bn, bv, bd, inv_t):
    *row_refs, dw_ref = refs
    dz_fn = functools.partial(_dz_tile, hp_ref, wp_ref, hq_ref, wq_ref, row_refs, bn=bn, bv=bv, bd=bd, inv_t=inv_t)
    accumulate_dw(hp_ref, wp_ref, dw_ref, dz_fn, bn=bn, bv=bv, bd=bd)


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
    block_d: int = BLOCK_D,
    interpret=False,
):
    """Returns (dh_p_nd, dw_p_dv) in the dtypes of h_p and W_p (accumulated in f32 buffers)."""
    check_blocks(block_n=block_n, block_v=block_v, block_d=block_d)
    n, d = h_p_nd.shape
    v = w_p_dv.shape[1]
    rows = [r[:, None] for r in (lse_p_n, lse_q_n, kl_n, g_n)]
    kw = dict(bn=block_n, bv=block_v, bd=block_d, inv_t=1.0 / temperature)
    args = (h_p_nd, w_p_dv, h_q_ne, w_q_ev, *rows)
    dh = pl.pallas_call(
        functools.partial(_dh_kernel, **kw),
        grid=(cdiv(n, block_n),),
        out_shape=jax.ShapeDtypeStruct((n, d), jnp.float32),
        compiler_params=compiler_params(),
        interpret=interpret,
        name="kl_dh",
    )(*args)
    dw = pl.pallas_call(
        functools.partial(_dw_kernel, **kw),
        grid=(cdiv(v, block_v),),
        out_shape=jax.ShapeDtypeStruct((d, v), jnp.float32),
        compiler_params=compiler_params(),
        interpret=interpret,
        name="kl_dw",
    )(*args)
    return dh.astype(h_p_nd.dtype), dw.astype(w_p_dv.dtype)
