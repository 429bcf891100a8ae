"""Rewards from the `rewards` config section, and routing by prompt kind for all-scenario RL (paper 2.3.4):
reasoning prompts get the rule rewards, general prompts (record task == 'general') the reward model's scores.
"""

from __future__ import annotations

import numpy as np

from r1jax.data import preferences
from r1jax.rewards.compose import RewardBatch, RewardSpec, make_reward_fn
from r1jax.rewards.reward_model import RewardModelScorer


def make_rewards(rc, response_prefix: str, max_new_tokens: int):
    """The composed, timeout-guarded reward function from the `rewards` config section (routed by prompt kind
    when `general_weights` is set)."""
    kwargs = {
        "accuracy": {"extract": tuple(rc.answer_extract), "prefix": response_prefix},
        "format": {"mode": rc.format_mode, "prefix": response_prefix},
        "language": {"language": rc.language, "prefix": response_prefix},
        "overlong": {"max_length": max_new_tokens, "buffer": rc.overlong_buffer},
    }
    specs = [
        RewardSpec(name, weight=float(w), timeout_s=rc.timeout_s, kwargs=kwargs.get(name, {}))
        for name, w in rc.weights.items()
    ]
    reasoning = make_reward_fn(specs, num_processes=rc.num_processes)
    if not rc.general_weights:
        return reasoning
    scorer = RewardModelScorer(rc.reward_model)
    general = make_reward_fn(
        [
            RewardSpec(
                "reward_model",
                weight=float(w),
                timeout_s=rc.reward_model_timeout_s,
                key=name,
                kwargs={"scorer": scorer, "summary_only": name == "helpfulness"},
            )
            for name, w in rc.general_weights.items()
        ]
    )
    return RoutedRewards(reasoning, general)


class RoutedRewards:
    """Rule rewards for reasoning prompts, reward-model rewards for general ones (record task == 'general').

    Same call as a RewardFunction. Each prompt's G samples share its route, so group advantages compare like with
    like. Stats are those of each route, prefixed: reward/reasoning/..., reward/general/...
    """

    def __init__(self, reasoning, general):
        self.reasoning, self.general = reasoning, general

    def close(self) -> None:
        self.reasoning.close()
        self.general.close()

    def __call__(self, prompts, completions, examples, *, lengths=None):
        n = len(completions)
        is_general = np.array([e.get("task") == preferences.GENERAL_TASK for e in examples], bool)
        rewards, valid, per, stats = np.zeros((n,), np.float32), np.ones((n,), bool), {}, {}
        for route, fn, sel in (("reasoning", self.reasoning, ~is_general), ("general", self.general, is_general)):
            idx = np.flatnonzero(sel)
            stats[f"reward/{route}/fraction"] = len(idx) / max(n, 1)
            if not len(idx):
                continue
            out = fn(
                [prompts[i] for i in idx],
                [completions[i] for i in idx],
                [examples[i] for i in idx],
                lengths=None if lengths is None else [lengths[i] for i in idx],
            )
            rewards[idx], valid[idx] = out.rewards, out.valid
            for k, v in out.per_reward.items():
                per.setdefault(k, np.full((n,), np.nan, np.float32))[idx] = v
            stats.update(
                {
                    k.replace("reward/", f"reward/{route}/", 1).replace("perf/", f"perf/{route}_", 1): v
                    for k, v in out.stats.items()
                }
            )
        stats["reward/valid_frac"] = float(valid.mean()) if n else 1.0
        return RewardBatch(rewards, per, stats, valid)
