"""Reward-model hook (paper 2.3.4, all-scenario RL): scores from a learned model, plugged in as a callable.

The model itself is trained elsewhere (`trainers/reward_model.py`); here it is
any `scorer(prompts, completions) -> list[float]`. For helpfulness the paper
scores only the final summary, so `summary_only=True` strips the <think> block
(the text after the last </think> is scored); harmlessness scores the whole
response. A NaN or infinite score marks that completion unscorable (None).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from r1jax.rewards.extract import summary_text

Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def reward_model_reward(
    completions: Sequence[str],
    *,
    prompts: Sequence[str],
    scorer: Scorer,
    summary_only: bool = False,
) -> list[float | None]:
    """The scorer's value per completion (None where it is not finite)."""
    if len(prompts) != len(completions):
        raise ValueError(f"len(prompts)={len(prompts)} != len(completions)={len(completions)}")
    texts = [summary_text(c) for c in completions] if summary_only else list(completions)
    scores = list(scorer(list(prompts), texts))
    if len(scores) != len(completions):
        raise ValueError(f"reward model scorer returned {len(scores)} scores for {len(completions)} completions")
    return [float(s) if s is not None and math.isfinite(float(s)) else None for s in scores]
