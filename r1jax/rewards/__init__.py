"""Rule-based rewards (accuracy, format, language consistency, overlong, code tests), a reward-model hook, and
their weighted composition with timeouts for the GRPO loop. See `compose.py` for how they are run.
"""

from r1jax.rewards.accuracy import accuracy_reward, check_answer, get_task, gym_score_reward, math_equal
from r1jax.rewards.compose import (
    REWARDS,
    RewardBatch,
    RewardFunction,
    RewardSpec,
    make_reward_fn,
    parse_reward_specs,
    resolve_reward,
)
from r1jax.rewards.extract import answer_tag, code_block, extract_answer, last_boxed, summary_text, think_text
from r1jax.rewards.formatting import format_ok, format_reward
from r1jax.rewards.language import language_consistency, language_consistency_reward, script_counts
from r1jax.rewards.length import overlong_penalty, overlong_reward
from r1jax.rewards.reward_model import reward_model_reward
from r1jax.rewards.sandbox import SandboxConfig, TestCase, code_reward, isolation_report, run_program, run_tests

__all__ = [
    "REWARDS",
    "RewardBatch",
    "RewardFunction",
    "RewardSpec",
    "SandboxConfig",
    "TestCase",
    "accuracy_reward",
    "answer_tag",
    "check_answer",
    "code_block",
    "code_reward",
    "extract_answer",
    "format_ok",
    "format_reward",
    "get_task",
    "gym_score_reward",
    "isolation_report",
    "language_consistency",
    "language_consistency_reward",
    "last_boxed",
    "make_reward_fn",
    "math_equal",
    "overlong_penalty",
    "overlong_reward",
    "parse_reward_specs",
    "resolve_reward",
    "reward_model_reward",
    "run_program",
    "run_tests",
    "script_counts",
    "summary_text",
    "think_text",
]
