"""Tests of r1jax.sampling: cache vs no-cache greedy, sampling distributions, stops, log-probs, sharding, compiles."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from r1jax import sampling
from r1jax.models import get_preset, init_model
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


# ------------------------------------------------------------------------------------------------ cache vs reference


def test_greedy_with_cache_equals_no_cache_reference(model):
    got = sampling.generate(model, PROMPTS, max_new_tokens=20)
    want = sampling.reference_generate(model, PROMPTS, max_new_tokens=20)
    assert [rows[0] for rows in got] == want
    # The check means something only if continuations depend on the prompt and vary along the way.
    assert len({tuple(w) for w in want}) == len(PROMPTS)
    assert all(len(set(w)) > 2 for w in want)


def test_generate_cuts_at_eos_and_returns_num_samples_lists(model):
    free = sampling.generate(model, PROMPTS, max_new_tokens=20)
    eos = free[1][0][5]
    got = sampling.generate(model, PROMPTS, max_new_tokens=20, eos_id=eos, num_samples=2)
    for rows_free, rows in zip(free, got):
        first = rows_free[0].index(eos) if eos in rows_free[0] else len(rows_free[0])
        assert rows == [rows_free[0][:first]] * 2
    assert any(len(rows[0]) < 20 for rows in got)


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


def test_shared_prefill_equals_per_copy_prefill(model):
    rng = jax.random.key(7)
    shared = sampling.sample(model, None, PROMPTS, rng, CONFIG)
    separate = sampling.sample(model, None, PROMPTS, rng, CONFIG.replace(share_prefill=False))
    np.testing.assert_array_equal(shared.completion_tokens_bt, separate.completion_tokens_bt)
    np.testing.assert_allclose(shared.logps_bt, separate.logps_bt, atol=1e-5)
    # G samples of one prompt differ: the KV cache was shared, the randomness is not.
    tokens = np.asarray(shared.completion_tokens_bt).reshape(len(PROMPTS), 3, -1)
    assert all(len({tuple(r) for r in group}) > 1 for group in tokens)


def test_rollout_layout(model):
    r = sampling.sample(model, None, PROMPTS, jax.random.key(0), CONFIG)
    assert isinstance(r, Rollout) and r.logps_kind == "raw" and r.num_samples == 3
    assert r.prompt_tokens_pt.shape == (4, 16) and r.completion_tokens_bt.shape == (12, 12)
    np.testing.assert_array_equal(r.group_b, np.repeat(np.arange(4), 3))
    for i, p in enumerate(PROMPTS):  # left padded
        np.testing.assert_array_equal(r.prompt_tokens_pt[i, 16 - len(p) :], p)
        assert int(r.prompt_mask_pt[i].sum()) == len(p) and bool(r.prompt_mask_pt[i, -1])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logps_equal_completion_logps(model, temperature):
    # T=1 reuses CONFIG's compilation; T=0.7 also stops rows on an EOS, so masked tokens are exercised.
    config = CONFIG if temperature == 1.0 else CONFIG.replace(temperature=temperature, eos_id=7)
    graphdef, params = nnx.split(model)
    r = sampling.sample(graphdef, params, PROMPTS, jax.random.key(1), config)
    assert r.logps_kind == ("raw" if temperature == 1.0 else "tempered")
    recomputed = jax.jit(sampling.completion_logps, static_argnums=0, static_argnames="temperature")(
        graphdef, params, r, temperature=temperature
    )
    mask = np.asarray(r.completion_mask_bt)
    assert mask.sum() > 20 and np.all(np.asarray(r.logps_bt)[mask] < 0)
    np.testing.assert_allclose(np.asarray(recomputed), np.asarray(r.logps_bt), atol=1e-5, rtol=0)


def first_stop(tokens, eos_id, stop_sequences):
    """Index of the token that stops a row (EOS or last token of a stop sequence), or None."""
    for t, tok in enumerate(tokens):
        if tok == eos_id or any(tuple(tokens[t + 1 - len(s) : t + 1]) == s for s in stop_sequences if t + 1 >= len(s)):
            return t
    return None


def test_stop_sequences_eos_masks_and_lengths(model):
    rng = jax.random.key(11)
    free = sampling.sample(model, None, PROMPTS, rng, CONFIG)
    free_bt = np.asarray(free.completion_tokens_bt)
    assert np.all(free.completion_mask_bt) and np.all(free.truncated_b) and np.all(free.lengths_b == 12)
    # Stops taken from the free-running samples: each row's randomness depends only on (rng, row, step), so the
    # stopped rollout reproduces the free one up to its first stop.
    eos = int(free_bt[0, 4])
    stop_sequences = (tuple(int(x) for x in free_bt[4, 2:4]), tuple(int(x) for x in free_bt[8, 6:9]))
    config = CONFIG.replace(eos_id=eos, stop_sequences=stop_sequences, pad_id=VOCAB + 1)
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
        np.testing.assert_allclose(logps_bt[b, :n], np.asarray(free.logps_bt)[b, :n], atol=1e-6)
    assert n_stopped >= 3  # at least the three rows the stops were taken from
    # completion_bucket trims the time axis to the bucketed longest completion (without recompiling).
    trimmed = sampling.sample(model, None, PROMPTS, rng, config.replace(completion_bucket=4, bucket_mode="multiple"))
    width = min(-(-int(lengths_b.max()) // 4) * 4, 12)
    assert trimmed.completion_tokens_bt.shape == (12, width) == trimmed.logps_bt.shape
    np.testing.assert_array_equal(trimmed.completion_mask_bt, mask_bt[:, :width])


def test_deterministic_for_rng_and_varies_with_rng(model):
    a = sampling.sample(model, None, PROMPTS, jax.random.key(5), CONFIG)
    b = sampling.sample(model, None, PROMPTS, jax.random.key(5), CONFIG)
    c = sampling.sample(model, None, PROMPTS, jax.random.key(6), CONFIG)
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


# ------------------------------------------------------------------------------------------------ compilations


def test_compilations_bounded_over_stream_of_lengths(model):
    config = CONFIG.replace(num_samples=2, max_new_tokens=4, prompt_bucket=8)  # buckets 8, 16, 32
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
