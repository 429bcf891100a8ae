"""Tests for r1jax.grpo: hand-computed goldens, the paper's toy example, and parity with TRL's GRPOTrainer.

The TRL goldens (tests/goldens/trl_grpo_goldens.npz) come from tests/goldens/make_trl_goldens.py, run by hand with
torch + trl; no torch is needed here.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import grpo

GOLDENS = os.path.join(os.path.dirname(__file__), "goldens", "trl_grpo_goldens.npz")


@pytest.fixture(scope="module")
def gold():
    with np.load(GOLDENS) as g:
        return {k: g[k] for k in g.files}


def _case_kwargs(gold, i):
    eps_low, eps_high = gold["case_eps"][i]
    return dict(
        loss_type=str(gold["case_loss_type"][i]),
        importance_sampling_level=str(gold["case_level"][i]),
        epsilon_low=float(eps_low),
        epsilon_high=float(eps_high),
        beta=float(gold["case_beta"][i]),
        kl_bias_correction=bool(gold["case_bias_kl"][i]),
        max_completion_length=int(gold["max_completion_length"]),
    )


def _loss_and_grad(gold, i, dtype):
    kw = _case_kwargs(gold, i)
    old = None if gold["case_on_policy"][i] else jnp.asarray(gold["old_logps"], dtype)
    ref = jnp.asarray(gold["ref_logps"], dtype) if kw["beta"] > 0 else None
    adv = jnp.asarray(gold["advantages"], dtype)
    mask = jnp.asarray(gold["mask"] > 0)

    def f(logps):
        return grpo.policy_loss(logps, old, ref, adv, mask, **kw)

    (loss, metrics), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(gold["logps"], dtype))
    return loss, grad, metrics


# ----------------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------------


def test_paper_toy_example_centred_then_unbiased_std():
    # rewards [1, 1, 0]: centred [1/3, 1/3, -2/3]; unbiased std = sqrt((1/9 + 1/9 + 4/9) / 2) = sqrt(1/3).
    r = jnp.array([[1.0, 1.0, 0.0]])
    np.testing.assert_allclose(grpo.group_advantages(r, scale_rewards="none"), [[1 / 3, 1 / 3, -2 / 3]], atol=1e-7)
    std = np.sqrt(1 / 3)
    want = np.array([[1 / 3, 1 / 3, -2 / 3]]) / (std + 1e-4)
    np.testing.assert_allclose(grpo.group_advantages(r), want, rtol=1e-6)
    np.testing.assert_allclose(grpo.group_advantages(r, eps=0.0), want * (std + 1e-4) / std, rtol=1e-6)


def test_batch_scaling_hand_golden():
    # group means [0.5, 1]; batch values {1, 0, 1, 1}: mean 0.75, unbiased var (3 * 0.0625 + 0.5625) / 3 = 0.25.
    r = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    want = np.array([[0.5, -0.5], [0.0, 0.0]]) / (0.5 + 1e-4)
    np.testing.assert_allclose(grpo.group_advantages(r, scale_rewards="batch"), want, rtol=1e-6)
    # 'group' divides the first group by its own std sqrt(0.5 / 1).
    want_group = np.array([[0.5, -0.5], [0.0, 0.0]]) / (np.sqrt(0.5) + 1e-4)
    np.testing.assert_allclose(grpo.group_advantages(r), want_group, rtol=1e-6)
    np.testing.assert_allclose(grpo.group_advantages(r, scale_rewards="none"), [[0.5, -0.5], [0, 0]], atol=0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_give_exactly_zero(scale):
    # 0.1 is not exact in binary: sum / G round-off would leak (r - mean) / eps ~ 1e-4 without the explicit floor.
    r = jnp.array([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7], [0.3, 0.3, 0.3]])
    for eps in (1e-4, 0.0):
        adv = np.asarray(grpo.group_advantages(r, scale_rewards=scale, eps=eps))
        assert np.all(adv == 0.0), adv


def test_group_size_one_rejected():
    with pytest.raises(ValueError, match="G=1"):
        grpo.group_advantages(jnp.ones((4, 1)))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(scale_rewards="std"), "scale_rewards='std'"),
        (dict(eps=-1.0), "eps=-1.0"),
        (dict(valid_pg=jnp.ones((2, 2), bool)), "valid_pg.shape"),
    ],
)
def test_group_advantages_arg_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        grpo.group_advantages(jnp.ones((2, 3)), **kw)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl(gold, scale):
    r = jnp.asarray(gold["rewards_pg"], jnp.float32)
    np.testing.assert_allclose(grpo.group_advantages(r, scale_rewards=scale), gold[f"adv_{scale}"], atol=1e-5)
    valid = jnp.asarray(gold["valid_pg"])
    got = np.asarray(grpo.group_advantages(r, scale_rewards=scale, valid_pg=valid))
    np.testing.assert_allclose(got, gold[f"adv_valid_{scale}"], atol=1e-5)
    assert np.all(got[~gold["valid_pg"]] == 0.0)


def test_invalid_completions_left_out_of_mean_and_std():
    # The NaN in the invalid slot must not leak; the rest is the toy example.
    r = jnp.array([[1.0, jnp.nan, 1.0, 0.0]])
    valid = jnp.array([[True, False, True, True]])
    adv = grpo.group_advantages(r, valid_pg=valid)
    np.testing.assert_allclose(adv, [[1 / 3, 0, 1 / 3, -2 / 3]] / (np.sqrt(1 / 3) + 1e-4), rtol=1e-6)
    # One valid sample left: no spread, advantage exactly 0 everywhere.
    adv1 = grpo.group_advantages(r, valid_pg=jnp.array([[False, False, True, False]]))
    assert np.all(np.asarray(adv1) == 0.0)


def test_zero_spread_and_informative_groups():
    r = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(grpo.keep_informative_groups(r), [False, True, False, True])
    assert float(grpo.zero_spread_fraction(r)) == 0.5
    valid = jnp.array([[True] * 3, [True, False, True], [True] * 3, [True] * 3])
    np.testing.assert_array_equal(grpo.keep_informative_groups(r, valid), [False, False, False, True])
    assert float(grpo.zero_spread_fraction(r, valid)) == 0.75


def test_advantages_jit():
    r = jnp.array([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0]])
    f = jax.jit(functools.partial(grpo.group_advantages, scale_rewards="batch"))
    np.testing.assert_allclose(f(r), grpo.group_advantages(r, scale_rewards="batch"), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Policy loss: parity with TRL
# ----------------------------------------------------------------------------------------------------------------


def test_goldens_metadata(gold):
    assert str(gold["trl_version"]) == "1.16.0"
    assert len(gold["loss"]) == 56
    # The inputs exercise clipping on both sides at token and sequence level, so the goldens can tell clip
    # bounds apart (clip-higher changes the loss); on-policy cases have rho = 1 and never clip.
    m = gold["metrics"]
    for level in ("token", "sequence"):
        sel = (gold["case_level"] == level) & ~gold["case_on_policy"]
        assert np.all(m[sel, 0] > 0) and np.all(m[sel, 1] > 0)


@pytest.mark.parametrize("i", range(56))
def test_policy_loss_matches_trl_f32(gold, i):
    loss, grad, metrics = _loss_and_grad(gold, i, jnp.float32)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.float32
    np.testing.assert_allclose(loss, gold["loss"][i], rtol=0, atol=1e-6)
    np.testing.assert_allclose(grad, gold["grad"][i], rtol=0, atol=1e-6)
    low, high, region, kl = gold["metrics"][i]
    np.testing.assert_allclose(
        [metrics["clip_ratio/low_mean"], metrics["clip_ratio/high_mean"], metrics["clip_ratio/region_mean"]],
        [low, high, region],
        atol=1e-6,
    )
    if gold["case_beta"][i] > 0:
        np.testing.assert_allclose(metrics["kl"], kl, atol=1e-6)
    else:
        assert "kl" not in metrics


def test_policy_loss_matches_trl_f64(gold):
    with jax.enable_x64(True):
        for i in range(len(gold["loss"])):
            loss, grad, _ = _loss_and_grad(gold, i, jnp.float64)
            assert grad.dtype == jnp.float64
            np.testing.assert_allclose(loss, gold["loss"][i], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(grad, gold["grad"][i], rtol=1e-10, atol=1e-14)


def test_dapo_equals_bnpo_single_step_and_num_tokens_rescales(gold):
    # One process, one step: TRL's num_items_in_batch is sum(mask), so 'dapo' == 'bnpo' (as the goldens show).
    dapo = gold["loss"][gold["case_loss_type"] == "dapo"]
    np.testing.assert_allclose(dapo, gold["loss"][gold["case_loss_type"] == "bnpo"], rtol=1e-12)
    # Micro-batches with the global token count sum to the whole-batch DAPO loss.
    per_token = jnp.asarray(gold["logps"], jnp.float32)
    mask = jnp.asarray(gold["mask"] > 0)
    whole = grpo.aggregate_loss(per_token, mask, "dapo")
    n = mask.sum()
    parts = sum(grpo.aggregate_loss(per_token[s], mask[s], "dapo", num_tokens=n) for s in (slice(0, 2), slice(2, 5)))
    np.testing.assert_allclose(parts, whole, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Policy loss: properties
# ----------------------------------------------------------------------------------------------------------------


def _random_batch(b=4, t=7, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    old = -jax.random.uniform(k1, (b, t), minval=0.1, maxval=3.0)
    logps = old + 0.3 * jax.random.normal(k2, (b, t))
    ref = old + 0.2 * jax.random.normal(k3, (b, t))
    mask = jnp.arange(t)[None, :] < jax.random.randint(k4, (b, 1), 1, t + 1)
    return logps, old, ref, mask


@pytest.mark.parametrize("loss_type", grpo.LOSS_TYPES)
@pytest.mark.parametrize("level", grpo.IMPORTANCE_SAMPLING_LEVELS)
def test_zero_advantage_zero_beta_gives_zero_loss_and_grad(loss_type, level):
    logps, old, _, mask = _random_batch()
    f = lambda lp: grpo.policy_loss(
        lp, old, None, jnp.zeros(4), mask, loss_type=loss_type, max_completion_length=7, importance_sampling_level=level
    )[0]
    loss, grad = jax.value_and_grad(f)(logps)
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_on_policy_grpo_is_minus_mean_advantage_and_k3_nonnegative():
    logps, _, ref, mask = _random_batch(seed=1)
    adv = jnp.array([1.0, -2.0, 0.5, 0.25])
    loss, m = grpo.policy_loss(logps, None, ref, adv, mask, beta=0.1)
    # rho = 1 on policy: pg loss = -mean_i A_i for 'grpo' (every row has at least one token).
    np.testing.assert_allclose(m["pg_loss"], -adv.mean(), rtol=1e-6)
    assert float(m["kl"]) > 0 and float(loss) > float(m["pg_loss"])
    np.testing.assert_allclose(m["ratio_mean"], 1.0, rtol=1e-6)
    assert float(m["tokens"]) == float(mask.sum())


@pytest.mark.parametrize("level", grpo.IMPORTANCE_SAMPLING_LEVELS)
def test_padding_junk_does_not_leak(level):
    logps, old, ref, mask = _random_batch(seed=2)
    adv = jnp.array([1.0, -1.0, 0.5, -0.5])
    kw = dict(beta=0.04, kl_bias_correction=True, epsilon_high=0.28, importance_sampling_level=level)
    f = lambda lp, o, r: grpo.policy_loss(lp, o, r, adv, mask, **kw)[0]
    clean = jax.value_and_grad(f)(logps, old, ref)
    junk = jax.value_and_grad(f)(jnp.where(mask, logps, jnp.inf), jnp.where(mask, old, -jnp.inf), ref)
    np.testing.assert_allclose(junk[0], clean[0], rtol=1e-6)
    np.testing.assert_allclose(junk[1], clean[1], rtol=1e-6)
    assert np.all(np.asarray(junk[1])[~np.asarray(mask)] == 0.0)


def test_jit_with_static_argnames_matches_eager():
    logps, old, ref, mask = _random_batch(seed=4)
    adv = jnp.array([0.3, -1.0, 0.5, -0.5])
    kw = dict(loss_type="dr_grpo", max_completion_length=9, beta=0.02, epsilon_high=0.28)
    static = ("loss_type", "epsilon_low", "epsilon_high", "beta", "max_completion_length", "kl_bias_correction")
    jitted = jax.jit(grpo.policy_loss, static_argnames=static + ("importance_sampling_level",))
    got, got_m = jitted(logps, old, ref, adv, mask, **kw)
    want, want_m = grpo.policy_loss(logps, old, ref, adv, mask, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert set(got_m) == set(want_m)
    for k in want_m:
        np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-6)


def test_dr_grpo_uses_constant_normaliser():
    logps, old, _, mask = _random_batch(seed=3)
    adv = jnp.array([1.0, -1.0, 0.5, -0.5])
    bnpo, _ = grpo.policy_loss(logps, old, None, adv, mask, loss_type="bnpo")
    dr, _ = grpo.policy_loss(logps, old, None, adv, mask, loss_type="dr_grpo", max_completion_length=10)
    np.testing.assert_allclose(dr, bnpo * mask.sum() / (4 * 10), rtol=1e-6)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(loss_type="ppo"), "loss_type='ppo'"),
        (dict(importance_sampling_level="batch"), "importance_sampling_level='batch'"),
        (dict(epsilon_low=1.0), "epsilon_low=1.0"),
        (dict(epsilon_low=0.0), "epsilon_low=0.0"),
        (dict(epsilon_high=-0.1), "epsilon_high=-0.1"),
        (dict(beta=-0.01), "beta=-0.01"),
        (dict(beta=0.1), "ref_logps_bt"),
        (dict(loss_type="dr_grpo"), "max_completion_length=None"),
        (dict(loss_type="dr_grpo", max_completion_length=0), "max_completion_length=0"),
    ],
)
def test_policy_loss_arg_errors(kw, match):
    logps, old, _, mask = _random_batch()
    with pytest.raises(ValueError, match=match):
        grpo.policy_loss(logps, old, None, jnp.zeros(4), mask, **kw)


def test_policy_loss_shape_errors():
    logps, old, _, mask = _random_batch()
    with pytest.raises(ValueError, match="advantages_b.shape"):
        grpo.policy_loss(logps, old, None, jnp.zeros((4, 1)), mask)
    with pytest.raises(ValueError, match="mask_bt.shape"):
        grpo.policy_loss(logps, old, None, jnp.zeros(4), mask[:, :3])


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------


def test_truncation_masking():
    eos = 2
    tokens = jnp.array([[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0], [0, 0, 0, 0]])
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    term = grpo.is_terminated(tokens, mask, [eos, 9])
    np.testing.assert_array_equal(term, [True, False, True, False])
    np.testing.assert_array_equal(grpo.mask_truncated_completions(mask, term), mask & term[:, None])


def test_masked_means():
    x = jnp.array([[1.0, 2.0, jnp.nan], [4.0, 5.0, 6.0]])
    m = jnp.array([[1, 1, 0], [0, 0, 0]], bool)
    np.testing.assert_allclose(grpo.masked_seq_mean(x, m), [1.5, 0.0])
    np.testing.assert_allclose(grpo.masked_mean(x, m), 1.5)
