"""Built-in reasoning tasks, generated procedurally from a seed (nothing is downloaded).

    task = get_task("arithmetic")                  # or "countdown", "gym:basic_arithmetic"
    train = task.generate(1000, seed=0, split="train")   # list[Example]: only problems of the train split
    test = task.generate(128, seed=1, split="test")       # disjoint from train by content, whatever the seeds
    task.verify("432", train[0])                   # exact check of a predicted final answer
    text, answer = task.noisy_solution(train[0], rng, error_rate=0.3)   # for a mixed-quality corpus

Splits are by content (r1jax.data.provenance): each problem's canonical text (`task.split_key`) hashes into
train / validation / test (80 / 10 / 10), so no seed can put a test problem into training data.

`verify` accepts an Example, a record dict (as the prompt pipeline carries it:
'question', 'answer', optional 'meta') or a bare gold string.
"""

from __future__ import annotations

from typing import Any

from r1jax.data.tasks.arithmetic import ArithmeticTask
from r1jax.data.tasks.base import Example, Task, parse_number
from r1jax.data.tasks.countdown import CountdownTask, ExpressionError, evaluate

BUILTIN_TASKS = ("arithmetic", "countdown")


def tiny_difficulty(task: str) -> int:
    """The difficulty every tiny (CPU) preset uses, so that all stages train and evaluate on one distribution:
    2-digit addition for arithmetic (learnable by a 0.8M-parameter model in minutes), 1 otherwise."""
    return 0 if task == "arithmetic" else 1


def get_task(name: str, **kwargs: Any) -> Task:
    """'arithmetic' | 'countdown' | 'gym:<reasoning_gym dataset>' -> task; kwargs: its options. Tasks whose verifier
    runs code ('humaneval') live with the code reward: r1jax.rewards.get_task resolves them and these."""
    if name == "arithmetic":
        if kwargs:
            raise ValueError(f"get_task('arithmetic'): unexpected options {sorted(kwargs)}")
        return ArithmeticTask()
    if name == "countdown":
        return CountdownTask(**kwargs)
    if name.startswith("gym:"):
        from r1jax.data.tasks.gym import GymTask  # lazy: reasoning-gym is optional

        return GymTask(name.removeprefix("gym:"), **kwargs)
    raise ValueError(
        f"task={name!r}: expected one of {BUILTIN_TASKS}, 'gym:<reasoning_gym name>', or (through "
        "r1jax.rewards.get_task, whose verifier runs code) 'humaneval'"
    )


__all__ = [
    "BUILTIN_TASKS",
    "ArithmeticTask",
    "CountdownTask",
    "Example",
    "ExpressionError",
    "Task",
    "evaluate",
    "get_task",
    "parse_number",
    "tiny_difficulty",
]
