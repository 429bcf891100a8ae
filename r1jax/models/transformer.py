"""Decoder-only transformer of the Qwen2 / Qwen2.5 / Llama 3 family in Flax NNX.

Grouped-query attention with RoPE (optionally `llama3`-scaled), RMSNorm, SwiGLU, optional q/k/v biases and
tied embeddings. The forward returns final hidden states; the LM head is applied separately (`logits`), because
the fused log-prob kernels consume hidden states and the head weight rather than N×V logits.

Every parameter carries `logical_axes` metadata ('vocab', 'embed', 'mlp', 'q_heads', 'kv_heads', 'head_dim',
'norm'); `r1jax.sharding` maps them to mesh axes.

Attention layout for sampling: a `KVCache` holds per-layer keys/values at fixed slots; every row of the batch
writes its new tokens at the same slot index (prompts are left-padded), `valid_bs` marks which slots hold real
tokens, and `pos_b` is each row's next RoPE position, so padding never shifts positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from r1jax.models.config import ModelConfig

_MASK_VALUE = -1e30  # finite, so a query with no valid key (a pad row) gives a uniform softmax, not NaN


@struct.dataclass
class KVCache:
    k: tuple  # L × (B, S, K, Dh)
    v: tuple  # L × (B, S, K, Dh)
    valid_bs: jax.Array  # bool, slot holds a real token
    pos_b: jax.Array  # int32, RoPE position of each row's next token
    index: jax.Array  # int32 scalar, next slot to write (shared by all rows)

    @classmethod
    def init(cls, cfg: ModelConfig, batch: int, size: int, dtype=None) -> KVCache:
        dtype = dtype or cfg.dtype
        shape = (batch, size, cfg.num_kv_heads, cfg.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
        return cls(
            k=zeros,
            v=zeros,
            valid_bs=jnp.zeros((batch, size), bool),
            pos_b=jnp.zeros((batch,), jnp.int32),
            index=jnp.zeros((), jnp.int32),
        )

    @property
    def size(self) -> int:
        return self.valid_bs.shape[1]

    def repeat(self, n: int) -> KVCache:
        """Each row repeated n times along the batch (a prompt's prefill shared by its G samples)."""
        rep = lambda x: jnp.repeat(x, n, axis=0)
        return KVCache(
            k=tuple(map(rep, self.k)), v=tuple(map(rep, self.v)), valid_bs=rep(self.valid_bs),
            pos_b=rep(self.pos_b), index=self.index,
        )


@jax.custom_vjp
def linear(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w` for x (..., I) and a 2-D weight w (I, O), with the usual gradients written out by hand.

    Why by hand: the weight gradient contracts the token axis of x and of the output cotangent g, and XLA:CPU's
    matmul wants one of the two transposed first. Left to autodiff it transposes g, which for the MLP's gate and up
    projections is the wide (N, F) array, inside the loop fusion that computes it (SiLU's derivative): a strided
    write that cost a third of the tiny preset's SFT step. Here the narrower of the two is the one transposed
    (`benchmarks/measure/op_profile.py` shows the step before and after). The math is the standard one, so other
    backends see the same values and gradients (`tests/test_model.py` checks them against autodiff).
    """
    return x @ w


def _linear_fwd(x, w):
    return x @ w, (x, w)


def _linear_bwd(res, g):
    x, w = res
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    if g2.shape[-1] > x2.shape[-1]:  # transpose x (N, I), the narrower: dw = (g^T x)^T
        dw = jnp.einsum("no,ni->oi", g2, x2).T
    else:
        dw = jnp.einsum("ni,no->io", x2, g2)
    return (g @ w.T).astype(x.dtype), dw.astype(w.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


def _param(rngs: nnx.Rngs, shape, axes, dtype, std=0.02):
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32).astype(dtype), logical_axes=axes)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
    """RoPE inverse frequencies (Dh/2,), with Llama 3.1's piecewise rescaling when configured."""
    dh = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    rs = cfg.rope_scaling
    if rs is None:
        return inv_freq
    low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * jnp.pi / inv_freq
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor
    )
    smoothed = (1 - smooth) * inv_freq / rs.factor + smooth * inv_freq
    out = jnp.where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq)
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_medium, smoothed, out)


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype of norms, RoPE, attention scores and logits: float32, or the activations' dtype where wider
    (float64 under `jax.enable_x64`, which the tests' float64 oracles use). bf16 and f32 models compute in f32."""
    return jnp.promote_types(dtype, jnp.float32)


def apply_rope(x_bthd: jax.Array, positions_bt: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half RoPE as in Hugging Face's Qwen2/Llama (not the interleaved variant)."""
    ct = compute_dtype(x_bthd.dtype)
    freqs_btf = positions_bt.astype(ct)[..., None] * inv_freq.astype(ct)
    emb = jnp.concatenate([freqs_btf, freqs_btf], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    x = x_bthd.astype(ct)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos + rotated * sin).astype(x_bthd.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, param_dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x):
        ct = compute_dtype(x.dtype)
        x32 = x.astype(ct)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(ct) * y).astype(x.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, h, k, dh, pd = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.param_dtype
        self.cfg = cfg
        self.wq = _param(rngs, (d, h, dh), ("embed", "q_heads", "head_dim"), pd)
        self.wk = _param(rngs, (d, k, dh), ("embed", "kv_heads", "head_dim"), pd)
        self.wv = _param(rngs, (d, k, dh), ("embed", "kv_heads", "head_dim"), pd)
        self.wo = _param(rngs, (h, dh, d), ("q_heads", "head_dim", "embed"), pd)
        if cfg.qkv_bias:
            self.bq = nnx.Param(jnp.zeros((h, dh), pd), logical_axes=("q_heads", "head_dim"))
            self.bk = nnx.Param(jnp.zeros((k, dh), pd), logical_axes=("kv_heads", "head_dim"))
            self.bv = nnx.Param(jnp.zeros((k, dh), pd), logical_axes=("kv_heads", "head_dim"))

    def __call__(self, x_btd, positions_bt, bias_bts, inv_freq, cache_kv=None, index=None):
        cfg, dt = self.cfg, self.cfg.dtype
        b_, t_ = x_btd.shape[:2]

        def proj(w, bias):  # (B, T, D) @ (D, heads, Dh) as one 2-D matmul
            w = w[...].astype(dt)
            out = linear(x_btd, w.reshape(w.shape[0], -1)).reshape(b_, t_, *w.shape[1:])
            return out + (bias[...].astype(dt) if cfg.qkv_bias else 0)

        q = proj(self.wq, getattr(self, "bq", None))
        k = proj(self.wk, getattr(self, "bk", None))
        v = proj(self.wv, getattr(self, "bv", None))
        q, k = apply_rope(q, positions_bt, inv_freq), apply_rope(k, positions_bt, inv_freq)
        if cache_kv is not None:  # write the T new keys/values at slots [index, index + T)
            k_cache, v_cache = cache_kv
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
            cache_kv = (k, v)
        b, t, h, dh = q.shape
        kvh = cfg.num_kv_heads
        # Grouped layout (B, K, G, T, Dh): the batch axes lead and T sits beside Dh, the layout XLA's batched matmuls
        # take without transposing the (…, T, S) scores; the mask enters as an additive bias (0 or _MASK_VALUE).
        q = (q * jnp.asarray(dh**-0.5, dt)).reshape(b, t, kvh, h // kvh, dh).transpose(0, 2, 3, 1, 4)
        logits = jnp.einsum("bkgtd,bskd->bkgts", q, k.astype(dt), preferred_element_type=compute_dtype(dt))
        logits = logits + bias_bts[:, None, None]
        probs = jax.nn.softmax(logits, axis=-1).astype(dt)
        out = jnp.einsum("bkgts,bskd->bkgtd", probs, v.astype(dt)).transpose(0, 3, 1, 2, 4)
        wo = self.wo[...].astype(dt)
        return linear(out.reshape(b, t, h * dh), wo.reshape(h * dh, -1)), cache_kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        d, f, pd = cfg.embed_dim, cfg.mlp_dim, cfg.param_dtype
        self.dtype = cfg.dtype
        self.gate = _param(rngs, (d, f), ("embed", "mlp"), pd)
        self.up = _param(rngs, (d, f), ("embed", "mlp"), pd)
        self.down = _param(rngs, (f, d), ("mlp", "embed"), pd)

    def __call__(self, x):
        dt = self.dtype
        g = linear(x, self.gate[...].astype(dt))
        u = linear(x, self.up[...].astype(dt))
        return linear(jax.nn.silu(g) * u, self.down[...].astype(dt))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(cfg.embed_dim, cfg.rms_norm_eps, cfg.param_dtype)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = RMSNorm(cfg.embed_dim, cfg.rms_norm_eps, cfg.param_dtype)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x, positions_bt, bias_bts, inv_freq, cache_kv=None, index=None):
        a, cache_kv = self.attn(self.attn_norm(x), positions_bt, bias_bts, inv_freq, cache_kv, index)
        x = x + a
        return x + self.mlp(self.mlp_norm(x)), cache_kv


class Transformer(nnx.Module):
    """`model(tokens_bt, ...) -> (hidden_btd, cache)`; `model.logits(hidden)` applies the LM head."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = _param(rngs, (cfg.vocab_size, cfg.embed_dim), ("vocab", "embed"), cfg.param_dtype)
        self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.embed_dim, cfg.rms_norm_eps, cfg.param_dtype)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.embed_dim, cfg.vocab_size), ("embed", "vocab"), cfg.param_dtype)

    def lm_head_weight(self) -> jax.Array:
        """The LM head W (D, V): the embedding transposed when tied."""
        return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

    def logits(self, hidden_btd: jax.Array) -> jax.Array:
        """f32 logits (…, V) from hidden states; materializes N×V, so training uses r1jax.kernels instead."""
        w = self.lm_head_weight().astype(self.cfg.dtype)
        ct = compute_dtype(self.cfg.dtype)
        return jnp.einsum("...d,dv->...v", hidden_btd.astype(self.cfg.dtype), w, preferred_element_type=ct)

    def __call__(
        self,
        tokens_bt: jax.Array,
        *,
        mask_bt: jax.Array | None = None,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
        cache: KVCache | None = None,
        remat: bool | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Hidden states (B, T, D) after the final norm.

        Without a cache: causal attention over `tokens_bt`, keys restricted to `mask_bt` (left padding) and to the
        query's segment (`segment_ids_bt`, for packed SFT rows). Positions default to the count of real tokens
        before each one. With a cache: the T tokens are appended at `cache.index` and attend to every valid slot
        up to their own.

        `remat` (default: `cfg.remat` without a cache, off with one) recomputes each block in the backward pass. A
        training forward through a cache (`logprobs.sequence_logps` with a group size) turns it on; sampling
        must not (under the decode loop's trace a lifted transform may not touch the captured parameters).
        """
        cfg = self.cfg
        b, t = tokens_bt.shape
        mask_bt = jnp.ones((b, t), bool) if mask_bt is None else mask_bt.astype(bool)
        counts_bt = jnp.cumsum(mask_bt, axis=1, dtype=jnp.int32) - 1
        if cache is None:
            if positions_bt is None:
                positions_bt = jnp.maximum(counts_bt, 0)
            causal_tt = jnp.tril(jnp.ones((t, t), bool))
            mask_bts = causal_tt[None] & mask_bt[:, None, :]
            if segment_ids_bt is not None:
                mask_bts &= segment_ids_bt[:, :, None] == segment_ids_bt[:, None, :]
            mask_bts |= jnp.eye(t, dtype=bool)[None]  # a pad query attends itself: no empty rows
        else:
            if positions_bt is None:
                positions_bt = cache.pos_b[:, None] + jnp.maximum(counts_bt, 0)
            valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, mask_bt, (0, cache.index))
            slots_t = cache.index + jnp.arange(t)
            mask_bts = valid_bs[:, None, :] & (jnp.arange(cache.size)[None, None, :] <= slots_t[None, :, None])
        bias_bts = jnp.where(mask_bts, 0.0, _MASK_VALUE).astype(compute_dtype(cfg.dtype))
        inv_freq = rope_inv_freq(cfg)
        x = jnp.take(self.embed[...], tokens_bt, axis=0, mode="clip").astype(cfg.dtype)  # pad ids may be out of range
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            index = None if cache is None else cache.index
            if (cfg.remat and cache is None) if remat is None else remat:
                x, kv = nnx.remat(lambda blk, *a: blk(*a), static_argnums=())(
                    block, x, positions_bt, bias_bts, inv_freq, kv, index
                )
            else:
                x, kv = block(x, positions_bt, bias_bts, inv_freq, kv, index)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        hidden = self.final_norm(x)
        if cache is not None:
            cache = KVCache(
                k=tuple(new_k), v=tuple(new_v), valid_bs=valid_bs,
                pos_b=cache.pos_b + mask_bt.sum(axis=1, dtype=jnp.int32), index=cache.index + t,
            )
        return hidden, cache


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def compute_logits(model: Transformer, tokens_bt) -> jax.Array:
    """f32 logits (B, T, V) for int token ids (B, T) (f64 for a float64 model)."""
    hidden, _ = model(jnp.asarray(tokens_bt, jnp.int32))
    return model.logits(hidden).astype(compute_dtype(model.cfg.dtype))
