"""Exact KL(π_p ‖ π_q) as Pallas TPU (Mosaic) kernels.

The grid layout of grouped_logprob/pallas_tpu.py, with two logit tiles per
step (p from h_p, W_p; q from h_q, W_q, whose hidden sizes D and E may
differ): forward over (token blocks, vocab blocks), dh_p over (token blocks,
vocab blocks) into a (block_n, D) f32 scratch, dW_p over (vocab blocks,
token blocks) into a (D, block_v) f32 scratch. Rows ≥ N and columns ≥ V of
the padded tail blocks are masked before any reduction or contraction. Block
sizes fit the target chip's VMEM (kernels/_tpu.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from r1jax.kernels import _tpu
from r1jax.kernels._common import cdiv, dot_f32, shrink_block
from r1jax.kernels.grouped_logprob.pallas_tpu import masks
from r1jax.kernels.kl import tiles

BLOCK_N = 256
BLOCK_V = 512


def _blocks(kind: str, h_p_nd, h_q_ne, v, block_n, block_v, device_kind):
    """(block_n, block_v, vmem limit) for 'fwd', 'dh' or 'dw': both sides' tiles stream, p's accumulators."""
    (n, d), e, b = h_p_nd.shape, h_q_ne.shape[1], h_p_nd.dtype.itemsize

    def footprint(bn, bv):
        inputs = 2 * (bn + bv) * (d * b + e * h_q_ne.dtype.itemsize)  # double-buffered h and W tiles, p and q
        acc = {"fwd": 0, "dh": 4 * bn * d + 2 * bn * d * b, "dw": 4 * d * bv + 2 * d * bv * b}[kind]
        return inputs + acc + 2 * _tpu.tile_temporaries(bn, bv)  # two logit tiles

    limit = _tpu.vmem_limit_bytes(device_kind)
    bn, bv = _tpu.fit_blocks(footprint, block_n or BLOCK_N, block_v or BLOCK_V, n, v, limit)
    return shrink_block(bn, n), shrink_block(bv, v), limit


def _cost(h_p_nd, h_q_ne, v, matmuls_p: int, h_reads: int, w_reads: int):
    """pl.CostEstimate: q's logits once, p's `matmuls_p` times; two exps per logit pair; tile traffic."""
    (n, d), e, b = h_p_nd.shape, h_q_ne.shape[1], h_p_nd.dtype.itemsize
    return pl.CostEstimate(
        flops=2 * n * v * (d * matmuls_p + e),
        transcendentals=2 * n * v,
        bytes_accessed=(n * h_reads + v * w_reads) * (d + e) * b,
    )


def _logit_tiles(h_p, w_p, h_q, w_q, inv_t):
    return dot_f32(h_p, w_p, ((1,), (0,))) * inv_t, dot_f32(h_q, w_q, ((1,), (0,))) * inv_t


def _forward_kernel(hp_ref, wp_ref, hq_ref, wq_ref, kl_ref, lse_p_ref, lse_q_ref, *scratch, n, v, inv_t):
    i, j = pl.program_id(0), pl.program_id(1)
    bn, bv = hp_ref.shape[0], wp_ref.shape[1]

    @pl.when(j == 0)
    def _init():
        for ref, val in zip(scratch, tiles.init_stats(bn)):
            ref[...] = val

    _, col_ok = masks(i, j, bn, bv, n, v)
    zp, zq = _logit_tiles(hp_ref[...], wp_ref[...], hq_ref[...], wq_ref[...], inv_t)
    stats = tiles.update_stats(tuple(ref[...] for ref in scratch), zp, zq, col_ok)
    for ref, val in zip(scratch, stats):
        ref[...] = val

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        for ref, val in zip((kl_ref, lse_p_ref, lse_q_ref), tiles.finalize_stats(stats)):
            ref[...] = val


def _specs(bn, bv, d, e, order):
    """BlockSpecs of (h_p, W_p, h_q, W_q); order 'nv' for grid (i, j), 'vn' for grid (j, i)."""

    def ij(f):
        return (lambda i, j: f(i, j)) if order == "nv" else (lambda j, i: f(i, j))

    return [
        pl.BlockSpec((bn, d), ij(lambda i, j: (i, 0))),
        pl.BlockSpec((d, bv), ij(lambda i, j: (0, j))),
        pl.BlockSpec((bn, e), ij(lambda i, j: (i, 0))),
        pl.BlockSpec((e, bv), ij(lambda i, j: (0, j))),
    ], pl.BlockSpec((bn, 1), ij(lambda i, j: (i, 0)))


def forward(
    h_p_nd,
    w_p_dv,
    h_q_ne,
    w_q_ev,
    *,
    temperature: float,
    block_n=None,
    block_v=None,
    interpret=False,
    device_kind=None,
):
    """Returns (kl_n, lse_p_n, lse_q_n), f32. Blocks default to the largest that fit `device_kind`'s VMEM."""
    (n, d), e = h_p_nd.shape, h_q_ne.shape[1]
    v = w_p_dv.shape[1]
    bn, bv, limit = _blocks("fwd", h_p_nd, h_q_ne, v, block_n, block_v, device_kind)
    in_specs, row_spec = _specs(bn, bv, d, e, "nv")
    out_n1 = jax.ShapeDtypeStruct((n, 1), jnp.float32)
    outs = pl.pallas_call(
        functools.partial(_forward_kernel, n=n, v=v, inv_t=1.0 / temperature),
        grid=(cdiv(n, bn), cdiv(v, bv)),
        in_specs=in_specs,
        out_specs=[row_spec] * 3,
        out_shape=[out_n1] * 3,
        scratch_shapes=[pltpu.VMEM((bn, 1), jnp.float32)] * 5,
        compiler_params=_tpu.compiler_params(interpret, limit),
        cost_estimate=_cost(h_p_nd, h_q_ne, v, 1, 1, cdiv(n, bn)),
        interpret=interpret,
        name="kl_fwd",
    )(h_p_nd, w_p_dv, h_q_ne, w_q_ev)
    return tuple(x[:, 0] for x in outs)


def _dz_tile(h_p, w_p, h_q, w_q, row_refs, ok, inv_t):
    zp, zq = _logit_tiles(h_p, w_p, h_q, w_q, inv_t)
    lse_p, lse_q, kl, g = (r[...] for r in row_refs)
    return tiles.logits_grad(zp, zq, ok, lse_p, lse_q, kl, g, inv_t)


def _dh_kernel(hp_ref, wp_ref, hq_ref, wq_ref, *refs, n, v, inv_t):
    *row_refs, dh_ref, acc_sc = refs
    i, j = pl.program_id(0), pl.program_id(1)
    bn, bv = hp_ref.shape[0], wp_ref.shape[1]

    @pl.when(j == 0)
    def _init():
        acc_sc[...] = jnp.zeros_like(acc_sc)

    row_ok, col_ok = masks(i, j, bn, bv, n, v)
    # Padding columns of W_p are garbage; zero them so that 0 * NaN cannot enter dz @ W_pᵀ.
    w_p = jnp.where(col_ok, wp_ref[...], 0)
    ok = jnp.logical_and(row_ok, col_ok)
    dz = _dz_tile(hp_ref[...], w_p, hq_ref[...], wq_ref[...], row_refs, ok, inv_t).astype(w_p.dtype)
    acc_sc[...] += dot_f32(dz, w_p, ((1,), (1,)))

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        dh_ref[...] = acc_sc[...].astype(dh_ref.dtype)


def _dw_kernel(hp_ref, wp_ref, hq_ref, wq_ref, *refs, n, v, inv_t):
    *row_refs, dw_ref, acc_sc = refs
    j, i = pl.program_id(0), pl.program_id(1)
    bn, bv = hp_ref.shape[0], wp_ref.shape[1]

    @pl.when(i == 0)
    def _init():
        acc_sc[...] = jnp.zeros_like(acc_sc)

    row_ok, col_ok = masks(i, j, bn, bv, n, v)
    # Padding rows of h_p are garbage; zero them so that 0 * NaN cannot enter h_pᵀ @ dz.
    h_p = jnp.where(row_ok, hp_ref[...], 0)
    ok = jnp.logical_and(row_ok, col_ok)
    dz = _dz_tile(h_p, wp_ref[...], hq_ref[...], wq_ref[...], row_refs, ok, inv_t).astype(h_p.dtype)
    acc_sc[...] += dot_f32(h_p, dz, ((0,), (0,)))

    @pl.when(i == pl.num_programs(1) - 1)
    def _finish():
        dw_ref[...] = acc_sc[...].astype(dw_ref.dtype)


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
    block_n=None,
    block_v=None,
    interpret=False,
    device_kind=None,
):
    """Returns (dh_p_nd, dw_p_dv) in the dtypes of h_p and W_p."""
    (n, d), e = h_p_nd.shape, h_q_ne.shape[1]
    v = w_p_dv.shape[1]
    rows = [r[:, None] for r in (lse_p_n, lse_q_n, kl_n, g_n)]
    kw = dict(n=n, v=v, inv_t=1.0 / temperature)
    args = (h_p_nd, w_p_dv, h_q_ne, w_q_ev, *rows)

    bn, bv, limit = _blocks("dh", h_p_nd, h_q_ne, v, block_n, block_v, device_kind)
    in_specs, row_spec = _specs(bn, bv, d, e, "nv")
    dh = pl.pallas_call(
        functools.partial(_dh_kernel, **kw),
        grid=(cdiv(n, bn), cdiv(v, bv)),
        in_specs=in_specs + [row_spec] * len(rows),
        out_specs=pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((n, d), h_p_nd.dtype),
        scratch_shapes=[pltpu.VMEM((bn, d), jnp.float32)],
        compiler_params=_tpu.compiler_params(interpret, limit),
        cost_estimate=_cost(h_p_nd, h_q_ne, v, 2, 2, cdiv(n, bn)),
        interpret=interpret,
        name="kl_dh",
    )(*args)

    bn, bv, limit = _blocks("dw", h_p_nd, h_q_ne, v, block_n, block_v, device_kind)
    in_specs, row_spec = _specs(bn, bv, d, e, "vn")
    dw = pl.pallas_call(
        functools.partial(_dw_kernel, **kw),
        grid=(cdiv(v, bv), cdiv(n, bn)),
        in_specs=in_specs + [row_spec] * len(rows),
        out_specs=pl.BlockSpec((d, bv), lambda j, i: (0, j)),
        out_shape=jax.ShapeDtypeStruct((d, v), w_p_dv.dtype),
        scratch_shapes=[pltpu.VMEM((d, bv), jnp.float32)],
        compiler_params=_tpu.compiler_params(interpret, limit),
        cost_estimate=_cost(h_p_nd, h_q_ne, v, 2, cdiv(v, bv), 2),
        interpret=interpret,
        name="kl_dw",
    )(*args)
    return dh, dw
