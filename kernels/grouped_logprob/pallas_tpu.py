"""Grouped log-prob as Pallas TPU (Mosaic) kernels.

Three kernels over a 2-D grid, the reduction axis last ('arbitrary') so that
Mosaic runs it sequentially on one core while the other axis is 'parallel':

  forward  grid (token blocks, vocab blocks): online log-sum-exp, entropy
           and target logit in VMEM scratch; (N, 1) outputs written at the
           last vocab block.
  dh       grid (token blocks, vocab blocks): recompute the logit tile,
           accumulate dz @ W_blkᵀ into a (block_n, D) f32 scratch.
  dW       grid (vocab blocks, token blocks): recompute the logit tile,
           accumulate h_blkᵀ @ dz into a (D, block_v) f32 scratch.

D is never blocked: a (block_n, D) tile of h and a (D, block_v) tile of W sit in VMEM, and the backward's
accumulators are one (block_n, D) or (D, block_v) f32 tile; dh and dW leave VMEM tile by tile. Block sizes
come from the target chip's VMEM budget (kernels/_tpu.py), so every Qwen2.5 head fits every generation.
Ragged tails: Pallas pads the last block with garbage (NaN in interpret
mode) and drops out-of-range writes, so every tile masks rows ≥ N and
columns ≥ V before they can reach a reduction or a matmul contraction.
Compiled on TPU, block_n must be a multiple of 8 and block_v of 128 (or
equal N / V); per-token vectors travel as (N, 1) arrays (2-D layouts only).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from r1jax.kernels import _tpu
from r1jax.kernels._common import cdiv, dot_f32, shrink_block
from r1jax.kernels.grouped_logprob import tiles

BLOCK_N = 256
BLOCK_V = 512


def masks(i, j, bn, bv, n, v):
    """(bn, 1) rows < N and (1, bv) columns < V of tile (i, j)."""
    row_ok = i * bn + lax.broadcasted_iota(jnp.int32, (bn, 1), 0) < n
    col_ok = j * bv + lax.broadcasted_iota(jnp.int32, (1, bv), 1) < v
    return row_ok, col_ok


def _forward_kernel(h_ref, w_ref, t_ref, logp_ref, ent_ref, lse_ref, m_sc, s_sc, a_sc, tz_sc, *, n, v, inv_t):
    i, j = pl.program_id(0), pl.program_id(1)
    bn, bv = h_ref.shape[0], w_ref.shape[1]

    @pl.when(j == 0)
    def _init():
        for ref, val in zip((m_sc, s_sc, a_sc, tz_sc), tiles.init_stats(bn)):
            ref[...] = val

    _, col_ok = masks(i, j, bn, bv, n, v)
    z = dot_f32(h_ref[...], w_ref[...], ((1,), (0,))) * inv_t
    stats = (m_sc[...], s_sc[...], a_sc[...], tz_sc[...])
    stats = tiles.update_stats(stats, z, j * bv, col_ok, t_ref[...])
    for ref, val in zip((m_sc, s_sc, a_sc, tz_sc), stats):
        ref[...] = val

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        logp, ent, lse = tiles.finalize_stats(stats)
        logp_ref[...] = logp
        ent_ref[...] = ent
        lse_ref[...] = lse


def _blocks(kind: str, h_nd, w_dv, block_n, block_v, device_kind):
    """(block_n, block_v, vmem limit) for one kernel: 'fwd', 'dh' or 'dw' (footprints in bytes, see _tpu.py)."""
    (n, d), v, b = h_nd.shape, w_dv.shape[1], h_nd.dtype.itemsize

    def footprint(bn, bv):
        inputs = 2 * bn * d * b + 2 * d * bv * b  # double-buffered h and W tiles
        acc = {"fwd": 0, "dh": 4 * bn * d + 2 * bn * d * b, "dw": 4 * d * bv + 2 * d * bv * b}[kind]
        return inputs + acc + _tpu.tile_temporaries(bn, bv)

    limit = _tpu.vmem_limit_bytes(device_kind)
    bn, bv = _tpu.fit_blocks(footprint, block_n or BLOCK_N, block_v or BLOCK_V, n, v, limit)
    return shrink_block(bn, n), shrink_block(bv, v), limit


def _cost(h_nd, w_dv, bn, bv, matmuls: int, h_reads: int, w_reads: int):
    """pl.CostEstimate of one kernel: `matmuls` (N, D) x (D, V) products, one exp per logit, tile traffic."""
    (n, d), v, b = h_nd.shape, w_dv.shape[1], h_nd.dtype.itemsize
    return pl.CostEstimate(
        flops=2 * n * d * v * matmuls, transcendentals=n * v, bytes_accessed=(n * d * h_reads + d * v * w_reads) * b
    )


def forward(
    h_nd, w_dv, targets_n, *, temperature: float, block_n=None, block_v=None, interpret=False, device_kind=None
):
    """Returns (logp_n, entropy_n, lse_n), f32. Blocks default to the largest that fit `device_kind`'s VMEM."""
    n, d = h_nd.shape
    v = w_dv.shape[1]
    bn, bv, limit = _blocks("fwd", h_nd, w_dv, block_n, block_v, device_kind)
    row_spec = pl.BlockSpec((bn, 1), lambda i, j: (i, 0))
    out_n1 = jax.ShapeDtypeStruct((n, 1), jnp.float32)
    logp, ent, lse = pl.pallas_call(
        functools.partial(_forward_kernel, n=n, v=v, inv_t=1.0 / temperature),
        grid=(cdiv(n, bn), cdiv(v, bv)),
        in_specs=[
            pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
            pl.BlockSpec((d, bv), lambda i, j: (0, j)),
            row_spec,
        ],
        out_specs=[row_spec, row_spec, row_spec],
        out_shape=[out_n1, out_n1, out_n1],
        scratch_shapes=[pltpu.VMEM((bn, 1), jnp.float32)] * 4,
        compiler_params=_tpu.compiler_params(interpret, limit),
        cost_estimate=_cost(h_nd, w_dv, bn, bv, 1, 1, cdiv(n, bn)),
        interpret=interpret,
        name="grouped_logprob_fwd",
    )(h_nd, w_dv, targets_n.astype(jnp.int32)[:, None])
    return logp[:, 0], ent[:, 0], lse[:, 0]


def _dz_tile(h, w, row_refs, row_ok, col_ok, col0, inv_t):
    t_ref, lse_ref, ent_ref, glp_ref, *gent_ref = row_refs
    z = dot_f32(h, w, ((1,), (0,))) * inv_t
    ok = jnp.logical_and(row_ok, col_ok)
    g_ent = gent_ref[0][...] if gent_ref else None
    return tiles.logits_grad(z, col0, ok, t_ref[...], lse_ref[...], ent_ref[...], glp_ref[...], g_ent, inv_t)


def _dh_kernel(h_ref, w_ref, *refs, n, v, inv_t):
    *row_refs, dh_ref, acc_sc = refs
    i, j = pl.program_id(0), pl.program_id(1)
    bn, bv = h_ref.shape[0], w_ref.shape[1]

    @pl.when(j == 0)
    def _init():
        acc_sc[...] = jnp.zeros_like(acc_sc)

    row_ok, col_ok = masks(i, j, bn, bv, n, v)
    # Padding columns of W are garbage; zero them so that 0 * NaN cannot enter dz @ Wᵀ.
    w = jnp.where(col_ok, w_ref[...], 0)
    dz = _dz_tile(h_ref[...], w, row_refs, row_ok, col_ok, j * bv, inv_t).astype(w.dtype)
    acc_sc[...] += dot_f32(dz, w, ((1,), (1,)))

    @pl.when(j == pl.num_programs(1) - 1)
    def _finish():
        dh_ref[...] = acc_sc[...].astype(dh_ref.dtype)


def _dw_kernel(h_ref, w_ref, *refs, n, v, inv_t):
    *row_refs, dw_ref, acc_sc = refs
    j, i = pl.program_id(0), pl.program_id(1)
    bn, bv = h_ref.shape[0], w_ref.shape[1]

    @pl.when(i == 0)
    def _init():
        acc_sc[...] = jnp.zeros_like(acc_sc)

    row_ok, col_ok = masks(i, j, bn, bv, n, v)
    # Padding rows of h are garbage; zero them so that 0 * NaN cannot enter hᵀ @ dz.
    h = jnp.where(row_ok, h_ref[...], 0)
    dz = _dz_tile(h, w_ref[...], row_refs, row_ok, col_ok, j * bv, inv_t).astype(h.dtype)
    acc_sc[...] += dot_f32(h, dz, ((0,), (0,)))

    @pl.when(i == pl.num_programs(1) - 1)
    def _finish():
        dw_ref[...] = acc_sc[...].astype(dw_ref.dtype)


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
    block_n=None,
    block_v=None,
    interpret=False,
    device_kind=None,
):
    """Returns (dh_nd, dw_dv) in the dtypes of h and W; g_entropy_n may be None."""
    n, d = h_nd.shape
    v = w_dv.shape[1]
    rows = [targets_n.astype(jnp.int32), lse_n, entropy_n, g_logp_n]
    if g_entropy_n is not None:
        rows.append(g_entropy_n)
    rows = [r[:, None] for r in rows]
    kw = dict(n=n, v=v, inv_t=1.0 / temperature)

    bn, bv, limit = _blocks("dh", h_nd, w_dv, block_n, block_v, device_kind)
    nb_n, nb_v = cdiv(n, bn), cdiv(v, bv)
    dh = pl.pallas_call(
        functools.partial(_dh_kernel, **kw),
        grid=(nb_n, nb_v),
        in_specs=[pl.BlockSpec((bn, d), lambda i, j: (i, 0)), pl.BlockSpec((d, bv), lambda i, j: (0, j))]
        + [pl.BlockSpec((bn, 1), lambda i, j: (i, 0))] * len(rows),
        out_specs=pl.BlockSpec((bn, d), lambda i, j: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((n, d), h_nd.dtype),
        scratch_shapes=[pltpu.VMEM((bn, d), jnp.float32)],
        compiler_params=_tpu.compiler_params(interpret, limit),
        cost_estimate=_cost(h_nd, w_dv, bn, bv, 2, 2, nb_n),
        interpret=interpret,
        name="grouped_logprob_dh",
    )(h_nd, w_dv, *rows)

    bn, bv, limit = _blocks("dw", h_nd, w_dv, block_n, block_v, device_kind)
    nb_n, nb_v = cdiv(n, bn), cdiv(v, bv)
    dw = pl.pallas_call(
        functools.partial(_dw_kernel, **kw),
        grid=(nb_v, nb_n),
        in_specs=[pl.BlockSpec((bn, d), lambda j, i: (i, 0)), pl.BlockSpec((d, bv), lambda j, i: (0, j))]
        + [pl.BlockSpec((bn, 1), lambda j, i: (i, 0))] * len(rows),
        out_specs=pl.BlockSpec((d, bv), lambda j, i: (0, j)),
        out_shape=jax.ShapeDtypeStruct((d, v), w_dv.dtype),
        scratch_shapes=[pltpu.VMEM((d, bv), jnp.float32)],
        compiler_params=_tpu.compiler_params(interpret, limit),
        cost_estimate=_cost(h_nd, w_dv, bn, bv, 2, nb_v, 2),
        interpret=interpret,
        name="grouped_logprob_dw",
    )(h_nd, w_dv, *rows)
    return dh, dw
