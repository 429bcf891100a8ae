"""Grouped log-prob as Pallas GPU kernels (Triton lowering).

Triton programs of one launch run concurrently, so a reduction cannot be a
sequential grid axis as on TPU; each program owns an output tile and loops
over the reduced axis itself:

  forward  one program per token block; loop over vocab blocks (online
           log-sum-exp), each logit tile itself a loop over D blocks.
  dh       one program per token block; loop over vocab blocks: recompute
           the logit tile, then for each D block add dz @ W_blkᵀ into its
           own rows of an f32 dh.
  dW       one program per vocab block; loop over token blocks: recompute
           the logit tile, then for each D block add h_blkᵀ @ dz into its
           own columns of an f32 dW.

Refs are whole arrays in global memory, read with masked loads (`other=0`)
so that ragged N, V and D tails contribute exactly zero; every block size is
a power of 2 (Triton tensors must be) and ≥ 16 (tl.dot). f32 inputs use
IEEE f32 matmuls (no TF32), bf16 inputs bf16 matmuls; accumulation is f32.
The read-modify-write of dh / dW tiles is race-free: each tile belongs to
exactly one program, which touches it in program order.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from r1jax.kernels._common import cdiv
from r1jax.kernels.grouped_logprob import tiles

BLOCK_N = 64
BLOCK_V = 128
BLOCK_D = 64
NUM_WARPS = 4
NUM_STAGES = 2


def iota(shape, axis):
    return lax.broadcasted_iota(jnp.int32, shape, axis)


def check_blocks(**blocks):
    for name, b in blocks.items():
        if b < 16 or b & (b - 1):
            raise ValueError(f"{name}={b}: Triton blocks must be powers of 2 and >= 16")


def _precision(dtype):
    return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


def dot(a, b, contract):
    return lax.dot_general(
        a, b, (contract, ((), ())), preferred_element_type=jnp.float32, precision=_precision(a.dtype)
    )


def load_h(h_ref, row0, d0, bn, bd, row_ok):
    n_d = h_ref.shape[1]
    mask = jnp.logical_and(row_ok, d0 + iota((1, bd), 1) < n_d)
    return plgpu.load(h_ref.at[pl.ds(row0, bn), pl.ds(d0, bd)], mask=mask, other=0)


def load_w(w_ref, d0, col0, bd, bv, col_ok):
    n_d = w_ref.shape[0]
    mask = jnp.logical_and(d0 + iota((bd, 1), 0) < n_d, col_ok)
    return plgpu.load(w_ref.at[pl.ds(d0, bd), pl.ds(col0, bv)], mask=mask, other=0)


def load_rows(ref, row0, bn, row_ok):
    return plgpu.load(ref.at[pl.ds(row0, bn), :], mask=row_ok, other=0)


def logit_tile(h_ref, w_ref, row0, col0, row_ok, col_ok, *, bn, bv, bd, inv_t):
    """(bn, bv) f32 tile of (h @ W) / T, looping over D in blocks of bd."""

    def body(k, acc):
        d0 = k * bd
        h = load_h(h_ref, row0, d0, bn, bd, row_ok)
        w = load_w(w_ref, d0, col0, bd, bv, col_ok)
        return acc + dot(h, w, ((1,), (0,)))

    acc = lax.fori_loop(0, cdiv(h_ref.shape[1], bd), body, jnp.zeros((bn, bv), jnp.float32))
    return acc * inv_t


def _forward_kernel(h_ref, w_ref, t_ref, logp_ref, ent_ref, lse_ref, *, bn, bv, bd, inv_t):
    n, v = h_ref.shape[0], w_ref.shape[1]
    row0 = pl.program_id(0) * bn
    row_ok = row0 + iota((bn, 1), 0) < n
    targets = load_rows(t_ref, row0, bn, row_ok)

    def body(j, stats):
        col0 = j * bv
        col_ok = col0 + iota((1, bv), 1) < v
        z = logit_tile(h_ref, w_ref, row0, col0, row_ok, col_ok, bn=bn, bv=bv, bd=bd, inv_t=inv_t)
        return tiles.update_stats(stats, z, col0, col_ok, targets)

    stats = lax.fori_loop(0, cdiv(v, bv), body, tiles.init_stats(bn))
    for ref, val in zip((logp_ref, ent_ref, lse_ref), tiles.finalize_stats(stats)):
        plgpu.store(ref.at[pl.ds(row0, bn), :], val, mask=row_ok)


def compiler_params():
    return plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=NUM_STAGES)


def forward(
    h_nd,
    w_dv,
    targets_n,
    *,
    temperature: float,
    block_n: int = BLOCK_N,
    block_v: int = BLOCK_V,
    block_d: int = BLOCK_D,
    interpret=False,
):
    """Returns (logp_n, entropy_n, lse_n), f32."""
    check_blocks(block_n=block_n, block_v=block_v, block_d=block_d)
    n = h_nd.shape[0]
    out_n1 = jax.ShapeDtypeStruct((n, 1), jnp.float32)
    logp, ent, lse = pl.pallas_call(
        functools.partial(_forward_kernel, bn=block_n, bv=block_v, bd=block_d, inv_t=1.0 / temperature),
        grid=(cdiv(n, block_n),),
        out_shape=[out_n1, out_n1, out_n1],
        compiler_params=compiler_params(),
        interpret=interpret,
        name="grouped_logprob_fwd",
    )(h_nd, w_dv, targets_n.astype(jnp.int32)[:, None])
    return logp[:, 0], ent[:, 0], lse[:, 0]


def _dz_tile(h_ref, w_ref, row_refs, row0, col0, row_ok, col_ok, *, bn, bv, bd, inv_t):
    t, lse, ent, g_lp, *g_ent = (load_rows(r, row0, bn, row_ok) for r in row_refs)
    z = logit_tile(h_ref, w_ref, row0, col0, row_ok, col_ok, bn=bn, bv=bv, bd=bd, inv_t=inv_t)
    ok = jnp.logical_and(row_ok, col_ok)
    dz = tiles.logits_grad(z, col0, ok, t, lse, ent, g_lp, g_ent[0] if g_ent else None, inv_t)
    return dz.astype(h_ref.dtype)


def accumulate_dh(h_ref, w_ref, dh_ref, dz_fn, *, bn, bv, bd):
    """Body of a dh kernel (one program per token block): dh[rows] = Σ_j dz_j @ W[:, cols_j]ᵀ.

    dz_fn(row0, col0, row_ok, col_ok) returns the (bn, bv) cotangent tile of
    h @ W in W's dtype, zero outside the valid rows and columns. dh_ref is an
    f32 (N, D) output; this program zeroes, then owns, its rows.
    """
    n, d = h_ref.shape
    v = w_ref.shape[1]
    row0 = pl.program_id(0) * bn
    row_ok = row0 + iota((bn, 1), 0) < n

    def tile(k):
        mask = jnp.logical_and(row_ok, k * bd + iota((1, bd), 1) < d)
        return dh_ref.at[pl.ds(row0, bn), pl.ds(k * bd, bd)], mask

    @pl.loop(0, cdiv(d, bd))
    def _zero(k):
        ref, mask = tile(k)
        plgpu.store(ref, jnp.zeros((bn, bd), jnp.float32), mask=mask)

    @pl.loop(0, cdiv(v, bv))
    def _vocab_block(j):
        col0 = j * bv
        col_ok = col0 + iota((1, bv), 1) < v
        dz = dz_fn(row0, col0, row_ok, col_ok)

        @pl.loop(0, cdiv(d, bd))
        def _d_block(k):
            w = load_w(w_ref, k * bd, col0, bd, bv, col_ok)
            ref, mask = tile(k)
            acc = plgpu.load(ref, mask=mask, other=0.0)
            plgpu.store(ref, acc + dot(dz, w, ((1,), (1,))), mask=mask)


def accumulate_dw(h_ref, w_ref, dw_ref, dz_fn, *, bn, bv, bd):
    """Body of a dW kernel (one program per vocab block): dW[:, cols] = Σ_i h[rows_i]ᵀ @ dz_i.

    dz_fn as in accumulate_dh (in h's dtype); dw_ref is an f32 (D, V) output
    of which this program zeroes, then owns, its columns.
    """
    n, d = h_ref.shape
    v = w_ref.shape[1]
    col0 = pl.program_id(0) * bv
    col_ok = col0 + iota((1, bv), 1) < v

    def tile(k):
        mask = jnp.logical_and(k * bd + iota((bd, 1), 0) < d, col_ok)
        return dw_ref.at[pl.ds(k * bd, bd), pl.ds(col0, bv)], mask

    @pl.loop(0, cdiv(d, bd))
    def _zero(k):
        ref, mask = tile(k)
        plgpu.store(ref, jnp.zeros((bd, bv), jnp.float32), mask=mask)

    @pl.loop(0, cdiv(n, bn))
    def _token_block(i):
        row0 = i * bn
        row_ok = row0 + iota((bn, 1), 0) < n
        dz = dz_fn(row0, col0, row_ok, col_ok)

        @pl.loop(0, cdiv(d, bd))
        def _d_block(k):
            h = load_h(h_ref, row0, k * bd, bn, bd, row_ok)
            ref, mask = tile(k)
            acc = plgpu.load(ref, mask=mask, other=0.0)
            plgpu.store(ref, acc + dot(h, dz, ((0,), (0,))), mask=mask)


def _dh_kernel(h_ref, w_ref, *refs, bn, bv, bd, inv_t):
    *row_refs, dh_ref = refs
    dz_fn = functools.partial(_dz_tile, h_ref, w_ref, row_refs, bn=bn, bv=bv, bd=bd, inv_t=inv_t)
    accumulate_dh(h_ref, w_ref, dh_ref, dz_fn, bn=bn, bv=bv, bd=bd)


def _dw_kernel(h_ref, w_ref, *refs, bn, bv, bd, inv_t):
    *row_refs, dw_ref = refs
    dz_fn = functools.partial(_dz_tile, h_ref, w_ref, row_refs, bn=bn, bv=bv, bd=bd, inv_t=inv_t)
    accumulate_dw(h_ref, w_ref, dw_ref, dz_fn, bn=bn, bv=bv, bd=bd)


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
    block_d: int = BLOCK_D,
    interpret=False,
):
    """Returns (dh_nd, dw_dv) in the dtypes of h and W; g_entropy_n may be None.

    dh and dW are accumulated in f32 buffers (N×D and D×V, the size of the
    gradients themselves) and cast at the end.
    """
    check_blocks(block_n=block_n, block_v=block_v, block_d=block_d)
    n, d = h_nd.shape
    v = w_dv.shape[1]
    rows = [targets_n.astype(jnp.int32), lse_n, entropy_n, g_logp_n]
    if g_entropy_n is not None:
        rows.append(g_entropy_n)
    rows = [r[:, None] for r in rows]
    kw = dict(bn=block_n, bv=block_v, bd=block_d, inv_t=1.0 / temperature)
    dh = pl.pallas_call(
        functools.partial(_dh_kernel, **kw),
        grid=(cdiv(n, block_n),),
        out_shape=jax.ShapeDtypeStruct((n, d), jnp.float32),
        compiler_params=compiler_params(),
        interpret=interpret,
        name="grouped_logprob_dh",
    )(h_nd, w_dv, *rows)
    dw = pl.pallas_call(
        functools.partial(_dw_kernel, **kw),
        grid=(cdiv(v, block_v),),
        out_shape=jax.ShapeDtypeStruct((d, v), jnp.float32),
        compiler_params=compiler_params(),
        interpret=interpret,
        name="grouped_logprob_dw",
    )(h_nd, w_dv, *rows)
    return dh.astype(h_nd.dtype), dw.astype(w_dv.dtype)
