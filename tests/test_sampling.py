"""Tests of r1jax.sampling: cache vs no-cache greedy, sampling distributions (also at vocabulary scale), stops,
log-probs, sharding, compiles; rollout tests run under both schedulers, and the continuous one must reproduce the
static one token for token."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numerics
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from r1jax import sampling
from r1jax.models import KVCache, get_preset, init_model, logprobs
from r1jax.sampling import Rollout, SamplingConfig

VOCAB = 48
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15, 16, 17]]


def tiny_model(seed=0, scale=16.0):
    """A 2-layer random model whose weights are scaled up so greedy continuations are not one repeated token."""
    cfg = get_preset(
        "tiny",
        vocab_size=VOCAB,
        num_layers=2,
        embed_dim=32,
        mlp_dim=64,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        tie_embeddings=False,
    )
    model = init_model(cfg, seed)
    nnx.update(model, jax.tree.map(lambda x: x * scale if x.ndim >= 2 else x, nnx.state(model)))
    return model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def oracle_logps(model, rollout, temperature=1.0):
    """The float64 oracle of a rollout's completion log-probs (numerics.py), and the float32 no-cache recompute
    beside it: the reference that sets how far a float32 evaluation may be from the oracle on this CPU."""
    recomputed = np.asarray(logprobs.completion_logps(model, None, rollout, temperature=temperature))
    with jax.enable_x64(True):
        oracle = logprobs.completion_logps(numerics.f64_model(model), None, rollout, temperature=temperature)
    return recomputed, np.asarray(oracle)


def assert_logps_accurate(rollout, recomputed, oracle, *others):
    """The sampler's log-probs (and `others`, the same tokens' log-probs by another schedule) are as accurate as the
    no-cache recompute on the rollout's tokens, against the float64 oracle (a logit scaled 16x rounds at the 1e-6
    level, so a fixed 1e-5 passes on one CPU and fails on another)."""
    mask = np.asarray(rollout.completion_mask_bt)
    for got in (rollout.logps_bt, *others):
        numerics.assert_as_accurate(np.asarray(got)[mask], recomputed[mask], oracle[mask])


# Continuous runs use fewer slots than samples (12 samples in the rollout tests), and a slot count that is not a
# multiple of G, so refills happen mid-decode and slots hold samples of different prompts side by side.
SLOTS = 5


def scheduled(config, scheduler):
    return config.replace(scheduler="continuous", num_slots=SLOTS) if scheduler == "continuous" else config


schedulers = pytest.mark.parametrize("scheduler", ["static", "continuous"])


# ------------------------------------------------------------------------------------------------ cache vs reference


@schedulers
def test_greedy_with_cache_equals_no_cache_reference(model, scheduler):
    slots = 3 if scheduler == "continuous" else 0
    got = sampling.generate(model, PROMPTS, max_new_tokens=20, scheduler=scheduler, num_slots=slots)
    want = sampling.reference_generate(model, PROMPTS, max_new_tokens=20)
    assert [rows[0] for rows in got] == want
    # The check means something only if continuations depend on the prompt and vary along the way.
    assert len({tuple(w) for w in want}) == len(PROMPTS)
    assert all(len(set(w)) > 2 for w in want)


@schedulers
def test_generate_cuts_at_eos_and_returns_num_samples_lists(model, scheduler):
    free = sampling.generate(model, PROMPTS, max_new_tokens=20)
    eos = free[1][0][5]
    slots = 3 if scheduler == "continuous" else 0
    got = sampling.generate(
        model, PROMPTS, max_new_tokens=20, eos_id=eos, num_samples=2, scheduler=scheduler, num_slots=slots
    )
    for rows_free, rows in zip(free, got):
        first = rows_free[0].index(eos) if eos in rows_free[0] else len(rows_free[0])
        assert rows == [rows_free[0][:first]] * 2
    assert any(len(rows[0]) < 20 for rows in got)


def test_remat_model_samples_and_trains_like_the_plain_one(model):
    """`model.remat` (the real-model presets' setting) recomputes blocks in the backward pass only: sampling with
    it gives the same tokens (it once failed under the decode loop's trace, which both schedulers share), and a
    jitted loss through graphdef + params gives the same value and gradients."""
    remat = init_model(dataclasses.replace(model.cfg, remat=True), 0)
    nnx.update(remat, nnx.state(model))
    kw = dict(max_new_tokens=12, num_samples=2, temperature=1.0, seed=3)
    assert sampling.generate(remat, PROMPTS, **kw) == sampling.generate(model, PROMPTS, **kw)

    tokens_bt = jnp.asarray([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])

    def loss(graphdef, params):
        hidden, _ = nnx.merge(graphdef, params)(tokens_bt)
        return jnp.sum(jnp.tanh(hidden))

    results = []
    for m in (model, remat):
        graphdef, params = nnx.split(m)
        results.append(jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)(graphdef, params))
    (v0, g0), (v1, g1) = results
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g1, g0)


@pytest.mark.parametrize("remat", [False, True])
def test_shared_prompt_forward_equals_the_plain_one(model, remat):
    """`sequence_logps(..., group_size=G)` runs each group's prompt once into a KV cache and its G completions
    against copies: on GRPO-shaped rows (left-padded prompts of different lengths, completions ending early) the
    completion log-probs, entropies and the gradients of a masked loss equal the plain forward's."""
    m = init_model(dataclasses.replace(model.cfg, remat=remat), 0)
    nnx.update(m, nnx.state(model))
    g, tp, tc = 3, 6, 5
    rng = np.random.default_rng(0)
    prompt_lens, comp_lens = [6, 2], [5, 3, 1, 4, 5, 2]
    tokens, mask = [], []
    for i, n in enumerate(prompt_lens):
        prompt = np.pad(rng.integers(1, VOCAB, n), (tp - n, 0))
        for j in range(g):
            k = comp_lens[i * g + j]
            comp = np.pad(rng.integers(1, VOCAB, k), (0, tc - k))
            tokens.append(np.concatenate([prompt, comp]))
            mask.append(np.concatenate([np.arange(tp) >= tp - n, np.arange(tc) < k]))
    tokens_bs, mask_bs = jnp.asarray(np.stack(tokens), jnp.int32), jnp.asarray(np.stack(mask))
    comp_bt, cmask_bt = tokens_bs[:, tp:], mask_bs[:, tp:]
    weights_bt = jnp.asarray(rng.normal(size=comp_bt.shape), jnp.float32)

    def loss(graphdef, params, group_size, implementation="auto"):
        logps, ent = logprobs.sequence_logps(
            nnx.merge(graphdef, params), tokens_bs, mask_bs, comp_bt, return_entropy=True, group_size=group_size,
            implementation=implementation,
        )
        return jnp.sum(jnp.where(cmask_bt, weights_bt * logps + 0.1 * ent, 0.0)), (logps, ent)

    graphdef, params = nnx.split(m)
    run = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True), static_argnums=(0, 2, 3))
    (v1, (lp1, e1)), g1 = run(graphdef, params, 1)
    (vg, (lpg, eg)), gg = run(graphdef, params, g)
    with jax.enable_x64(True):  # the float64 oracle: the plain forward and the materialised logits, in float64
        graphdef64, params64 = nnx.split(numerics.f64_model(m))
        weights_bt = weights_bt.astype(jnp.float64)
        (v64, (lp64, e64)), g64 = run(graphdef64, params64, 1, "xla")
    # The shared forward is as accurate as the plain one: both are float32 evaluations of the same function in a
    # different order (numerics.py). A missing group term or a wrong position is O(1) off the oracle.
    sel = np.asarray(cmask_bt)
    numerics.assert_as_accurate(np.asarray(lpg)[sel], np.asarray(lp1)[sel], np.asarray(lp64)[sel], err_msg="logps")
    numerics.assert_as_accurate(np.asarray(eg)[sel], np.asarray(e1)[sel], np.asarray(e64)[sel], err_msg="entropy")
    numerics.assert_as_accurate(vg, v1, v64, err_msg="loss")
    numerics.assert_trees_as_accurate(gg, g1, g64)
    with pytest.raises(ValueError, match="group_size=4"):
        logprobs.sequence_logps(m, tokens_bs, mask_bs, comp_bt, group_size=4)


# ------------------------------------------------------------------------------------------------ token selection


def exact_distribution(logits_v, temperature, top_k, top_p):
    """Numpy oracle: softmax(logits / T), keep the top-k, then the smallest top set of mass >= top_p."""
    x = np.asarray(logits_v, np.float64) / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros_like(p, bool)
    keep[order[: top_k or len(p)]] = True
    p = np.where(keep, p, 0.0)
    p /= p.sum()
    if top_p < 1.0:
        mass, nucleus = 0.0, np.zeros_like(keep)
        for i in np.argsort(-p, kind="stable"):
            if mass >= top_p:
                break
            nucleus[i], mass = True, mass + p[i]
        p = np.where(nucleus, p, 0.0)
        p /= p.sum()
    return p


LOGITS_V = np.array([2.0, 1.5, 1.2, 0.9, 0.3, -0.5, -1.0, -2.0], np.float32)


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 0, 1.0), (1.0, 3, 1.0), (0.8, 0, 0.7), (1.5, 5, 0.8)],
)
def test_select_tokens_matches_exact_distribution(temperature, top_k, top_p):
    n = 20_000
    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    want_v = exact_distribution(LOGITS_V, temperature, top_k, top_p)
    keys_n = sampling.row_keys(jax.random.key(3), n)
    tokens_n, logps_n = jax.jit(sampling.select_tokens, static_argnums=2)(
        jnp.broadcast_to(LOGITS_V, (n, len(LOGITS_V))), keys_n, config
    )
    freq_v = np.bincount(np.asarray(tokens_n), minlength=len(LOGITS_V)) / n
    tv = 0.5 * np.abs(freq_v - want_v).sum()
    # Sampling noise of the TV distance here is ~0.006; dropping the token that crosses top_p, or applying T
    # after the truncation, moves it by > 0.05.
    assert tv < 0.02, (freq_v, want_v)
    assert np.all(freq_v[want_v == 0] == 0)
    np.testing.assert_allclose(np.asarray(logps_n), np.log(want_v[np.asarray(tokens_n)]), atol=1e-5)


def test_greedy_selection_is_argmax_with_raw_logps():
    logits_bv = jnp.asarray(np.random.default_rng(0).normal(size=(5, 11)), jnp.float32)
    tokens_b, logps_b = sampling.select_tokens(
        logits_bv, sampling.row_keys(jax.random.key(0), 5), SamplingConfig(greedy=True, temperature=0.3, top_k=2)
    )
    np.testing.assert_array_equal(tokens_b, np.argmax(logits_bv, -1))
    np.testing.assert_allclose(logps_b, jnp.max(jax.nn.log_softmax(logits_bv), -1), atol=1e-6)


# ------------------------------------------------------------------------------------------------ rollouts

CONFIG = SamplingConfig(num_samples=3, max_new_tokens=12, temperature=1.0, prompt_bucket=16)


@schedulers
def test_shared_prefill_equals_per_copy_prefill(model, scheduler):
    rng = jax.random.key(7)
    config = scheduled(CONFIG, scheduler)
    shared = sampling.sample(model, None, PROMPTS, rng, config)
    separate = sampling.sample(model, None, PROMPTS, rng, config.replace(share_prefill=False))
    np.testing.assert_array_equal(shared.completion_tokens_bt, separate.completion_tokens_bt)
    assert_logps_accurate(shared, *oracle_logps(model, shared), separate.logps_bt)
    # G samples of one prompt differ: the KV cache was shared, the randomness is not.
    tokens = np.asarray(shared.completion_tokens_bt).reshape(len(PROMPTS), 3, -1)
    assert all(len({tuple(r) for r in group}) > 1 for group in tokens)


@schedulers
def test_rollout_layout(model, scheduler):
    r = sampling.sample(model, None, PROMPTS, jax.random.key(0), scheduled(CONFIG, scheduler))
    assert isinstance(r, Rollout) and r.logps_kind == "raw" and r.num_samples == 3
    assert r.prompt_tokens_pt.shape == (4, 16) and r.completion_tokens_bt.shape == (12, 12)
    np.testing.assert_array_equal(r.group_b, np.repeat(np.arange(4), 3))
    for i, p in enumerate(PROMPTS):  # left padded
        np.testing.assert_array_equal(r.prompt_tokens_pt[i, 16 - len(p) :], p)
        assert int(r.prompt_mask_pt[i].sum()) == len(p) and bool(r.prompt_mask_pt[i, -1])


@schedulers
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logps_equal_completion_logps(model, temperature, scheduler):
    # T=1 reuses CONFIG's compilation; T=0.7 also stops rows on an EOS, so masked tokens are exercised.
    config = CONFIG if temperature == 1.0 else CONFIG.replace(temperature=temperature, eos_id=7)
    config = scheduled(config, scheduler)
    graphdef, params = nnx.split(model)
    r = sampling.sample(graphdef, params, PROMPTS, jax.random.key(1), config)
    assert r.logps_kind == ("raw" if temperature == 1.0 else "tempered")
    recomputed = jax.jit(logprobs.completion_logps, static_argnums=0, static_argnames="temperature")(
        graphdef, params, r, temperature=temperature
    )
    mask = np.asarray(r.completion_mask_bt)
    assert mask.sum() > 20 and np.all(np.asarray(r.logps_bt)[mask] < 0)
    # Against the float64 oracle at the same temperature: logits / T carry 1/T times the rounding of the forward,
    # which the float32 recompute's own error measures.
    with jax.enable_x64(True):
        oracle = logprobs.completion_logps(numerics.f64_model(model), None, r, temperature=temperature)
    assert_logps_accurate(r, np.asarray(recomputed), np.asarray(oracle))


def first_stop(tokens, eos_id, stop_sequences):
    """Index of the token that stops a row (EOS or last token of a stop sequence), or None."""
    for t, tok in enumerate(tokens):
        if tok == eos_id or any(tuple(tokens[t + 1 - len(s) : t + 1]) == s for s in stop_sequences if t + 1 >= len(s)):
            return t
    return None


def test_stop_rule_on_given_tokens():
    """The one stop rule of both engines, on given tails and tokens: EOS and a completed stop sequence stop a sample
    (and end it); reaching its budget ends it without stopping it (it is then `truncated`)."""
    config = SamplingConfig(eos_id=9, stop_sequences=((3, 4), (7,)))
    tail_nk = jnp.asarray([[-1, 3], [-1, 3], [-1, 5], [-1, 1], [-1, 1], [3, 4]], jnp.int32)
    tokens_n = jnp.asarray([4, 5, 9, 7, 2, 2], jnp.int32)
    step_n, budget_n = jnp.asarray([0, 0, 0, 0, 4, 1]), jnp.asarray([8, 8, 8, 8, 5, 8])
    tail_nk, stopped_n, ends_n = sampling.decode.stop_rule(tail_nk, tokens_n, step_n, budget_n, config)
    assert tail_nk.tolist() == [[3, 4], [3, 5], [5, 9], [1, 7], [1, 2], [4, 2]]
    assert stopped_n.tolist() == [True, False, True, True, False, False]
    assert ends_n.tolist() == [True, False, True, True, True, False]


@schedulers
def test_stop_sequences_eos_masks_and_lengths(model, scheduler):
    rng = jax.random.key(11)
    free = sampling.sample(model, None, PROMPTS, rng, CONFIG)
    free_bt = np.asarray(free.completion_tokens_bt)
    assert np.all(free.completion_mask_bt) and np.all(free.truncated_b) and np.all(free.lengths_b == 12)
    # Stops taken from the free-running samples: each row's randomness depends only on (rng, row, step), so the
    # stopped rollout reproduces the free one up to its first stop.
    eos = int(free_bt[0, 4])
    stop_sequences = (tuple(int(x) for x in free_bt[4, 2:4]), tuple(int(x) for x in free_bt[8, 6:9]))
    config = scheduled(CONFIG.replace(eos_id=eos, stop_sequences=stop_sequences, pad_id=VOCAB + 1), scheduler)
    r = sampling.sample(model, None, PROMPTS, rng, config)
    tokens_bt, mask_bt = np.asarray(r.completion_tokens_bt), np.asarray(r.completion_mask_bt)
    lengths_b, logps_bt = np.asarray(r.lengths_b), np.asarray(r.logps_bt)
    n_stopped = 0
    for b in range(len(free_bt)):
        stop = first_stop([int(x) for x in free_bt[b]], eos, stop_sequences)
        n = 12 if stop is None else stop + 1
        n_stopped += stop is not None
        assert lengths_b[b] == n and bool(r.truncated_b[b]) == (stop is None)
        np.testing.assert_array_equal(mask_bt[b], np.arange(12) < n)
        np.testing.assert_array_equal(tokens_bt[b, :n], free_bt[b, :n])
        assert np.all(tokens_bt[b, n:] == VOCAB + 1) and np.all(logps_bt[b, n:] == 0)
        np.testing.assert_allclose(logps_bt[b, :n], np.asarray(free.logps_bt)[b, :n], atol=1e-5)
    assert n_stopped >= 3  # at least the three rows the stops were taken from
    # completion_bucket trims the time axis to the bucketed longest completion (without recompiling).
    trimmed = sampling.sample(model, None, PROMPTS, rng, config.replace(completion_bucket=4, bucket_mode="multiple"))
    width = min(-(-int(lengths_b.max()) // 4) * 4, 12)
    assert trimmed.completion_tokens_bt.shape == (12, width) == trimmed.logps_bt.shape
    np.testing.assert_array_equal(trimmed.completion_mask_bt, mask_bt[:, :width])


@schedulers
def test_deterministic_for_rng_and_varies_with_rng(model, scheduler):
    config = scheduled(CONFIG, scheduler)
    a = sampling.sample(model, None, PROMPTS, jax.random.key(5), config)
    b = sampling.sample(model, None, PROMPTS, jax.random.key(5), config)
    c = sampling.sample(model, None, PROMPTS, jax.random.key(6), config)
    np.testing.assert_array_equal(a.completion_tokens_bt, b.completion_tokens_bt)
    np.testing.assert_array_equal(a.logps_bt, b.logps_bt)
    assert np.mean(np.asarray(a.completion_tokens_bt) != np.asarray(c.completion_tokens_bt)) > 0.5


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="temperature=0"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_p=1.5"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(ValueError, match="stop_sequences"):
        SamplingConfig(stop_sequences=([1, 2],))
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        sampling.pad_prompts([[1], []], SamplingConfig())
    with pytest.raises(ValueError, match="scheduler='dynamic'"):
        SamplingConfig(scheduler="dynamic")
    with pytest.raises(ValueError, match="num_slots=4 with sampling.scheduler='static'"):
        SamplingConfig(num_slots=4)
    with pytest.raises(ValueError, match="num_slots=-1"):
        SamplingConfig(scheduler="continuous", num_slots=-1)
    with pytest.raises(ValueError, match="top_p_prefilter=0"):
        SamplingConfig(top_p_prefilter=0)


# ------------------------------------------------------------------------------------------------ continuous batching


@pytest.mark.parametrize("num_slots", [1, 4, 12])
def test_continuous_equals_static_token_for_token(model, num_slots):
    """Greedy and sampled (fixed rng) rollouts do not depend on the scheduler or on how many slots there are: a
    sample's tokens are a function of (rng, sample index) only. EOS stops make samples leave slots early."""
    rows = []
    for config in [CONFIG.replace(greedy=True, eos_id=9), CONFIG.replace(temperature=0.8, top_p=0.9, eos_id=7)]:
        static = sampling.sample(model, None, PROMPTS, jax.random.key(21), config)
        cont = sampling.sample(
            model, None, PROMPTS, jax.random.key(21), config.replace(scheduler="continuous", num_slots=num_slots)
        )
        for field in ["completion_tokens_bt", "completion_mask_bt", "lengths_b", "truncated_b", "group_b"]:
            np.testing.assert_array_equal(getattr(cont, field), getattr(static, field), err_msg=field)
        recomputed, oracle = oracle_logps(model, static, 1.0 if config.greedy else config.temperature)
        if static.logps_kind == "truncated":
            # No forward reproduces the renormalised nucleus; the two schedules' difference is bounded by twice the
            # rounding of the tempered log-probs that both start from (numerics.bound).
            mask = np.asarray(static.completion_mask_bt)
            limit = numerics.bound(recomputed[mask], oracle[mask], factor=2 * numerics.FACTOR)
            assert np.max(np.abs(np.asarray(cont.logps_bt) - np.asarray(static.logps_bt))[mask]) <= limit
        else:
            assert_logps_accurate(static, recomputed, oracle, cont.logps_bt)
        assert cont.logps_kind == static.logps_kind
        rows.append(np.asarray(static.lengths_b))
    # Meaningful only if lengths differ, so that slots free up at different steps.
    assert all(len(set(lengths.tolist())) >= 3 for lengths in rows), rows


@schedulers
def test_per_sample_budgets_stop_rows_without_recompiling(model, scheduler):
    config = scheduled(CONFIG, scheduler)  # compiled by the tests above
    rng = jax.random.key(13)
    free = sampling.sample(model, None, PROMPTS, rng, config)
    before = sampling.num_compilations()
    budgets = np.random.default_rng(0).integers(1, 13, size=12)
    r = sampling.sample(model, None, PROMPTS, rng, config, budgets=budgets)
    assert sampling.num_compilations() == before
    np.testing.assert_array_equal(r.lengths_b, budgets)
    assert np.all(r.truncated_b)  # a budget stop is a truncation, as at max_new_tokens
    for b, n in enumerate(budgets):
        np.testing.assert_array_equal(r.completion_tokens_bt[b, :n], free.completion_tokens_bt[b, :n])
    with pytest.raises(ValueError, match="budgets"):
        sampling.sample(model, None, PROMPTS, rng, config, budgets=[13] * 12)


def test_kv_cache_bytes_bounded_by_slots():
    cfg = tiny_model().cfg
    config = SamplingConfig(num_samples=8, max_new_tokens=100, scheduler="continuous", num_slots=6)
    got = sampling.kv_cache_bytes(cfg, config, num_prompts=4, prompt_len=28)
    cache = KVCache.init(cfg, 6, 128)
    assert got["decode"] == sum(x.nbytes for x in jax.tree.leaves(cache) if x.ndim > 1)
    static = sampling.kv_cache_bytes(cfg, config.replace(scheduler="static", num_slots=0), 4, 28)
    assert static["decode"] == got["decode"] * 32 // 6


# ------------------------------------------------------------------------------------------------ vocabulary scale


def peaked_logits(vocab, head=40, seed=0):
    """A language-model-like row: `head` plausible tokens at scattered ids and a long flat tail with ~3% of the mass."""
    rng = np.random.default_rng(seed)
    logits_v = np.full(vocab, -10.0, np.float32) + rng.normal(0, 0.3, vocab).astype(np.float32)
    ids = rng.choice(vocab, head, replace=False)
    logits_v[ids] = np.linspace(4.0, 0.0, head) + rng.normal(0, 0.05, head)
    return logits_v


def check_distribution(logits_v, config, n, seed):
    """Chi-square (support cells merged until each expects >= 5 draws) and TV of n draws of select_tokens."""
    want_v = exact_distribution(logits_v, config.temperature, config.top_k, config.top_p)
    chunk = 500  # (chunk, V) at a time: V = 151,936 with thousands of draws does not fit at once
    keys_n = sampling.row_keys(jax.random.key(seed), n).reshape(n // chunk, chunk)
    # The logits are an argument, not a closure constant: XLA would constant-fold the (chunk, V) ops at compile time.
    select = jax.jit(lambda lg, keys: sampling.select_tokens(jnp.broadcast_to(lg, (chunk, len(lg))), keys, config))
    logits_v = np.asarray(logits_v, np.float32)
    tokens_n, logps_n = (np.concatenate(x) for x in zip(*(jax.device_get(select(logits_v, k)) for k in keys_n)))
    counts_v = np.bincount(tokens_n, minlength=len(logits_v))
    assert counts_v[want_v == 0].sum() == 0  # never a token outside the top-k / nucleus
    order = np.argsort(-want_v)
    order = order[want_v[order] > 0]
    obs, exp, acc_o, acc_e = [], [], 0, 0.0
    for i in order:
        acc_o, acc_e = acc_o + counts_v[i], acc_e + want_v[i] * n
        if acc_e >= 5:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o, acc_e = 0, 0.0
    obs[-1] += acc_o
    exp[-1] += acc_e
    chi2 = float(np.sum((np.array(obs) - np.array(exp)) ** 2 / np.array(exp)))
    assert chi2 < scipy.stats.chi2.ppf(0.999, len(obs) - 1), (chi2, len(obs))
    assert 0.5 * np.abs(counts_v / n - want_v).sum() < 0.06
    np.testing.assert_allclose(logps_n, np.log(want_v[tokens_n]), atol=1e-4)
    return want_v


@pytest.mark.parametrize(
    "temperature,top_k,top_p,prefilter",
    [
        (0.6, 0, 0.95, 256),  # R1's evaluation setting; the nucleus fits in the prefilter
        (1.0, 20, 0.9, 256),  # top-k then top-p
        (1.0, 0, 0.9, 16),  # the nucleus (~30 tokens) exceeds the prefilter: the full-sort fallback
    ],
)
def test_top_p_top_k_distribution_at_large_vocab(temperature, top_k, top_p, prefilter):
    vocab = 20_000  # > the prefilter by far; test_top_p_top_k_distribution_at_qwen_vocab runs V = 151,936
    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, top_p_prefilter=prefilter)
    want_v = check_distribution(peaked_logits(vocab), config, n=3000, seed=1)
    if prefilter == 16:
        assert (want_v > 0).sum() > prefilter


@pytest.mark.slow
@pytest.mark.parametrize("prefilter", [256, 16])
def test_top_p_top_k_distribution_at_qwen_vocab(prefilter):
    config = SamplingConfig(temperature=0.6, top_p=0.95, top_p_prefilter=prefilter)
    check_distribution(peaked_logits(151_936, head=60), config, n=4000, seed=2)


def test_top_p_prefilter_equals_full_sort_per_row():
    """Rows whose nucleus fits the prefilter and rows that need the fallback, in one batch: the kept set equals the
    full-sort one exactly, row by row."""
    vocab = 20_000
    rows = [peaked_logits(vocab, seed=s) for s in range(3)]
    rows.append(np.random.default_rng(9).normal(0, 0.5, vocab).astype(np.float32))  # flat: nucleus of thousands
    logits_bv = jnp.asarray(np.stack(rows))
    for top_p in [0.5, 0.9, 0.99]:
        fast = sampling.process_logits(logits_bv, SamplingConfig(top_p=top_p, top_p_prefilter=64))
        full = sampling.process_logits(logits_bv, SamplingConfig(top_p=top_p, top_p_prefilter=vocab))
        kept_fast, kept_full = np.isfinite(fast), np.isfinite(full)
        np.testing.assert_array_equal(kept_fast, kept_full, err_msg=f"top_p={top_p}")
        assert kept_full[3].sum() > 64  # the flat row really took the fallback


# ------------------------------------------------------------------------------------------------ compilations


@schedulers
def test_compilations_bounded_over_stream_of_lengths(model, scheduler):
    config = CONFIG.replace(num_samples=2, max_new_tokens=4, prompt_bucket=8, eos_id=3)  # buckets 8, 16, 32
    # Continuous: 6 samples through 4 slots; with EOS stops they enter and leave slots at varying steps.
    config = config.replace(scheduler="continuous", num_slots=4) if scheduler == "continuous" else config
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    before = sampling.num_compilations()
    buckets = set()
    for step in range(12):
        lengths = rng.integers(1, 30, size=3)
        prompts = [list(rng.integers(0, VOCAB, size=n)) for n in lengths]
        buckets.add(sampling.bucket_length(int(lengths.max()), 8))
        # New parameter values each step (as after an optimizer update) must not recompile either.
        params = jax.tree.map(lambda x: x * 1.001, params)
        sampling.sample(graphdef, params, prompts, jax.random.key(step), config)
    assert sampling.num_compilations() - before == len(buckets) <= 3


# ------------------------------------------------------------------------------------------------ sharding

SHARDED_SCRIPT = textwrap.dedent(
    """
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec
    from flax import nnx
    from r1jax import sampling
    from test_sampling import tiny_model

    model = tiny_model()
    graphdef, params = nnx.split(model)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [12], [13, 14, 15, 16, 17], [3], [2, 9], [30, 31, 32, 33], [40] * 7]
    config = sampling.SamplingConfig(num_samples=2, max_new_tokens=10, top_p=0.9, eos_id=5, prompt_bucket=8)
    out = {"devices": jax.device_count()}
    r = sampling.sample(graphdef, params, prompts, jax.random.key(4), config)
    out["single"] = np.asarray(r.completion_tokens_bt).tolist()
    for shape in [(8, 1, 1), (2, 2, 2)]:
        mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
        placed = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        r = sampling.sample(graphdef, placed, prompts, jax.random.key(4), config, mesh=mesh)
        out[str(shape)] = np.asarray(r.completion_tokens_bt).tolist()
        out[str(shape) + "/spec"] = str(r.completion_tokens_bt.sharding.spec)
        out[str(shape) + "/shards"] = len(r.completion_tokens_bt.addressable_shards)
    # The continuous scheduler over the mesh: 8 slots split over 8 devices, refilled from 16 samples.
    cont = config.replace(scheduler="continuous", num_slots=8)
    r = sampling.sample(graphdef, placed, prompts, jax.random.key(4), cont, mesh=mesh)
    out["continuous"] = np.asarray(r.completion_tokens_bt).tolist()
    print("RESULT " + json.dumps(out))
    """
)


def test_sharded_over_8_devices_matches_single_device():
    here = pathlib.Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=str(here) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert out["devices"] == 8
    single = np.array(out["single"])
    assert single.shape == (16, 10) and (single == 5).any()  # EOS fired somewhere: stopping is exercised
    for shape in ["(8, 1, 1)", "(2, 2, 2)"]:
        np.testing.assert_array_equal(np.array(out[shape]), single, err_msg=shape)
        assert "data" in out[shape + "/spec"] and out[shape + "/shards"] == 8
    np.testing.assert_array_equal(np.array(out["continuous"]), single, err_msg="continuous")


# ------------------------------------------------------------------------------------------------ transformers parity

HF_GOLDENS = pathlib.Path(__file__).parent / "goldens" / "hf"


@pytest.mark.parametrize("case", ["qwen2_tied", "qwen2_untied", "llama3"])
def test_greedy_equals_transformers_generate(case):
    """tests/goldens/hf/<case>: transformers' greedy `generate` on each prompt alone (make_hf_goldens.py)."""
    from r1jax.models.hf_io import load_hf_checkpoint

    golden = np.load(HF_GOLDENS / case / "goldens.npz")
    model = load_hf_checkpoint(str(HF_GOLDENS / case))
    width = golden["prompt_ids_pt"].shape[1]
    prompts = [list(row[width - n :]) for row, n in zip(golden["prompt_ids_pt"], golden["prompt_lens_p"])]
    # Both prompts in one left-padded batch: padding must not change a prompt's continuation.
    got = sampling.generate(model, prompts, max_new_tokens=golden["generate_ids_pn"].shape[1])
    assert [rows[0] for rows in got] == golden["generate_ids_pn"].tolist()


def test_rejection_sampling_continuous_scheduler_draws_the_static_samples(tiny_base_model, tmp_path):
    """Rejection sampling passes sampling.scheduler / num_slots to the sampler; a sample's tokens depend only on its
    key and index, so the continuous scheduler writes exactly the static scheduler's samples."""
    from r1jax.trainers import rejection_sampling

    c = rejection_sampling.rejection_sampling_config()
    c.model.checkpoint = tiny_base_model
    c.template = "short"
    c.sampling.update(num_samples=2, prompts_per_batch=4, max_new_tokens=12, max_prompt_len=64)
    records = rejection_sampling.load_prompt_records(c)[:6]  # two chunks, the second one padded
    static = rejection_sampling.sample_all(c, records, str(tmp_path / "static"))
    c.sampling.update(scheduler="continuous", num_slots=4)
    rejection_sampling.validate(c)
    continuous = rejection_sampling.sample_all(c, records, str(tmp_path / "continuous"))
    assert len(static) == 12 and static == continuous
    assert len({s["response"] for s in static}) > 1  # sampled, not one repeated string
    c.sampling.scheduler = "static"
    with pytest.raises(ValueError, match=r"sampling.num_slots=4: must be >= 0, and 0 unless"):
        rejection_sampling.validate(c)
