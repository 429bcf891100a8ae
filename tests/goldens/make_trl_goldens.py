"""Dev script: GRPO loss / gradient / advantage goldens from TRL, for tests/test_grpo.py.

Run by hand (not at test time; needs torch + trl), from the repository root:

    python tests/goldens/make_trl_goldens.py     (a Python environment with torch and trl==1.16.0)

It feeds fixed per-token log-probs through TRL's own `GRPOTrainer._compute_loss` (float64) without a model: a bare
trainer made with `object.__new__`, the attributes `_compute_loss` reads set by hand (one process, one accumulation
step, one step per generation, train mode), and `_get_per_token_logps_and_entropies` replaced by a function that
returns our fixed log-probs and entropies (leaf tensors requiring grad: the entropy bonus differentiates the entropy).
It records the loss, d loss / d logps, d loss / d entropy and TRL's logged metrics for every case, and writes
tests/goldens/trl_grpo_goldens.npz.

Adaptive entropy control (`use_adaptive_entropy`) is state across optimizer steps (the coefficient and the entropy
measured at the previous step), so it gets its own golden: one bare trainer runs `_compute_loss` for a sequence of
steps whose entropies are scaled to cross `entropy_target` both ways, recording each step's loss, gradients and the
coefficient TRL logs.

The sampler importance ratio (TRL's `vllm_importance_sampling_*` options) is computed inside
`_generate_and_score_completions`, which needs a model and vLLM; `trl_source_block` cuts the ratio lines and the
lines that log its metrics out of that method's own source (`inspect.getsource`) and runs them on our tensors, so the
goldens come from TRL's text, not from a copy of it. The high-entropy mask is TRL's `get_high_entropy_mask`.

Advantages: TRL computes them inside `_generate_and_score_completions` too, interleaved with reward calls, so
`trl_advantages` below repeats its 'sum_then_normalize' lines (mean via nanmean, std via TRL's own `nanstd`,
unscorable rewards as NaN, `nan_to_num` at the end).
"""

import collections
import inspect
import itertools
import math
import os
import textwrap
import types

import numpy as np
import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanmax, nanmin, nanstd

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trl_grpo_goldens.npz")
B, T = 5, 6
MAX_COMPLETION_LENGTH = 8  # > T: dr_grpo's constant normaliser must not be the padded length
# Metrics recorded per case (NaN where TRL does not log the metric for that case).
METRICS = (
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "kl",
    "cispo_clip_ratio",
    "sampling/sampling_logp_difference/mean",
    "sampling/sampling_logp_difference/max",
    "sampling/importance_sampling_ratio/min",
    "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
    "entropy_coef",
    "vespo/phi_seq_mean",
)
# Adaptive entropy control: the controller's options, and the factor on the entropies of each step (the mean unmasked
# entropy is about 1.5, so 0.2 puts it under the target and 1.0 over it). The coefficient hits its upper bound at
# step 1, its lower bound at step 4, and is applied only after a step that measured entropy <= target (2, 6).
ADAPTIVE = dict(loss_type="dapo", entropy_coef=0.01, entropy_target=0.5, entropy_coef_delta=0.006,
                entropy_coef_min=0.002, entropy_coef_max=0.014)  # fmt: skip
ADAPTIVE_SCALES = (0.2, 1.0, 1.0, 1.0, 0.2, 0.2)


def make_inputs():
    rng = np.random.default_rng(20250122)
    lengths = np.array([6, 4, 2, 5, 0])  # one fully masked row (a truncated completion under masking)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
    adv = np.array([1.2, -0.7, 0.5, -1.5, 0.9])
    old = rng.uniform(-3.0, -0.1, (B, T))
    # Per-sequence drift so that sequence-level ratios clip too: row 0 (A > 0) above 1 + eps_high, row 1 (A < 0)
    # below 1 - eps_low, row 3 (A < 0) above 1 (not clipped: min() keeps the unclipped term).
    offset = np.array([0.45, -0.35, 0.05, 0.4, 0.0])[:, None]
    logps = old + offset + rng.normal(0.0, 0.25, (B, T))
    ref = old + rng.normal(0.0, 0.2, (B, T))
    # Padding holds finite junk: TRL multiplies by the mask after exp(), so it must stay finite for TRL.
    junk = rng.uniform(-5.0, 0.0, (3, B, T))
    logps, old, ref = (np.where(mask > 0, x, j) for x, j in zip((logps, old, ref), junk))
    # The sampler's log-probs: per-sequence drift and per-token noise wide enough that token ratios pi_old / pi_s
    # fall on both sides of [0.5, 2] and [0.5, 3], and sequence ratios on both sides of [0.5, 3] and [0.1, 5].
    s_offset = np.array([-0.25, 0.05, 0.3, 0.45, 0.0])[:, None]
    sampler = np.where(mask > 0, old + s_offset + rng.normal(0.0, 0.6, (B, T)), rng.uniform(-5.0, 0.0, (B, T)))
    entropy = np.where(mask > 0, rng.uniform(0.05, 3.0, (B, T)), rng.uniform(0.0, 9.0, (B, T)))
    # get_high_entropy_mask takes the quantile of the entropies cast to float32 and compares the float64 ones with
    # it: with float32-exact entropies the token at the quantile is kept (entropy >= threshold), as in an f32 run.
    entropy = entropy.astype(np.float32).astype(np.float64)
    return dict(
        logps=logps, old_logps=old, ref_logps=ref, sampler_logps=sampler, entropy=entropy, advantages=adv, mask=mask
    )


def trl_source_block(method, first_line, end_line):
    """Compiled lines of a TRL method's source: from the line holding `first_line` up to the line holding
    `end_line` (excluded), dedented."""
    src = inspect.getsource(method)
    i = src.index(first_line)
    i = src.rindex("\n", 0, i) + 1
    j = src.rindex("\n", 0, src.index(end_line, i)) + 1
    return compile(textwrap.dedent(src[i:j]), f"<trl {method.__qualname__} lines>", "exec")


IS_RATIO_LINES = trl_source_block(
    GRPOTrainer._generate_and_score_completions,
    "# Compute the importance sampling ratio when using vLLM",
    "# Compute the per-token log probabilities for the reference model",
)
IS_METRIC_LINES = trl_source_block(
    GRPOTrainer._generate_and_score_completions,
    "delta = torch.abs(old_per_token_logps - sampling_per_token_logps)",
    "output = {",
)


def bare_trainer(case):
    tr = object.__new__(GRPOTrainer)
    tr.loss_type = case["loss_type"]
    tr.beta = case["beta"]
    tr.epsilon_low = case["eps_low"]
    tr.epsilon_high = case["eps_high"]
    tr.importance_sampling_level = case["level"]
    tr.max_completion_length = MAX_COMPLETION_LENGTH
    tr.top_entropy_quantile = case["top_q"]
    tr.off_policy_mask_threshold = case["opsm"]
    tr.use_vllm = case["use_sampler"]
    tr.vllm_importance_sampling_correction = case["is_correction"]
    tr.vllm_importance_sampling_mode = case["is_mode"]
    tr.vllm_importance_sampling_clip_min = case["is_min"]
    tr.vllm_importance_sampling_clip_max = case["is_max"]
    tr.aux_loss_enabled = False
    tr.entropy_coef = case["entropy_coef"]
    tr.use_adaptive_entropy = case["adaptive"]
    tr._entropy_bonus_enabled = tr.entropy_coef != 0.0 or tr.use_adaptive_entropy  # as GRPOTrainer.__init__
    tr._last_world_entropy = float("inf")
    tr._entropy_window_stats = None
    tr.current_gradient_accumulation_steps = 1
    tr.args = types.SimpleNamespace(
        use_bias_correction_kl=case["bias_kl"],
        delta=case["delta"],
        steps_per_generation=1,
        sapo_temperature_pos=case["sapo_pos"],
        sapo_temperature_neg=case["sapo_neg"],
        **dict(zip(("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg"), case["vespo"])),
        **{k: case[k] for k in ("entropy_target", "entropy_coef_delta", "entropy_coef_min", "entropy_coef_max")},
    )
    tr.model = types.SimpleNamespace(training=True)
    tr.accelerator = types.SimpleNamespace(
        num_processes=1,
        reduce=lambda x, reduction: x,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        pad_across_processes=lambda x, dim, pad_index: x,
        sync_gradients=True,
    )
    tr._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    return tr


def trl_case(data, case, tr=None, entropy_scale=1.0):
    tr = bare_trainer(case) if tr is None else tr
    tr._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}  # this step's
    t64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    logps = torch.tensor(data["logps"], dtype=torch.float64, requires_grad=True)
    entropy = torch.tensor(data["entropy"] * entropy_scale, dtype=torch.float64, requires_grad=True)
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logps, entropy, None)
    mask = t64(data["mask"])
    inputs = {
        "prompt_ids": torch.zeros((B, 1), dtype=torch.long),
        "prompt_mask": torch.ones((B, 1), dtype=torch.long),
        "completion_ids": torch.zeros((B, T), dtype=torch.long),
        "completion_mask": mask,
        "advantages": t64(data["advantages"]),
        "ref_per_token_logps": t64(data["ref_logps"]),
        "num_items_in_batch": mask.sum(),  # single process: gather(loss_mask.sum()).sum()
    }
    # TRL always recomputes pi_old when it corrects vLLM rollouts; on policy that is pi_theta's value (our None).
    old = t64(data["logps"] if case["on_policy"] else data["old_logps"])
    if not case["on_policy"]:
        inputs["old_per_token_logps"] = old
    weights = np.full((B, T), np.nan)
    if case["use_sampler"]:
        sampler = t64(data["sampler_logps"])
        inputs["sampling_per_token_logps"] = sampler
        if case["is_correction"]:
            if case["on_policy"]:
                inputs["old_per_token_logps"] = old
            ns = dict(
                self=tr,
                old_per_token_logps=old,
                sampling_per_token_logps=sampler,
                completion_mask=mask,
                tool_mask=None,
                torch=torch,
                math=math,
                nanmin=nanmin,
                nanmax=nanmax,
                device="cpu",
                mode="train",
            )
            exec(IS_RATIO_LINES, ns)
            exec(IS_METRIC_LINES, ns)
            inputs["importance_sampling_ratio"] = ns["vllm_importance_sampling_ratio"]
            weights = np.broadcast_to(ns["vllm_importance_sampling_ratio"].numpy(), (B, T)).copy()
    entropy_mask = np.ones((B, T), bool)
    if case["top_q"] < 1.0:
        entropy_mask = tr.get_high_entropy_mask(entropy, mask, 1 - case["top_q"]).numpy()
    loss = tr._compute_loss(model=None, inputs=inputs)
    loss.backward()
    m = tr._metrics["train"]
    metrics = np.array([m[k][0] if k in m else np.nan for k in METRICS], np.float64)
    grad_entropy = np.zeros((B, T)) if entropy.grad is None else entropy.grad.numpy().copy()
    return loss.item(), logps.grad.numpy().copy(), grad_entropy, metrics, weights, entropy_mask


def case(loss_type="grpo", level="token", eps_low=0.2, eps_high=0.2, beta=0.0, bias_kl=False, on_policy=False,
         use_sampler=False, is_correction=False, is_mode="sequence_mask", is_min=None, is_max=3.0, opsm=None,
         top_q=1.0, sapo_pos=1.0, sapo_neg=1.05, delta=None, vespo=(2.0, 3.0, 3.0, 2.0), entropy_coef=0.0,
         adaptive=False, entropy_target=0.2, entropy_coef_delta=0.005, entropy_coef_min=0.0,
         entropy_coef_max=1.0):  # fmt: skip
    return dict(locals())


def all_cases():
    cases = []
    # 1. The clipped losses (56 cases, the first goldens).
    for loss_type, level, (eps_low, eps_high), beta in itertools.product(
        ["grpo", "dapo", "dr_grpo", "bnpo"], ["token", "sequence"], [(0.2, 0.2), (0.2, 0.28)], [0.0, 0.04]
    ):
        for bias_kl in [False, True] if beta else [False]:
            cases.append(case(loss_type, level, eps_low, eps_high, beta, bias_kl))
    for loss_type, beta in itertools.product(["grpo", "dapo", "dr_grpo", "bnpo"], [0.0, 0.04]):
        cases.append(case(loss_type, "token", 0.2, 0.28, beta, True, on_policy=True))  # old_per_token_logps absent
    # 2. Sampler importance corrections: TIS / MIS / token masks (IcePop: both bounds) / sequence truncation, each
    #    with TRL's default bounds (C_max = 3), a two-sided band, and a lower bound alone (token modes; sequence
    #    ratios reach 174 here, so sequence modes get a wide band instead, keeping f32 round-off below 1e-6).
    for mode, k, (loss_type, level, beta, on_policy) in itertools.product(
        ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"],
        range(3),
        [("dapo", "token", 0.04, False), ("grpo", "sequence", 0.0, True)],
    ):
        lo, hi = [(None, 3.0), (0.5, 2.0), (0.5, None) if mode.startswith("token") else (0.1, 5.0)][k]
        cases.append(case(loss_type, level, 0.2, 0.28, beta, True, on_policy, True, True, mode, lo, hi))
    # 3. Off-policy sequence mask, with and without sampler log-probs (then pi_old is the behaviour policy; with them
    #    and the correction off, only this mask reads them). The mean KL of the two rows with A < 0 is (0.95, 0.32)
    #    from the sampler and (0.45, -0.45) from pi_old, so delta = 0 and 0.5 drop different rows.
    for loss_type, thr, use_sampler in itertools.product(["grpo", "dapo", "cispo", "sapo"], [0.0, 0.5], [False, True]):
        eps_high = 5.0 if loss_type == "cispo" else 0.2
        cases.append(case(loss_type, eps_high=eps_high, use_sampler=use_sampler, is_correction=False, opsm=thr))
    cases.append(case("grpo", on_policy=True, use_sampler=True, opsm=0.1))  # on policy: KL from the sampler only
    # 4. Entropy selection.
    for top_q, (loss_type, level) in itertools.product(
        [0.0, 0.2, 0.5], [("grpo", "token"), ("dapo", "sequence"), ("sapo", "token")]
    ):
        cases.append(case(loss_type, level, beta=0.04, top_q=top_q))
    # 5. CISPO: eps_max 1.2 truncates the drifted row, 5.0 (ScaleRL) almost nothing.
    for eps_high, level, beta, on_policy in itertools.product([1.2, 5.0], ["token", "sequence"], [0.0, 0.04], [False]):
        cases.append(case("cispo", level, 0.2, eps_high, beta, beta > 0, on_policy))
    cases.append(case("cispo", "token", 0.2, 5.0, 0.04, True, on_policy=True))
    # 6. SAPO: TRL's default temperatures and a sharper / flatter pair.
    for (tp, tn), level, beta in itertools.product([(1.0, 1.05), (4.0, 0.5)], ["token", "sequence"], [0.0, 0.04]):
        cases.append(case("sapo", level, beta=beta, bias_kl=beta > 0, sapo_pos=tp, sapo_neg=tn))
    cases.append(case("sapo", "token", beta=0.04, on_policy=True))
    # 7. Everything at once.
    cases.append(case("dapo", "token", 0.2, 0.28, 0.04, True, False, True, True, "token_mask", 0.5, 2.0, 0.1, 0.5))
    cases.append(case("cispo", "token", 0.2, 5.0, 0.04, True, False, True, True, "token_truncate", None, 2.0, 0.0, 0.2))
    cases.append(
        case("sapo", "sequence", 0.2, 0.2, 0.0, False, False, True, True, "sequence_mask", None, 3.0, 0.1, 0.5)
    )
    cases.append(case("grpo", "token", 0.2, 0.28, 0.04, False, True, True, True, "sequence_truncate", 0.5, 2.0, 0.1))
    # 8. INTELLECT-2's delta: the unclipped ratio clamped from above (token ratios reach ~2.3 here, sequence ones 1.6),
    #    on the clipped losses; with kl_bias_correction the KL still takes the unclamped ratio.
    for loss_type, level, dlt, beta in itertools.product(
        ["grpo", "dapo", "luspo"], ["token", "sequence"], [1.3, 1.5], [0.0, 0.04]
    ):
        cases.append(case(loss_type, level, 0.2, 0.28 if dlt == 1.5 else 0.2, beta, beta > 0, delta=dlt))
    # 9. LUSPO (meant for level 'sequence'; token level is allowed, as TRL), with the corrections.
    for level, beta, on_policy in itertools.product(["sequence", "token"], [0.0, 0.04], [False, True]):
        cases.append(case("luspo", level, beta=beta, bias_kl=beta > 0, on_policy=on_policy))
    everything = ("sequence_mask", 0.1, 5.0, 0.1, 0.5)  # the sampler correction, off-policy mask, entropy selection
    cases.append(case("luspo", "sequence", 0.2, 0.28, 0.04, True, False, True, True, *everything))
    # 10. VESPO: TRL's default (k, lambda), a sharper pair; the sampler weights absorbed into w (token modes only);
    #     with the off-policy mask and entropy selection.
    for vespo, level, beta in itertools.product([(2.0, 3.0, 3.0, 2.0), (1.0, 0.5, 4.0, 6.0)], ["token", "sequence"],
                                                [0.0, 0.04]):  # fmt: skip
        cases.append(case("vespo", level, beta=beta, bias_kl=beta > 0, vespo=vespo))
    cases.append(case("vespo", on_policy=True, beta=0.04))
    for mode, (lo, hi) in [("token_truncate", (None, 3.0)), ("token_truncate", (0.5, 2.0)), ("token_mask", (0.5, 2.0))]:
        cases.append(case("vespo", "token", 0.2, 0.2, 0.04, False, False, True, True, mode, lo, hi))
    cases.append(case("vespo", "token", 0.2, 0.2, 0.0, False, False, True, False, opsm=0.0, top_q=0.5))
    # 11. Entropy bonus with a constant coefficient: every aggregation sees the same mean entropy; with entropy
    #     selection it acts on the selected tokens only; a negative coefficient is a penalty.
    for loss_type, level, coef, top_q in [
        ("grpo", "token", 0.01, 1.0), ("dapo", "token", 0.05, 1.0), ("dr_grpo", "sequence", 0.01, 1.0),
        ("sapo", "token", 0.02, 0.5), ("cispo", "token", 0.01, 0.2), ("vespo", "token", 0.03, 1.0),
        ("luspo", "sequence", -0.01, 1.0),
    ]:  # fmt: skip
        eps_high = 5.0 if loss_type == "cispo" else 0.2
        cases.append(case(loss_type, level, 0.2, eps_high, 0.04, False, top_q=top_q, entropy_coef=coef))
    return cases


def adaptive_goldens(data):
    """One bare trainer with adaptive entropy control run over ADAPTIVE_SCALES steps (a new trainer's state)."""
    c = case(**ADAPTIVE, adaptive=True)
    tr = bare_trainer(c)
    steps = [trl_case(data, c, tr, scale) for scale in ADAPTIVE_SCALES]
    return {
        "adaptive_loss": np.array([s[0] for s in steps]),
        "adaptive_grad": np.stack([s[1] for s in steps]),
        "adaptive_grad_entropy": np.stack([s[2] for s in steps]),
        "adaptive_entropy_coef": np.array([s[3][METRICS.index("entropy_coef")] for s in steps]),
        "adaptive_scales": np.array(ADAPTIVE_SCALES),
        **{f"adaptive_cfg_{k}": np.array(v) for k, v in ADAPTIVE.items()},
    }


def trl_advantages(rewards_pg, valid_pg, scale_rewards):
    """TRL 1.16.0 grpo_trainer.py, multi_objective_aggregation='sum_then_normalize', one reward function."""
    g = rewards_pg.shape[1]
    rewards = torch.tensor(np.where(valid_pg, rewards_pg, np.nan).reshape(-1), dtype=torch.float64)
    mean_grouped = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    if scale_rewards in ["group", "none"]:
        std = nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean_grouped
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0).numpy().reshape(rewards_pg.shape)


def main():
    data = make_inputs()
    cases = all_cases()
    losses, grads, grads_entropy, metrics, weights, entropy_masks = [], [], [], [], [], []
    for c in cases:
        loss, grad, grad_entropy, met, w, em = trl_case(data, c)
        losses.append(loss)
        grads.append(grad)
        grads_entropy.append(grad_entropy)
        metrics.append(met)
        weights.append(w)
        entropy_masks.append(em)

    rng = np.random.default_rng(7)
    rewards_pg = rng.integers(0, 3, (6, 4)).astype(np.float64) * 0.5
    rewards_pg[0] = 1.0  # a zero-spread group
    valid_pg = np.ones_like(rewards_pg, bool)
    valid_pg[1, 2] = valid_pg[3, 0] = valid_pg[3, 3] = False
    valid_pg[4, 1:] = False  # a single valid completion: nanstd is NaN there, TRL's advantage becomes 0
    rewards_pg[~valid_pg] = 123.0  # junk that must not leak into means / stds
    adv = {s: trl_advantages(rewards_pg, np.ones_like(valid_pg), s) for s in ("group", "batch", "none")}
    adv_valid = {s: trl_advantages(rewards_pg, valid_pg, s) for s in ("group", "batch", "none")}

    nan_if_none = lambda x: np.nan if x is None else x  # noqa: E731
    col = lambda k: np.array([c[k] for c in cases])  # noqa: E731
    np.savez_compressed(
        OUT,
        trl_version=np.array(trl.__version__),
        torch_version=np.array(torch.__version__),
        max_completion_length=np.array(MAX_COMPLETION_LENGTH),
        case_loss_type=col("loss_type"),
        case_level=col("level"),
        case_eps=np.array([(c["eps_low"], c["eps_high"]) for c in cases]),
        case_beta=col("beta"),
        case_bias_kl=col("bias_kl"),
        case_on_policy=col("on_policy"),
        case_use_sampler=col("use_sampler"),
        case_is_correction=col("is_correction"),
        case_is_mode=col("is_mode"),
        case_is_clip=np.array([(nan_if_none(c["is_min"]), nan_if_none(c["is_max"])) for c in cases]),
        case_opsm=np.array([nan_if_none(c["opsm"]) for c in cases]),
        case_top_q=col("top_q"),
        case_sapo=np.array([(c["sapo_pos"], c["sapo_neg"]) for c in cases]),
        case_delta=np.array([nan_if_none(c["delta"]) for c in cases]),
        case_vespo=np.array([c["vespo"] for c in cases]),
        case_entropy_coef=col("entropy_coef"),
        loss=np.array(losses),
        grad=np.stack(grads),
        grad_entropy=np.stack(grads_entropy),  # d loss / d entropy: nonzero only with the entropy bonus
        metric_names=np.array(METRICS),
        metrics=np.stack(metrics),  # NaN where TRL does not log the metric
        is_weights=np.stack(weights),  # TRL's importance_sampling_ratio broadcast to (B, T); NaN without correction
        entropy_mask=np.stack(entropy_masks),  # TRL's get_high_entropy_mask; all True when top_q == 1
        rewards_pg=rewards_pg,
        valid_pg=valid_pg,
        **{f"adv_{s}": a for s, a in adv.items()},
        **{f"adv_valid_{s}": a for s, a in adv_valid.items()},
        **adaptive_goldens(data),
        **data,
    )
    print(f"trl {trl.__version__}: {len(cases)} loss cases -> {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
