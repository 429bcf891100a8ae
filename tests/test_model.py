"""Transformer unit tests: KV cache against the plain forward, left-padding invariance, GQA, preset sizes
against the published parameter counts, and the llama3 RoPE frequencies."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax.models import PRESETS, KVCache, ModelConfig, RopeScaling, Transformer, get_preset, init_model
from r1jax.models.transformer import linear, rope_inv_freq

CFG = ModelConfig(
    vocab_size=64,
    embed_dim=32,
    mlp_dim=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    qkv_bias=True,
    rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=16),
)


def _random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A model with O(1) activations and logits (the std-0.02 init gives near-constant logits, which would let
    a wrong mask or position pass a tolerance), and random norm scales and biases so that none is a no-op."""
    # Drawn with numpy into an abstract model: eager jax.random per shape would compile dozens of tiny programs.
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape, name = var.get_value().shape, path[-1]
        z = rng.standard_normal(shape, np.float32)
        if name == "scale":
            z = 1.0 + 0.2 * z
        elif name in ("bq", "bk", "bv"):
            z = 0.3 * z
        elif name == "wo":
            z = z / math.sqrt(shape[0] * shape[1])
        elif name != "embed":
            z = z / math.sqrt(shape[0])
        var.set_value(jnp.asarray(z, cfg.param_dtype))
    return model


@nnx.jit
def _forward(model, tokens_bt, mask_bt):
    hidden, _ = model(tokens_bt, mask_bt=mask_bt)
    return model.logits(hidden)


@nnx.jit
def _cached(model, tokens_bt, mask_bt, cache):
    hidden, cache = model(tokens_bt, mask_bt=mask_bt, cache=cache)
    return model.logits(hidden), cache


def _tokens(b, t, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, CFG.vocab_size, jnp.int32)


def test_random_model_logits_are_spread():
    model = _random_model(CFG)
    logits = _forward(model, _tokens(2, 10), jnp.ones((2, 10), bool))
    assert float(jnp.std(logits)) > 1.0  # so that the atol of the tests below is tight


def test_cache_prefill_and_decode_equal_full_forward():
    model = _random_model(CFG)
    tokens_bt = _tokens(2, 11)
    ones = lambda t: jnp.ones((2, t), bool)
    want = _forward(model, tokens_bt, ones(11))
    cache = KVCache.init(CFG, 2, 16)
    got = []
    for start, stop in [(0, 4), (4, 5), (5, 6), (6, 9), (9, 10), (10, 11)]:  # prefill, single steps, a chunk
        logits, cache = _cached(model, tokens_bt[:, start:stop], ones(stop - start), cache)
        got.append(logits)
    got = jnp.concatenate(got, axis=1)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
    assert int(cache.index) == 11 and cache.pos_b.tolist() == [11, 11]
    assert cache.valid_bs.tolist() == [[True] * 11 + [False] * 5] * 2


def test_left_padding_is_invisible():
    """Row 0 left-padded by 3 gives the same logits on its real tokens as unpadded, with and without the cache."""
    model = _random_model(CFG)
    tokens = _tokens(1, 7, seed=1)
    want = _forward(model, tokens, jnp.ones((1, 7), bool))[0]
    pad = 3
    padded_bt = jnp.concatenate([jnp.full((1, pad), 5, jnp.int32), tokens], axis=1)
    other_bt = _tokens(1, 7 + pad, seed=2)  # a full-length neighbour row in the same batch
    batch_bt = jnp.concatenate([padded_bt, other_bt])
    mask_bt = jnp.concatenate([jnp.arange(7 + pad)[None] >= pad, jnp.ones((1, 7 + pad), bool)])
    got = _forward(model, batch_bt, mask_bt)[0, pad:]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)

    # Cached: prefill the padded prompt (first 5 real tokens), then decode the last 2 one at a time.
    cache = KVCache.init(CFG, 2, 12)
    logits, cache = _cached(model, batch_bt[:, : pad + 5], mask_bt[:, : pad + 5], cache)
    steps = [logits[0, pad:]]
    for j in range(pad + 5, pad + 7):
        logits, cache = _cached(model, batch_bt[:, j : j + 1], jnp.ones((2, 1), bool), cache)
        steps.append(logits[0])
    np.testing.assert_allclose(jnp.concatenate(steps), want, atol=1e-4, rtol=1e-5)
    assert cache.pos_b.tolist() == [7, 10]

    # The pad token's id must not matter either (pad positions are masked as keys).
    repadded_bt = batch_bt.at[0, :pad].set(9)
    np.testing.assert_allclose(_forward(model, repadded_bt, mask_bt)[0, pad:], want, atol=1e-4, rtol=1e-5)


def test_gqa_param_shapes():
    model = nnx.eval_shape(lambda: Transformer(CFG, rngs=nnx.Rngs(0)))
    attn = model.blocks[0].attn
    d, h, k, dh = CFG.embed_dim, CFG.num_heads, CFG.num_kv_heads, CFG.head_dim
    shapes = {name: getattr(attn, name).get_value().shape for name in ("wq", "wk", "wv", "wo", "bq", "bk", "bv")}
    assert shapes == dict(
        wq=(d, h, dh), wk=(d, k, dh), wv=(d, k, dh), wo=(h, dh, d), bq=(h, dh), bk=(k, dh), bv=(k, dh)
    )
    assert model.embed.get_value().shape == (CFG.vocab_size, d)
    assert model.lm_head.get_value().shape == (d, CFG.vocab_size)
    assert not hasattr(nnx.eval_shape(lambda: init_model(CFG.replace(tie_embeddings=True))), "lm_head")


def test_gqa_equals_mha_with_repeated_kv_heads():
    """Query head h reads key/value head h // (H / K), as in transformers' repeat_kv."""
    gqa = _random_model(CFG)
    group = CFG.num_heads // CFG.num_kv_heads
    mha = _random_model(CFG.replace(num_kv_heads=CFG.num_heads))
    mha_params = dict(nnx.to_flat_state(nnx.state(mha, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(gqa, nnx.Param)):
        x = var.get_value()
        if path[-1] in ("wk", "wv"):
            x = jnp.repeat(x, group, axis=1)
        elif path[-1] in ("bk", "bv"):
            x = jnp.repeat(x, group, axis=0)
        mha_params[path].set_value(x)
    tokens_bt = _tokens(2, 9)
    ones = jnp.ones((2, 9), bool)
    np.testing.assert_allclose(_forward(mha, tokens_bt, ones), _forward(gqa, tokens_bt, ones), atol=1e-4, rtol=1e-5)


# Published totals (safetensors parameter counts on the Hugging Face model pages / config arithmetic).
PUBLISHED = {
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-7b": 7_615_616_512,
    "llama-3.1-8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_param_counts_match_published(name):
    assert PRESETS[name].num_params() == PUBLISHED[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_num_params_counts_the_module(name):
    """num_params() agrees with the parameters the module actually creates (abstractly: nothing allocated)."""
    cfg = PRESETS[name]
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    leaves = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert sum(math.prod(x.shape) for x in leaves) == cfg.num_params()


def _llama3_reference(theta, dh, factor, low, high, old_context):
    """Meta's `apply_scaling` from the Llama 3.1 reference code, written as its per-frequency loop, in float64."""
    out = []
    for freq in 1.0 / theta ** (np.arange(0, dh, 2, dtype=np.float64) / dh):
        wavelen = 2 * math.pi / freq
        if wavelen < old_context / high:
            out.append(freq)
        elif wavelen > old_context / low:
            out.append(freq / factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return np.array(out)


def test_llama3_rope_frequencies():
    cfg = get_preset("llama-3.1-8b")
    got = np.asarray(rope_inv_freq(cfg), np.float64)
    want = _llama3_reference(500_000.0, 128, 8.0, 1.0, 4.0, 8192)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    plain = 1.0 / 500_000.0 ** (np.arange(0, 128, 2) / 128)
    # High frequencies untouched, low ones divided by 8, and a smoothed band in between.
    assert got[0] == 1.0 and abs(got[10] / plain[10] - 1) < 1e-5
    assert abs(got[-1] / (plain[-1] / 8) - 1) < 1e-5 and abs(got[63] / plain[63] - 0.125) < 1e-5
    ratio = got / plain
    medium = (ratio > 0.13) & (ratio < 0.99)
    assert 3 <= medium.sum() <= 10, ratio  # wavelengths between 2048 and 8192
    assert np.all(np.diff(ratio) <= 1e-6)  # the scale falls monotonically from 1 to 1/8
    # Without scaling: the plain RoPE frequencies.
    np.testing.assert_allclose(np.asarray(rope_inv_freq(cfg.replace(rope_scaling=None))), plain, rtol=1e-5)


@pytest.mark.parametrize("shape_x, shape_w", [((3, 5, 8), (8, 24)), ((3, 5, 24), (24, 8)), ((7, 16), (16, 16))])
def test_linear_gradients_equal_autodiff(shape_x, shape_w):
    """The hand-written VJP of `linear` (it picks which operand to transpose) against autodiff of `x @ w`, for a
    wide output (transposes x), a narrow one (transposes the cotangent) and a square one."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape_x), jnp.float32)
    w = jnp.asarray(rng.standard_normal(shape_w), jnp.float32)
    c = jnp.asarray(rng.standard_normal(shape_x[:-1] + shape_w[-1:]), jnp.float32)
    ours = jax.grad(lambda x, w: (linear(x, w) * c).sum(), (0, 1))(x, w)
    ref = jax.grad(lambda x, w: ((x @ w) * c).sum(), (0, 1))(x, w)
    np.testing.assert_allclose(np.asarray(linear(x, w)), np.asarray(x @ w), rtol=1e-6)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
