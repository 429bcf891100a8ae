"""Dev script: GRPO loss / gradient / advantage goldens from TRL, for tests/test_grpo.py.

Run by hand (not at test time; needs torch + trl):

    .venv-torch/bin/python tests/goldens/make_trl_goldens.py

It feeds fixed per-token log-probs through TRL's own `GRPOTrainer._compute_loss` (float64) without a model: a bare
trainer made with `object.__new__`, the attributes `_compute_loss` reads set by hand (one process, one accumulation
step, one step per generation, train mode), and `_get_per_token_logps_and_entropies` replaced by a function that
returns our fixed log-probs as a leaf tensor requiring grad. It records the loss, d loss / d logps and TRL's logged
clip / KL metrics for every case, and writes tests/goldens/trl_grpo_goldens.npz.

Advantages: TRL computes them inside `_generate_and_score_completions`, which needs models and reward functions, so
`trl_advantages` below repeats its 'sum_then_normalize' lines (mean via nanmean, std via TRL's own `nanstd`,
unscorable rewards as NaN, `nan_to_num` at the end).
"""

import collections
import itertools
import os
import types

import numpy as np
import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trl_grpo_goldens.npz")
B, T = 5, 6
MAX_COMPLETION_LENGTH = 8  # > T: dr_grpo's constant normaliser must not be the padded length


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
    return dict(logps=logps, old_logps=old, ref_logps=ref, advantages=adv, mask=mask)


def bare_trainer(loss_type, beta, eps_low, eps_high, level, bias_kl):
    tr = object.__new__(GRPOTrainer)
    tr.loss_type = loss_type
    tr.beta = beta
    tr.epsilon_low = eps_low
    tr.epsilon_high = eps_high
    tr.importance_sampling_level = level
    tr.max_completion_length = MAX_COMPLETION_LENGTH
    tr.top_entropy_quantile = 1.0
    tr.off_policy_mask_threshold = None
    tr.use_vllm = False
    tr.vllm_importance_sampling_correction = False
    tr.aux_loss_enabled = False
    tr._entropy_bonus_enabled = False
    tr.current_gradient_accumulation_steps = 1
    tr.args = types.SimpleNamespace(use_bias_correction_kl=bias_kl, delta=None, steps_per_generation=1)
    tr.model = types.SimpleNamespace(training=True)
    tr.accelerator = types.SimpleNamespace(
        num_processes=1,
        reduce=lambda x, reduction: x,
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        sync_gradients=True,
    )
    tr._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    return tr


def trl_loss(data, loss_type, beta, eps_low, eps_high, level, bias_kl, on_policy):
    tr = bare_trainer(loss_type, beta, eps_low, eps_high, level, bias_kl)
    logps = torch.tensor(data["logps"], dtype=torch.float64, requires_grad=True)
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    mask = torch.tensor(data["mask"], dtype=torch.float64)
    inputs = {
        "prompt_ids": torch.zeros((B, 1), dtype=torch.long),
        "prompt_mask": torch.ones((B, 1), dtype=torch.long),
        "completion_ids": torch.zeros((B, T), dtype=torch.long),
        "completion_mask": mask,
        "advantages": torch.tensor(data["advantages"], dtype=torch.float64),
        "ref_per_token_logps": torch.tensor(data["ref_logps"], dtype=torch.float64),
        "num_items_in_batch": mask.sum(),  # single process: gather(loss_mask.sum()).sum()
    }
    if not on_policy:
        inputs["old_per_token_logps"] = torch.tensor(data["old_logps"], dtype=torch.float64)
    loss = tr._compute_loss(model=None, inputs=inputs)
    loss.backward()
    m = tr._metrics["train"]
    metrics = [m[k][0] for k in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")]
    metrics.append(m["kl"][0] if beta != 0.0 else np.nan)
    return loss.item(), logps.grad.numpy().copy(), np.array(metrics)


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
    cases = []
    for loss_type, level, (eps_low, eps_high), beta in itertools.product(
        ["grpo", "dapo", "dr_grpo", "bnpo"], ["token", "sequence"], [(0.2, 0.2), (0.2, 0.28)], [0.0, 0.04]
    ):
        for bias_kl in [False, True] if beta else [False]:
            cases.append((loss_type, level, eps_low, eps_high, beta, bias_kl, False))
    for loss_type, beta in itertools.product(["grpo", "dapo", "dr_grpo", "bnpo"], [0.0, 0.04]):
        cases.append((loss_type, "token", 0.2, 0.28, beta, True, True))  # on-policy: old_per_token_logps absent

    losses, grads, metrics = [], [], []
    for loss_type, level, eps_low, eps_high, beta, bias_kl, on_policy in cases:
        loss, grad, met = trl_loss(data, loss_type, beta, eps_low, eps_high, level, bias_kl, on_policy)
        losses.append(loss)
        grads.append(grad)
        metrics.append(met)

    rng = np.random.default_rng(7)
    rewards_pg = rng.integers(0, 3, (6, 4)).astype(np.float64) * 0.5
    rewards_pg[0] = 1.0  # a zero-spread group
    valid_pg = np.ones_like(rewards_pg, bool)
    valid_pg[1, 2] = valid_pg[3, 0] = valid_pg[3, 3] = False
    valid_pg[4, 1:] = False  # a single valid completion: nanstd is NaN there, TRL's advantage becomes 0
    rewards_pg[~valid_pg] = 123.0  # junk that must not leak into means / stds
    adv = {s: trl_advantages(rewards_pg, np.ones_like(valid_pg), s) for s in ("group", "batch", "none")}
    adv_valid = {s: trl_advantages(rewards_pg, valid_pg, s) for s in ("group", "batch", "none")}

    np.savez_compressed(
        OUT,
        trl_version=np.array(trl.__version__),
        torch_version=np.array(torch.__version__),
        max_completion_length=np.array(MAX_COMPLETION_LENGTH),
        case_loss_type=np.array([c[0] for c in cases]),
        case_level=np.array([c[1] for c in cases]),
        case_eps=np.array([(c[2], c[3]) for c in cases]),
        case_beta=np.array([c[4] for c in cases]),
        case_bias_kl=np.array([c[5] for c in cases]),
        case_on_policy=np.array([c[6] for c in cases]),
        loss=np.array(losses),
        grad=np.stack(grads),
        metrics=np.stack(metrics),  # clip low, clip high, clip region, kl (NaN when beta == 0)
        rewards_pg=rewards_pg,
        valid_pg=valid_pg,
        **{f"adv_{s}": a for s, a in adv.items()},
        **{f"adv_valid_{s}": a for s, a in adv_valid.items()},
        **data,
    )
    print(f"trl {trl.__version__}: {len(cases)} loss cases -> {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
