"""Tests for r1jax.grpo: hand-computed goldens, the paper's toy example, and parity with TRL's GRPOTrainer.

The TRL goldens (tests/goldens/trl_grpo_goldens.npz) come from tests/goldens/make_trl_goldens.py, run by hand with
torch + trl 1.16.0 (`python tests/goldens/make_trl_goldens.py`); no torch is needed here. They cover every loss option:
the clipped losses, CISPO, SAPO, the sampler importance corrections (TIS / MIS / token masks / sequence truncation),
the off-policy sequence mask and entropy selection, and the variants added through the loss registry (INTELLECT-2's
delta, LUSPO, VESPO, the entropy bonus with TRL's adaptive controller), each checked for loss, gradients (log-probs and
entropies) and TRL's logged metrics.
"""

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numerics
import numpy as np
import pytest

from r1jax import grpo, losses, rollouts
from r1jax.trainers import grpo_config

GOLDENS = os.path.join(os.path.dirname(__file__), "goldens", "trl_grpo_goldens.npz")


@pytest.fixture(scope="module")
def gold():
    with np.load(GOLDENS) as g:
        return {k: g[k] for k in g.files}


with np.load(GOLDENS) as _g:
    NUM_CASES = len(_g["loss"])  # parametrize the parity tests over every case the golden script wrote


def policy_loss(logps, old, ref, adv, mask, *, sampler_logps_bt=None, entropy_bt=None, entropy_control=None, **kw):
    """losses.policy_loss with its LossConfig built from keywords."""
    cfg = losses.LossConfig(**kw)
    return losses.policy_loss(
        cfg, logps, old, ref, adv, mask, sampler_logps_bt=sampler_logps_bt, entropy_bt=entropy_bt,
        entropy_control=entropy_control,
    )


def _none_if_nan(x):
    return None if np.isnan(x) else float(x)


def _case_kwargs(gold, i):
    eps_low, eps_high = gold["case_eps"][i]
    clip_min, clip_max = gold["case_is_clip"][i]
    tau_pos, tau_neg = gold["case_sapo"][i]
    k_pos, lambda_pos, k_neg, lambda_neg = (float(v) for v in gold["case_vespo"][i])
    return dict(
        loss_type=str(gold["case_loss_type"][i]),
        importance_sampling_level=str(gold["case_level"][i]),
        epsilon_low=float(eps_low),
        epsilon_high=float(eps_high),
        beta=float(gold["case_beta"][i]),
        kl_bias_correction=bool(gold["case_bias_kl"][i]),
        max_completion_length=int(gold["max_completion_length"]),
        sampler_is_correction=bool(gold["case_is_correction"][i]),
        sampler_is_mode=str(gold["case_is_mode"][i]),
        sampler_is_clip_min=_none_if_nan(clip_min),
        sampler_is_clip_max=_none_if_nan(clip_max),
        off_policy_mask_threshold=_none_if_nan(gold["case_opsm"][i]),
        top_entropy_quantile=float(gold["case_top_q"][i]),
        sapo_temperature_pos=float(tau_pos),
        sapo_temperature_neg=float(tau_neg),
        delta=_none_if_nan(gold["case_delta"][i]),
        vespo_k_pos=k_pos,
        vespo_lambda_pos=lambda_pos,
        vespo_k_neg=k_neg,
        vespo_lambda_neg=lambda_neg,
        entropy_coef=float(gold["case_entropy_coef"][i]),
    )


def _loss_and_grad(gold, i, dtype, input_dtype=None):
    """Our loss, gradients and metrics on case i, computed in `dtype` from the goldens' inputs rounded to
    `input_dtype` (default: `dtype`)."""
    kw = _case_kwargs(gold, i)
    cast = lambda x: jnp.asarray(np.asarray(x).astype(input_dtype or dtype), dtype)  # noqa: E731
    old = None if gold["case_on_policy"][i] else cast(gold["old_logps"])
    ref = cast(gold["ref_logps"]) if kw["beta"] > 0 else None
    sampler = cast(gold["sampler_logps"]) if gold["case_use_sampler"][i] else None
    adv = cast(gold["advantages"])
    mask = jnp.asarray(gold["mask"] > 0)

    def f(logps, entropy):  # the entropies are always given (as the trainer does) and differentiated
        return policy_loss(logps, old, ref, adv, mask, sampler_logps_bt=sampler, entropy_bt=entropy, **kw)

    args = (cast(gold["logps"]), cast(gold["entropy"]))
    (loss, metrics), (grad, grad_entropy) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(*args)
    return loss, grad, grad_entropy, metrics


# TRL's metric name -> ours (policy_loss's metrics; health metrics under 'sampler/').
TRL_METRICS = {
    "clip_ratio/low_mean": "clip_ratio/low_mean",
    "clip_ratio/high_mean": "clip_ratio/high_mean",
    "clip_ratio/region_mean": "clip_ratio/region_mean",
    "kl": "kl",
    "cispo_clip_ratio": "cispo_clip_ratio",
    "sampling/sampling_logp_difference/mean": "sampler/logp_diff_mean",
    "sampling/sampling_logp_difference/max": "sampler/logp_diff_max",
    "sampling/importance_sampling_ratio/min": "sampler/is_weight_min",
    "sampling/importance_sampling_ratio/mean": "sampler/is_weight_mean",
    "sampling/importance_sampling_ratio/max": "sampler/is_weight_max",
    "entropy_coef": "entropy_coef",
    "vespo/phi_seq_mean": "vespo/phi_seq_mean",
}


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
    assert NUM_CASES == 181
    assert list(gold["metric_names"]) == list(TRL_METRICS)
    # The inputs exercise clipping on both sides at token and sequence level, so the goldens can tell clip
    # bounds apart (clip-higher changes the loss); on-policy cases have rho = 1 and never clip.
    m = gold["metrics"]
    plain = ~gold["case_use_sampler"] & np.isnan(gold["case_opsm"]) & (gold["case_top_q"] == 1)
    for level in ("token", "sequence"):
        sel = (
            plain
            & (gold["case_level"] == level)
            & ~gold["case_on_policy"]
            & np.isin(gold["case_loss_type"], ("grpo", "bnpo", "dr_grpo", "dapo"))
        )
        assert np.all(m[sel, 0] > 0) and np.all(m[sel, 1] > 0)


def test_goldens_exercise_every_option(gold):
    """Each correction changes something in the goldens, so a wrong bound or a missing mask cannot pass."""
    mask = gold["mask"] > 0
    ratio = np.exp(np.where(mask, gold["old_logps"] - gold["sampler_logps"], 0))
    seq_ratio = np.exp(np.where(mask, gold["old_logps"] - gold["sampler_logps"], 0).sum(-1, keepdims=True))
    for mode in grpo.SAMPLER_IS_MODES:
        sel = np.flatnonzero(gold["case_is_correction"] & (gold["case_is_mode"] == mode) & ~gold["case_on_policy"])
        assert len(sel) >= 3
        raw = np.broadcast_to(seq_ratio if mode.startswith("sequence") else ratio, mask.shape)
        kept = []
        for i in sel:  # every bound truncates or masks some weights; some cases also leave some as they are
            w = gold["is_weights"][i]
            assert np.any(~np.isclose(w, raw) & mask), (mode, i)
            kept.append(np.any(np.isclose(w, raw) & mask))
        assert any(kept), mode
    # The off-policy mask drops different rows at delta = 0 and 0.5, with and without sampler log-probs.
    for loss_type in ("grpo", "dapo", "cispo", "sapo"):
        for use_sampler in (False, True):
            sel = (gold["case_loss_type"] == loss_type) & (gold["case_use_sampler"] == use_sampler)
            sel &= ~gold["case_is_correction"] & (gold["case_top_q"] == 1)
            l0 = gold["loss"][sel & (gold["case_opsm"] == 0.0)]
            l5 = gold["loss"][sel & (gold["case_opsm"] == 0.5)]
            assert len(l0) == len(l5) == 1 and abs(l0[0] - l5[0]) > 1e-3
    # Entropy selection keeps the top token at rho = 0, 4 of 17 at 0.2 (quantile between two tokens), 9 of 17 at
    # 0.5 (the median token itself counts: entropy >= threshold).
    for q, n in ((0.0, 1), (0.2, 4), (0.5, 9)):
        for i in np.flatnonzero(gold["case_top_q"] == q):
            assert gold["entropy_mask"][i].sum() == n and not np.any(gold["entropy_mask"][i] & ~mask)
    # CISPO's eps_max = 1.2 truncates, SAPO's temperatures change the loss.
    cispo = (gold["case_loss_type"] == "cispo") & np.isnan(gold["case_opsm"]) & ~gold["case_use_sampler"]
    assert np.all(gold["metrics"][cispo & (gold["case_eps"][:, 1] == 1.2), 4] > 0)
    sapo = (gold["case_loss_type"] == "sapo") & (gold["case_top_q"] == 1) & np.isnan(gold["case_opsm"])
    sapo &= ~gold["case_on_policy"] & ~gold["case_use_sampler"]
    assert len(set(np.round(gold["loss"][sapo], 6))) == 8


@pytest.mark.parametrize("i", range(NUM_CASES))
def test_policy_loss_matches_trl_f32(gold, i):
    loss, grad, grad_entropy, metrics = _loss_and_grad(gold, i, jnp.float32)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.float32
    # TRL's values are float64. Ours in float32 differ by (1) the inputs' rounding to float32, measured exactly as
    # our float64 loss on the rounded inputs (the same on every machine), plus (2) float32 arithmetic: sums over the
    # case's tokens of O(1) terms (advantages x ratios) and a few exp/log per token, bounded by numerics.sum_atol
    # on the value's scale. Only (2) depends on the CPU; a wrong term or a wrong clip is O(1e-2) or more.
    with jax.enable_x64(True):
        rounded = _loss_and_grad(gold, i, jnp.float64, input_dtype=np.float32)[:3]
    n = int(gold["mask"].sum())
    for name, ours, at_rounded, want in zip(("loss", "grad", "grad_entropy"), (loss, grad, grad_entropy), rounded,
                                           (gold["loss"][i], gold["grad"][i], gold["grad_entropy"][i])):
        scale = max(1.0, float(np.max(np.abs(want)))) if name == "loss" else float(np.max(np.abs(want), initial=0))
        atol = np.abs(np.asarray(at_rounded) - want) + numerics.sum_atol(n, scale, transcendental_ulps=8)
        assert np.all(np.abs(np.asarray(ours, np.float64) - want) <= atol), (name, np.asarray(ours) - want, atol)
    for k, want in zip(gold["metric_names"], gold["metrics"][i]):
        ours = TRL_METRICS[str(k)]
        if np.isnan(want):
            # TRL logs the sampler mismatch only with the correction on; we log it whenever sampler log-probs are given.
            assert ours not in metrics or (ours.startswith("sampler/logp_diff") and gold["case_use_sampler"][i]), ours
        else:
            np.testing.assert_allclose(metrics[ours], want, rtol=1e-6, atol=1e-6, err_msg=ours)


def _check_f64(gold, cases):
    with jax.enable_x64(True):
        for i in cases:
            loss, grad, grad_entropy, _ = _loss_and_grad(gold, i, jnp.float64)
            assert grad.dtype == jnp.float64
            np.testing.assert_allclose(loss, gold["loss"][i], rtol=1e-12, atol=1e-14, err_msg=str(i))
            np.testing.assert_allclose(grad, gold["grad"][i], rtol=1e-10, atol=1e-14, err_msg=str(i))
            np.testing.assert_allclose(grad_entropy, gold["grad_entropy"][i], rtol=1e-10, atol=1e-14, err_msg=str(i))


def test_policy_loss_matches_trl_f64(gold):
    # Every third case by default (each case compiles once per dtype); all of them in the slow suite.
    _check_f64(gold, range(0, NUM_CASES, 3))


@pytest.mark.slow
def test_policy_loss_matches_trl_f64_all_cases(gold):
    _check_f64(gold, range(NUM_CASES))


def _check_adaptive_entropy(gold, dtype, atol):
    """TRL's adaptive entropy control over a sequence of updates: the controller state carried from step to step
    (losses.update_entropy_control), each step's loss, both gradients and the coefficient TRL logs."""
    cfg_kw = {k.removeprefix("adaptive_cfg_"): gold[k].item() for k in gold if k.startswith("adaptive_cfg_")}
    cfg = losses.LossConfig(**cfg_kw, use_adaptive_entropy=True)
    args = [jnp.asarray(gold[k], dtype) for k in ("logps", "old_logps", "advantages")]
    mask = jnp.asarray(gold["mask"] > 0)

    def f(logps, entropy, ctrl):
        return losses.policy_loss(cfg, logps, args[1], None, args[2], mask, entropy_bt=entropy, entropy_control=ctrl)

    step = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
    ctrl = losses.initial_entropy_control(cfg, dtype)
    for k, scale in enumerate(gold["adaptive_scales"]):
        entropy = jnp.asarray(gold["entropy"] * scale, dtype)
        (loss, m), (grad, grad_entropy) = step(args[0], entropy, ctrl)
        np.testing.assert_allclose(loss, gold["adaptive_loss"][k], rtol=0, atol=atol, err_msg=str(k))
        np.testing.assert_allclose(grad, gold["adaptive_grad"][k], rtol=0, atol=atol, err_msg=str(k))
        np.testing.assert_allclose(grad_entropy, gold["adaptive_grad_entropy"][k], rtol=0, atol=atol, err_msg=str(k))
        np.testing.assert_allclose(m["entropy_coef"], gold["adaptive_entropy_coef"][k], rtol=0, atol=atol)
        ctrl = losses.update_entropy_control(cfg, ctrl, m["entropy_bonus/entropy"])
        assert float(ctrl.coef) == float(m["entropy_coef"])


def test_adaptive_entropy_control_matches_trl(gold):
    # The goldens' steps move the coefficient to both bounds and apply it only after a low-entropy step.
    np.testing.assert_allclose(gold["adaptive_entropy_coef"], [0.014, 0.008, 0.002, 0.002, 0.008, 0.014])
    applied = np.abs(gold["adaptive_grad_entropy"]).sum((1, 2)) > 0
    np.testing.assert_array_equal(applied, [False, True, False, False, False, True])
    _check_adaptive_entropy(gold, jnp.float32, 1e-6)
    with jax.enable_x64(True):
        _check_adaptive_entropy(gold, jnp.float64, 1e-12)


def test_registry_variants_change_the_goldens(gold):
    """delta clamps, VESPO's (k, lambda) and the absorbed sampler weights matter, and the entropy bonus is the only
    case with an entropy gradient: a variant that did nothing could not match."""
    kw = lambda i: _case_kwargs(gold, i)  # noqa: E731
    for i in np.flatnonzero(~np.isnan(gold["case_delta"]) & (gold["case_delta"] == 1.3)):
        without = {**kw(i), "delta": None}
        j = [n for n in range(NUM_CASES) if kw(n) == without]  # the same case without the clamp, if the goldens have it
        loss, *_ = _loss_and_grad(gold, i, jnp.float32)
        adv, mask = jnp.asarray(gold["advantages"]), jnp.asarray(gold["mask"] > 0)
        old = jnp.asarray(gold["old_logps"])
        ref = jnp.asarray(gold["ref_logps"]) if without["beta"] > 0 else None
        unclamped, _ = policy_loss(jnp.asarray(gold["logps"], jnp.float32), old, ref, adv, mask, **without)
        assert abs(float(loss) - float(unclamped)) > 1e-4, (i, j)
    vespo = (gold["case_loss_type"] == "vespo") & ~gold["case_use_sampler"] & (gold["case_entropy_coef"] == 0)
    vespo &= ~gold["case_on_policy"]
    # 2 (k, lambda) pairs x 2 levels x beta 0 / 0.04: VESPO builds its own sequence ratio, so the level only moves the
    # bias-corrected KL (beta > 0); each pair and beta give a loss of their own.
    assert len(set(np.round(gold["loss"][vespo], 6))) == 6 and int(vespo.sum()) == 8
    absorbed = (gold["case_loss_type"] == "vespo") & gold["case_is_correction"]
    assert len(set(np.round(gold["loss"][absorbed], 6))) == int(absorbed.sum()) == 3
    bonus = gold["case_entropy_coef"] != 0
    assert np.all(np.abs(gold["grad_entropy"][bonus]).sum((1, 2)) > 0)
    assert np.all(gold["grad_entropy"][~bonus] == 0)
    on = gold["mask"] > 0
    for i in np.flatnonzero(bonus):  # d(-c_H H)/dH_t = -c_H / n on the n trained tokens (entropy-selected ones)
        trained = on & gold["entropy_mask"][i]
        want = np.where(trained, -gold["case_entropy_coef"][i] / trained.sum(), 0)
        np.testing.assert_allclose(gold["grad_entropy"][i], want, rtol=1e-12, atol=1e-15)


def test_importance_weights_and_entropy_mask_match_trl(gold):
    mask = jnp.asarray(gold["mask"] > 0)
    logps = jnp.asarray(gold["logps"], jnp.float32)
    for i in range(NUM_CASES):
        kw = _case_kwargs(gold, i)
        if gold["case_is_correction"][i]:
            old = logps if gold["case_on_policy"][i] else jnp.asarray(gold["old_logps"], jnp.float32)
            w, _ = grpo.sampler_importance_weights(
                old,
                jnp.asarray(gold["sampler_logps"], jnp.float32),
                mask,
                mode=kw["sampler_is_mode"],
                clip_min=kw["sampler_is_clip_min"],
                clip_max=kw["sampler_is_clip_max"],
            )
            assert w.shape == ((5, 1) if kw["sampler_is_mode"].startswith("sequence") else (5, 6))
            np.testing.assert_allclose(np.broadcast_to(w, mask.shape), gold["is_weights"][i], rtol=1e-6, atol=1e-7)
        if kw["top_entropy_quantile"] < 1:
            got = grpo.high_entropy_mask(jnp.asarray(gold["entropy"], jnp.float32), mask, kw["top_entropy_quantile"])
            np.testing.assert_array_equal(got, gold["entropy_mask"][i])


def test_dapo_equals_bnpo_single_step_and_num_tokens_rescales(gold):
    # One process, one step: TRL's num_items_in_batch is sum(mask), so 'dapo' == 'bnpo' (as the goldens show).
    plain = ~gold["case_use_sampler"] & np.isnan(gold["case_opsm"]) & (gold["case_top_q"] == 1)
    plain &= np.isnan(gold["case_delta"]) & (gold["case_entropy_coef"] == 0)
    dapo = gold["loss"][plain & (gold["case_loss_type"] == "dapo")]
    np.testing.assert_allclose(dapo, gold["loss"][plain & (gold["case_loss_type"] == "bnpo")], rtol=1e-12)
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


@pytest.mark.parametrize("loss_type", losses.LOSS_TYPES)
@pytest.mark.parametrize("level", grpo.IMPORTANCE_SAMPLING_LEVELS)
def test_zero_advantage_zero_beta_gives_zero_loss_and_grad(loss_type, level):
    logps, old, _, mask = _random_batch()
    eps_high = 5.0 if loss_type == "cispo" else 0.2
    f = lambda lp: policy_loss(
        lp,
        old,
        None,
        jnp.zeros(4),
        mask,
        loss_type=loss_type,
        max_completion_length=7,
        importance_sampling_level=level,
        epsilon_high=eps_high,
        sampler_logps_bt=old - 0.1,
        sampler_is_mode="token_truncate" if loss_type == "vespo" else "sequence_mask",  # VESPO: token modes only
        off_policy_mask_threshold=0.0,
    )[0]
    loss, grad = jax.value_and_grad(f)(logps)
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_on_policy_grpo_is_minus_mean_advantage_and_k3_hand_golden():
    logps, _, _, mask = _random_batch(seed=1)
    adv = jnp.array([1.0, -2.0, 0.5, 0.25])
    # log pi_ref - log pi_theta = +log 2 on half the tokens and -log 2 on the other half: k3 = 2 - log 2 - 1 and
    # 1/2 + log 2 - 1, whose mean is exactly 1/4.
    sign = jnp.where(jnp.arange(7) % 2 == 0, 1.0, -1.0)[None, :]
    mask = jnp.ones_like(mask).at[:, 6:].set(False)  # 6 tokens per row: three of each sign
    ref = logps + sign * jnp.log(2.0)
    loss, m = policy_loss(logps, None, ref, adv, mask, beta=0.1)
    # rho = 1 on policy: pg loss = -mean_i A_i for 'grpo'.
    # Tolerances (numerics.py): the pg loss is a mean of 24 terms A_i * 1 (scale mean|A|); the KL a mean of 24
    # positive k3 terms whose arguments carry the rounding of ref = logps ± log 2 (u·|ref| each, k3' <= 1 there).
    pg_atol = numerics.sum_atol(24, float(jnp.mean(jnp.abs(adv))))
    kl_atol = numerics.sum_atol(24, 0.25, transcendental_ulps=8) + 4 * numerics.U32 * float(jnp.max(jnp.abs(ref)))
    np.testing.assert_allclose(m["pg_loss"], -adv.mean(), rtol=0, atol=pg_atol)
    np.testing.assert_allclose(m["kl"], 0.25, rtol=0, atol=kl_atol)
    np.testing.assert_allclose(loss, -adv.mean() + 0.1 * 0.25, rtol=0, atol=pg_atol + 0.1 * kl_atol)
    np.testing.assert_allclose(m["ratio_mean"], 1.0, rtol=1e-6)
    assert float(m["tokens"]) == 24.0


@pytest.mark.parametrize("level", grpo.IMPORTANCE_SAMPLING_LEVELS)
def test_padding_junk_does_not_leak(level):
    logps, old, ref, mask = _random_batch(seed=2)
    adv = jnp.array([1.0, -1.0, 0.5, -0.5])
    kw = dict(beta=0.04, kl_bias_correction=True, epsilon_high=0.28, importance_sampling_level=level)
    f = lambda lp, o, r: policy_loss(lp, o, r, adv, mask, **kw)[0]
    clean = jax.value_and_grad(f)(logps, old, ref)
    junk = jax.value_and_grad(f)(jnp.where(mask, logps, jnp.inf), jnp.where(mask, old, -jnp.inf), ref)
    np.testing.assert_allclose(junk[0], clean[0], rtol=1e-6)
    np.testing.assert_allclose(junk[1], clean[1], rtol=1e-6)
    assert np.all(np.asarray(junk[1])[~np.asarray(mask)] == 0.0)


def test_jit_with_bound_config_matches_eager():
    logps, old, ref, mask = _random_batch(seed=4)
    adv = jnp.array([0.3, -1.0, 0.5, -0.5])
    kw = dict(
        loss_type="dr_grpo",
        max_completion_length=9,
        beta=0.02,
        epsilon_high=0.28,
        sampler_is_mode="token_mask",
        sampler_is_clip_min=0.8,
        sampler_is_clip_max=1.25,
        off_policy_mask_threshold=0.05,
        top_entropy_quantile=0.5,
    )
    data = dict(sampler_logps_bt=old + 0.2 * jnp.sin(old * 7), entropy_bt=jnp.cos(logps * 5) + 1)
    cfg = losses.LossConfig(**kw)  # frozen and hashable: bound with partial, or passed as a static argument
    jitted = jax.jit(functools.partial(losses.policy_loss, cfg))
    got, got_m = jitted(logps, old, ref, adv, mask, **data)
    got_s, _ = jax.jit(losses.policy_loss, static_argnums=0)(cfg, logps, old, ref, adv, mask, **data)
    np.testing.assert_array_equal(got_s, got)
    want, want_m = policy_loss(logps, old, ref, adv, mask, **kw, **data)
    assert {"sampler/is_masked_fraction", "off_policy_mask/dropped_fraction", "entropy_mask/trained_fraction"} <= set(
        want_m
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert set(got_m) == set(want_m)
    for k in want_m:
        np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-6)


def test_dr_grpo_uses_constant_normaliser():
    logps, old, _, mask = _random_batch(seed=3)
    adv = jnp.array([1.0, -1.0, 0.5, -0.5])
    bnpo, _ = policy_loss(logps, old, None, adv, mask, loss_type="bnpo")
    dr, _ = policy_loss(logps, old, None, adv, mask, loss_type="dr_grpo", max_completion_length=10)
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
        (dict(epsilon_high=1.5), "epsilon_high=1.5"),
        (dict(loss_type="cispo", epsilon_high=0.28), "epsilon_high=0.28.*eps_max"),
        (dict(sampler_is_mode="token"), "sampler_is_mode='token'"),
        (dict(sampler_is_clip_min=-0.1), "sampler_is_clip_min=-0.1"),
        (dict(sampler_is_clip_max=0.0), "sampler_is_clip_max=0.0"),
        (dict(sampler_is_clip_min=2.0, sampler_is_clip_max=2.0), "sampler_is_clip_min=2.0 >= sampler_is_clip_max"),
        (dict(sampler_is_mode="token_truncate", sampler_is_clip_max=None), "needs at least one bound"),
        (dict(off_policy_mask_threshold=-1.0), "off_policy_mask_threshold=-1.0"),
        (dict(top_entropy_quantile=1.5), "top_entropy_quantile=1.5"),
        (dict(top_entropy_quantile=0.2), "needs entropy_bt"),
        (dict(loss_type="sapo", sapo_temperature_neg=0.0), "sapo_temperature_neg=0.0"),
        (dict(delta=1.1), "delta=1.1: must be > 1 \\+ epsilon_high"),
        (dict(loss_type="sapo", delta=4.0), "delta=4.0: clamps the clipped"),
        (dict(loss_type="vespo"), "sampler_is_mode='sequence_mask': loss_type='vespo'"),
        (dict(loss_type="vespo", sampler_is_correction=False, vespo_lambda_neg=0.0), "vespo_lambda_neg=0.0"),
        (dict(vespo_k_pos=-1.0), "vespo_k_pos=-1.0"),
        (dict(entropy_coef=0.01), "entropy_coef=0.01 .*needs entropy_bt"),
        (dict(use_adaptive_entropy=True), "needs entropy_bt"),
        (dict(entropy_coef_min=2.0), "entropy_coef_min=2.0"),
        (dict(entropy_target=math.inf), "entropy_target=inf"),
    ],
)
def test_policy_loss_arg_errors(kw, match):
    logps, old, _, mask = _random_batch()
    with pytest.raises(ValueError, match=match):
        policy_loss(logps, old, None, jnp.zeros(4), mask, **kw)


def test_loss_config_validate_names_config_fields():
    # The trainer's config validation calls this with prefix 'rl.': one set of bounds, errors naming the field.
    with pytest.raises(ValueError, match=r"^rl\.sampler_is_clip_max=-3\.0"):
        losses.LossConfig(sampler_is_clip_max=-3.0).validate(prefix="rl.")
    with pytest.raises(ValueError, match=r"^rl\.top_entropy_quantile=-0\.1"):
        losses.LossConfig(top_entropy_quantile=-0.1).validate(prefix="rl.")
    # Configs hold numbers: C_min = 0, C_max = inf and delta = inf are the no-op bounds (as None), and valid.
    losses.LossConfig(
        sampler_is_mode="token_mask",
        sampler_is_clip_min=0.0,
        sampler_is_clip_max=math.inf,
        off_policy_mask_threshold=math.inf,
    ).validate()
    with pytest.raises(ValueError, match="needs at least one bound"):
        losses.LossConfig(
            sampler_is_mode="sequence_truncate", sampler_is_clip_min=0.0, sampler_is_clip_max=math.inf
        ).validate()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(sampler_is_mode="tis"), "sampler_is_mode"),
        (dict(sampler_is_clip_max=-1.0), "sampler_is_clip_max"),
        (dict(sampler_is_clip_min=3.0), "sampler_is_clip_min"),  # >= C_max = 3 (the default)
        (dict(off_policy_mask_threshold=-0.5), "off_policy_mask_threshold"),
        (dict(top_entropy_quantile=2.0), "top_entropy_quantile"),
        (dict(loss_type="sapo", sapo_temperature_pos=0.0), "sapo_temperature_pos"),
        (dict(loss_type="cispo"), "epsilon_high"),  # the default 0.2 is no eps_max
        (dict(delta=1.2), "delta"),  # <= 1 + epsilon_high
        (dict(loss_type="vespo", sampler_is_correction=True), "sampler_is_mode"),  # sequence_mask: not for VESPO
        (dict(vespo_lambda_pos=-1.0), "vespo_lambda_pos"),
        (dict(entropy_coef_max=-1.0), "entropy_coef_delta"),  # min > max, named with its partners
        (dict(use_adaptive_entropy=True), "use_adaptive_entropy"),  # no controller state in the trainer yet
    ],
)
def test_config_validation_uses_the_loss_bounds(overrides, field):
    c = grpo_config.grpo_config()
    with pytest.raises(ValueError, match="model.checkpoint"):  # the defaults pass every loss check
        grpo_config.validate(c, num_devices=1)
    c.rl.update(overrides)
    with pytest.raises(ValueError, match=rf"^rl\.{field}="):
        grpo_config.validate(c, num_devices=1)


def test_loss_config_reads_every_option_from_the_config():
    # Each LossConfig field is declared once in the trainer's config (rl.<field>) and read in one place.
    c = grpo_config.grpo_config()
    fields = [f.name for f in dataclasses.fields(losses.LossConfig) if f.name != "max_completion_length"]
    assert set(fields) <= set(c.rl)
    c.rl.update(loss_type="vespo", vespo_k_neg=4.0, entropy_coef=0.01, top_entropy_quantile=0.2, beta=0.04)
    cfg = rollouts.loss_config(c)
    assert {f: getattr(cfg, f) for f in fields} == {f: c.rl[f] for f in fields}
    assert cfg.max_completion_length == c.sampling.max_new_tokens
    assert hash(cfg) == hash(rollouts.loss_config(c))  # frozen: a static argument / partial binding
    c.rl.delta = 1.0
    with pytest.raises(ValueError, match=r"^rl\.delta=1\.0"):
        rollouts.loss_config(c)


def test_policy_loss_shape_errors():
    logps, old, _, mask = _random_batch()
    with pytest.raises(ValueError, match="sampler_logps_bt.shape"):
        policy_loss(logps, old, None, jnp.zeros(4), mask, sampler_logps_bt=old[:, :3])
    with pytest.raises(ValueError, match="advantages_b.shape"):
        policy_loss(logps, old, None, jnp.zeros((4, 1)), mask)
    with pytest.raises(ValueError, match="mask_bt.shape"):
        policy_loss(logps, old, None, jnp.zeros(4), mask[:, :3])


# ----------------------------------------------------------------------------------------------------------------
# Rollout-policy corrections, CISPO / SAPO, health metrics
# ----------------------------------------------------------------------------------------------------------------


def test_corrections_that_change_nothing_are_exact_no_ops():
    logps, old, ref, mask = _random_batch(seed=5)
    adv = jnp.array([1.0, -1.0, 0.5, -0.5])
    base_kw = dict(loss_type="dapo", beta=0.04, epsilon_high=0.28)

    def run(**kw):
        f = lambda lp: policy_loss(lp, old, ref, adv, mask, **base_kw, **kw)[0]
        return jax.value_and_grad(f)(logps)

    want = run()
    entropy = jnp.abs(jnp.sin(logps))
    variants = [dict(sampler_logps_bt=old, sampler_is_mode=mode) for mode in grpo.SAMPLER_IS_MODES]  # w = 1
    variants += [
        dict(sampler_logps_bt=old - 1.0, sampler_is_correction=False),  # only metrics read them
        dict(off_policy_mask_threshold=math.inf),
        dict(top_entropy_quantile=1.0, entropy_bt=entropy),
        dict(delta=math.inf),
        dict(entropy_coef=0.0, entropy_bt=entropy),
    ]
    for kw in variants:
        got = run(**kw)
        np.testing.assert_array_equal(got[0], want[0], err_msg=str(kw))
        np.testing.assert_array_equal(got[1], want[1], err_msg=str(kw))
    # ...and the same options with values that act do change it (a planted no-op would be caught above).
    for kw in [
        dict(sampler_logps_bt=old - 0.5, sampler_is_mode="token_truncate", sampler_is_clip_max=1.2),
        dict(off_policy_mask_threshold=0.0, sampler_logps_bt=logps + 1.0, sampler_is_correction=False),
        dict(top_entropy_quantile=0.3, entropy_bt=entropy),
        dict(entropy_coef=0.1, entropy_bt=entropy),  # (delta acts in test_registry_variants_change_the_goldens)
    ]:
        got = run(**kw)  # the bonus's entropies are a constant here: it moves the loss, not d loss / d logps
        assert not (np.allclose(got[0], want[0]) and np.allclose(got[1], want[1])), kw


@pytest.mark.parametrize("level", grpo.IMPORTANCE_SAMPLING_LEVELS)
def test_cispo_and_sapo_on_policy_gradients(level):
    # On policy rho = 1: CISPO's gradient is -A grad log pi / N, DAPO's; SAPO's gate 4/tau sigmoid(tau (rho - 1)) has
    # slope 1 at rho = 1, so its gradient is GRPO's, while its value is -(2 / tau) A instead of -A.
    logps, _, _, mask = _random_batch(seed=6)
    adv = jnp.array([1.0, -2.0, 0.5, -0.25])

    def vg(**kw):
        f = lambda lp: policy_loss(lp, None, None, adv, mask, importance_sampling_level=level, **kw)
        return jax.value_and_grad(f, has_aux=True)(logps)

    (_, _), g_dapo = vg(loss_type="dapo")
    (_, _), g_cispo = vg(loss_type="cispo", epsilon_high=5.0)
    np.testing.assert_allclose(g_cispo, g_dapo, rtol=1e-6, atol=1e-7)
    (l_grpo, _), g_grpo = vg(loss_type="grpo")
    (l_sapo, _), g_sapo = vg(loss_type="sapo", sapo_temperature_pos=2.0, sapo_temperature_neg=0.5)
    np.testing.assert_allclose(g_sapo, g_grpo, rtol=1e-5, atol=1e-7)
    tau = jnp.where(adv > 0, 2.0, 0.5)
    np.testing.assert_allclose(l_sapo, jnp.mean(-2 / tau * adv), rtol=1e-6)
    np.testing.assert_allclose(l_grpo, -adv.mean(), rtol=1e-6)


def test_importance_weights_hand_golden():
    old = jnp.log(jnp.array([[0.5, 0.5, 0.5]]))
    sampler = jnp.log(jnp.array([[0.25, 0.5, 1.0]]))  # pi_old / pi_sampler = [2, 1, 0.5]
    full, first2 = jnp.array([[True, True, True]]), jnp.array([[True, True, False]])
    kw = dict(clip_min=0.6, clip_max=1.5)
    cases = [
        ("token_truncate", full, [[1.5, 1.0, 0.6]], 2 / 3),
        ("token_mask", full, [[0.0, 1.0, 0.0]], 2 / 3),  # IcePop: both bounds mask
        ("sequence_truncate", full, [[1.0]], 0.0),  # the product 2 * 1 * 0.5 = 1 is inside
        ("sequence_mask", full, [[1.0]], 0.0),
        ("sequence_truncate", first2, [[1.5]], 1.0),  # product 2: truncated
        ("sequence_mask", first2, [[0.0]], 1.0),
    ]
    for mode, mask, want, frac in cases:
        w, ratio = grpo.sampler_importance_weights(old, sampler, mask, mode=mode, **kw)
        np.testing.assert_allclose(w, want, rtol=1e-6, err_msg=mode)
        m = grpo.importance_weight_metrics(w, ratio, mask, mode=mode)
        kind = "truncated" if mode.endswith("truncate") else "masked"
        np.testing.assert_allclose(m[f"sampler/is_{kind}_fraction"], frac, rtol=1e-6, err_msg=mode)
        assert set(m) == {
            "sampler/is_weight_mean",
            "sampler/is_weight_min",
            "sampler/is_weight_max",
            f"sampler/is_{kind}_fraction",
        }
    # One-sided bounds: None is no bound.
    w, _ = grpo.sampler_importance_weights(old, sampler, full, mode="token_mask", clip_min=0.6, clip_max=None)
    np.testing.assert_allclose(w, [[2.0, 1.0, 0.0]], rtol=1e-6)


def test_off_policy_mask_and_entropy_selection_hand_golden():
    logps = jnp.zeros((3, 2))
    behaviour = jnp.array([[0.5, 0.5], [0.4, 0.6], [0.05, 0.05]])  # mean KL per row: 0.5, 0.5, 0.05
    mask = jnp.ones((3, 2), bool)
    keep = grpo.off_policy_sequence_mask(jnp.array([1.0, -1.0, -1.0]), logps, behaviour, mask, 0.1)
    np.testing.assert_array_equal(keep, [[1.0], [0.0], [1.0]])  # A >= 0 always kept; row 2 is under delta
    ent = jnp.array([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    emask = jnp.array([[True, True, True], [True, True, False]])  # the 9.0 is padding
    # 0.6 quantile of [0.1 .. 0.5]: position 2.4 -> 0.34; kept: 0.4 and 0.5.
    got = grpo.high_entropy_mask(ent, emask, 0.4)
    np.testing.assert_array_equal(got, [[False, False, False], [True, True, False]])
    m = grpo.selection_metrics(emask, off_policy_mask_b1=jnp.array([[1.0], [0.0]]), entropy_mask_bt=got)
    np.testing.assert_allclose([m["off_policy_mask/dropped_fraction"], m["entropy_mask/trained_fraction"]], [0.5, 0.4])
    assert not np.any(grpo.high_entropy_mask(ent, jnp.zeros_like(emask), 0.4))  # nothing unmasked: nothing trained


def test_logp_mismatch_hand_golden():
    # x = log pi_t - log pi_s = +log 2, -log 2 on two tokens; a NaN sampler token and a padding token are left out.
    trainer = jnp.log(jnp.array([[0.5, 0.25, 0.5, 0.9]]))
    sampler = jnp.log(jnp.array([[0.25, 0.5, jnp.nan, 0.1]]))
    mask = jnp.array([[True, True, True, False]])
    m = grpo.logp_mismatch_metrics(trainer, sampler, mask)
    ln2 = math.log(2)
    np.testing.assert_allclose(m["sampler/logp_diff_mean"], ln2, rtol=1e-6)
    np.testing.assert_allclose(m["sampler/logp_diff_max"], ln2, rtol=1e-6)
    np.testing.assert_allclose(m["sampler/kl_k1"], 0.0, atol=1e-7)
    # k3: (2 - log 2 - 1) + (1/2 + log 2 - 1) = 1/2 over two tokens.
    np.testing.assert_allclose(m["sampler/kl_k3"], 0.25, rtol=1e-6)


def test_health_metrics_equal_policy_loss_entries():
    logps, old, ref, mask = _random_batch(seed=7)
    adv = jnp.array([1.0, -1.0, 0.5, -0.5])
    kw = dict(
        sampler_is_mode="sequence_truncate",
        sampler_is_clip_min=0.8,
        sampler_is_clip_max=1.6,
        off_policy_mask_threshold=0.02,
        top_entropy_quantile=0.4,
    )
    data = dict(sampler_logps_bt=old + 0.3 * jnp.cos(old * 11), entropy_bt=jnp.abs(jnp.sin(old * 3)))
    _, m = policy_loss(logps, old, ref, adv, mask, beta=0.1, **kw, **data)
    h = losses.health_metrics(
        losses.LossConfig(**kw),
        old, data["sampler_logps_bt"], mask, advantages_b=adv, entropy_bt=data["entropy_bt"], logps_bt=logps,
    )
    assert set(h) == {
        "sampler/logp_diff_mean",
        "sampler/logp_diff_max",
        "sampler/kl_k1",
        "sampler/kl_k3",
        "sampler/is_weight_mean",
        "sampler/is_weight_min",
        "sampler/is_weight_max",
        "sampler/is_truncated_fraction",
        "off_policy_mask/dropped_fraction",
        "entropy_mask/trained_fraction",
    }
    for k in h:
        np.testing.assert_allclose(m[k], h[k], rtol=1e-6, err_msg=k)
    assert 0 < float(h["sampler/is_truncated_fraction"]) < 1 and 0 < float(h["entropy_mask/trained_fraction"]) < 1


# ----------------------------------------------------------------------------------------------------------------
# Masked means
# ----------------------------------------------------------------------------------------------------------------


def test_masked_mean():
    x = jnp.array([[1.0, 2.0, jnp.nan], [4.0, 5.0, 6.0]])
    m = jnp.array([[1, 1, 0], [0, 0, 0]], bool)
    np.testing.assert_allclose(grpo.masked_mean(x, m), 1.5)
    np.testing.assert_allclose(grpo.masked_mean(x, m, axis=-1), [1.5, 0.0])  # per row; 0 for a fully masked row
