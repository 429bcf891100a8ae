"""The blockwise kernels inside `shard_map`: tokens split over the mesh, the vocabulary over its tensor axis.

XLA cannot partition a Mosaic (or Triton) custom call, so a Pallas kernel called on arrays sharded over a mesh
fails to compile ("Mosaic kernels cannot be automatically partitioned"). Here each device runs the kernel on its
own tokens and its own slice of the vocabulary, and the per-token statistics are combined across the vocabulary
shards with a few (N_local,) collectives:

    lse       = log Σ_k exp(lse_k)                               (k: the vocabulary shards)
    target z  = Σ_k z_k[target]                                  (the target lies in exactly one shard)
    E_p[x]    = Σ_k exp(lse_k − lse) E_{p_k}[x]                  (x = z for the entropy, zp − zq for the KL)

The backward kernels take the global lse (and entropy or KL) as inputs, so each shard's logit cotangent
p_k(...) is already the global one: dh is summed over the vocabulary shards and dW over the token shards.

Why split the vocabulary rather than gather the head onto every device: the head is the largest weight of a
small model (Qwen2.5-0.5B: 136 M of 494 M parameters) and its gradient is as large, so with tensor parallelism
a gathered head and its full-size dW would cost 2·D·V·bytes per device (0.5 GB at 0.5B, 2.2 GB at 7B in bf16)
for every kernel call, where the split costs D·V/t and three (N_local,) all-reduces. With tensor = 1 (FSDP or
data parallelism) both are the same program: W's D axis is gathered for the call either way, as XLA gathers it
for the plain matmul.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

# The mesh axis that splits the vocabulary; None gathers the head onto every device (benchmarks compare the two).
VOCAB_AXIS = "tensor"


def axes(mesh, n: int, v: int):
    """(token axes, vocabulary axis or None) for a call on N tokens and V columns.

    Tokens go over every mesh axis but the vocabulary's (those of size 1 left out); an axis whose split does not
    divide its dimension is left out too (that dimension is then replicated, which is correct, only slower).
    """
    split = VOCAB_AXIS if VOCAB_AXIS in mesh.axis_names else None
    v_axis = split if split and mesh.shape[split] > 1 and v % mesh.shape[split] == 0 else None
    tokens = tuple(a for a in mesh.axis_names if a != split and mesh.shape[a] > 1)
    if n % math.prod(mesh.shape[a] for a in tokens):
        tokens = ()
    return tokens, v_axis


def _lse(lse_k, v_axis):
    m = lax.pmax(lse_k, v_axis)
    return m + jnp.log(lax.psum(jnp.exp(lse_k - m), v_axis))


def _offset(w_local, v_axis):
    return lax.axis_index(v_axis) * w_local.shape[1] if v_axis else 0


def _call(mesh, fn, in_specs, out_specs):
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def logprob_forward(module, mesh, h_nd, w_dv, targets_n, **kw):
    """`module.forward` (grouped log-prob) per device; returns the global (logp_n, entropy_n, lse_n)."""
    tok, v_axis = axes(mesh, *targets_n.shape, w_dv.shape[1])

    def local(h, w, t):
        logp, ent, lse = module.forward(h, w, t - _offset(w, v_axis), **kw)
        if v_axis is None:
            return logp, ent, lse
        lse_g = _lse(lse, v_axis)
        target_z = lax.psum(logp + lse, v_axis)  # logp + lse = the target logit, 0 in the shards without it
        mean_z = lax.psum(jnp.exp(lse - lse_g) * (lse - ent), v_axis)  # E_p[z] = lse - H per shard
        return target_z - lse_g, lse_g - mean_z, lse_g

    return _call(mesh, local, (P(tok, None), P(None, v_axis), P(tok)), (P(tok),) * 3)(h_nd, w_dv, targets_n)


def logprob_backward(module, mesh, h_nd, w_dv, targets_n, *rows_n, **kw):
    """`module.backward` per device from the global row statistics; returns (dh_nd, dw_dv)."""
    tok, v_axis = axes(mesh, *targets_n.shape, w_dv.shape[1])
    has_entropy = rows_n[-1] is not None
    rows_n = [r for r in rows_n if r is not None]

    def local(h, w, t, *rows):
        rows = list(rows) if has_entropy else [*rows, None]
        dh, dw = module.backward(h, w, t - _offset(w, v_axis), *rows, **kw)
        return _reduce(dh, dw, tok, v_axis)

    in_specs = (P(tok, None), P(None, v_axis), P(tok), *[P(tok)] * len(rows_n))
    return _call(mesh, local, in_specs, (P(tok, None), P(None, v_axis)))(h_nd, w_dv, targets_n, *rows_n)


def _reduce(dh, dw, tok, v_axis):
    """dh sums over the vocabulary shards, dW over the token shards."""
    if v_axis is not None:
        dh = lax.psum(dh, v_axis)
    if tok:
        dw = lax.psum(dw, tok)
    return dh, dw


def kl_forward(module, mesh, h_p_nd, w_p_dv, h_q_ne, w_q_ev, **kw):
    """`module.forward` (KL) per device; returns the global (kl_n, lse_p_n, lse_q_n)."""
    tok, v_axis = axes(mesh, h_p_nd.shape[0], w_p_dv.shape[1])

    def local(hp, wp, hq, wq):
        kl, lse_p, lse_q = module.forward(hp, wp, hq, wq, **kw)
        if v_axis is None:
            return kl, lse_p, lse_q
        lse_p_g, lse_q_g = _lse(lse_p, v_axis), _lse(lse_q, v_axis)
        # per shard E_{p_k}[zp − zq] = KL_k + lse_p_k − lse_q_k
        mean_delta = lax.psum(jnp.exp(lse_p - lse_p_g) * (kl + lse_p - lse_q), v_axis)
        return mean_delta - lse_p_g + lse_q_g, lse_p_g, lse_q_g

    specs = (P(tok, None), P(None, v_axis)) * 2
    return _call(mesh, local, specs, (P(tok),) * 3)(h_p_nd, w_p_dv, h_q_ne, w_q_ev)


def kl_backward(module, mesh, h_p_nd, w_p_dv, h_q_ne, w_q_ev, *rows_n, **kw):
    """`module.backward` (KL) per device from the global (lse_p, lse_q, kl, g); returns (dh_p_nd, dw_p_dv)."""
    tok, v_axis = axes(mesh, h_p_nd.shape[0], w_p_dv.shape[1])

    def local(hp, wp, hq, wq, *rows):
        return _reduce(*module.backward(hp, wp, hq, wq, *rows, **kw), tok, v_axis)

    specs = (P(tok, None), P(None, v_axis)) * 2 + (P(tok),) * len(rows_n)
    return _call(mesh, local, specs, (P(tok, None), P(None, v_axis)))(h_p_nd, w_p_dv, h_q_ne, w_q_ev, *rows_n)
