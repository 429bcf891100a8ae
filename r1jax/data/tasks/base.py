"""The `Example` record shared by the built-in tasks, and small helpers (number parsing, rng adapters).

Tasks are generated procedurally from a seed, so the same seed gives the same
data on every machine and nothing is downloaded. Everything in an Example is
plain Python (str / int / list / dict) so it survives JSONL and grain.

Splits are by content, not by seed (r1jax.data.provenance): `generate(n, seed=..., split='train')` returns the
first n problems of the seeded stream whose canonical key (`split_key`) hashes into that split, so a problem is
in the same split whichever seed or stage draws it. `split=None` is the whole problem space, for tools and tests
that look at the task itself; every training and evaluation caller names a split.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Protocol

from r1jax.data import provenance


@dataclasses.dataclass(frozen=True)
class Example:
    """One task instance.

    id:       unique and stable, '<task>-<seed>-<index>'.
    question: the problem statement shown to the model (no template around it).
    answer:   the gold final answer, as text.
    solution: a readable worked solution, step by step, without answer tags; its last
              step reaches the answer.
    task:     the task name that `r1jax.data.tasks.get_task` resolves ('arithmetic', ...).
    meta:     task-specific fields needed to verify or re-derive the solution (JSON-serialisable).
    """

    id: str
    question: str
    answer: str
    solution: str
    task: str
    meta: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Example:
        return cls(
            id=str(d["id"]),
            question=str(d["question"]),
            answer=str(d["answer"]),
            solution=str(d.get("solution", "")),
            task=str(d.get("task", "")),
            meta=dict(d.get("meta") or {}),
        )


class Task(Protocol):
    """What every task provides (built-in or adapted)."""

    name: str

    def generate(
        self, n: int, *, seed: int, difficulty: int | None = None, split: str | None = None
    ) -> list[Example]: ...

    def split_key(self, example: Example) -> str: ...

    def verify(self, predicted_answer: str, example_or_gold: Example | Mapping | str) -> bool: ...

    def worked_solution(self, example: Example) -> str: ...

    def noisy_solution(self, example: Example, rng: Any, error_rate: float) -> tuple[str, str]: ...


# ----------------------------------------------------------------------------- numbers

_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_FRACTION_RE = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")


def parse_number(text: str | None) -> Fraction | None:
    """'1,234' / '-7' / '0.50' / '3/4' / '$12$' -> exact Fraction; anything else -> None."""
    if text is None:
        return None
    s = str(text).strip().strip("$").strip().rstrip(".").replace(",", "").replace(" ", "")
    if _NUMBER_RE.match(s):
        return Fraction(s)
    m = _FRACTION_RE.match(s)
    if m and int(m.group(2)) != 0:
        return Fraction(int(m.group(1)), int(m.group(2)))
    return None


def gold_of(example_or_gold: Example | Mapping | str) -> str:
    """The gold answer text of an Example, a record dict {'answer': ...} or a bare string."""
    if isinstance(example_or_gold, Example):
        return example_or_gold.answer
    if isinstance(example_or_gold, Mapping):
        return str(example_or_gold["answer"])
    return str(example_or_gold)


# ----------------------------------------------------------------------------- rng


def as_random(rng: Any) -> random.Random:
    """Accept `random.Random`, a numpy Generator or an int seed; return a `random.Random`.

    A numpy Generator is consumed once (one draw) to seed the Random, so callers that pass
    the same Generator state get the same noise.
    """
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, int):
        return random.Random(rng)
    if hasattr(rng, "integers"):
        return random.Random(int(rng.integers(0, 2**63 - 1)))
    raise TypeError(f"rng={rng!r}: expected random.Random, numpy.random.Generator or int")


def check_generate_args(
    task: str, n: int, seed: int, difficulty: int, max_difficulty: int, min_difficulty: int = 1
) -> None:
    if n < 0:
        raise ValueError(f"{task}.generate: n={n} must be >= 0")
    if not isinstance(seed, int):
        raise ValueError(f"{task}.generate: seed={seed!r} must be an int")
    if not min_difficulty <= difficulty <= max_difficulty:
        raise ValueError(
            f"{task}.generate: difficulty={difficulty} must be in [{min_difficulty}, {max_difficulty}]"
        )


def check_error_rate(error_rate: float) -> None:
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate={error_rate} must be in [0, 1]")


# ----------------------------------------------------------------------------- content splits


def split_key(example: Example) -> str:
    """The default canonical key of a problem: its normalised question text (tasks may refine it)."""
    return provenance.normalise_question(example.question)


def generate_split(task: Task, n: int, *, seed: int, difficulty: int | None, split: str) -> list[Example]:
    """The first n examples of `task.generate(m, seed=seed)` (the whole problem space) that fall in `split`.

    Deterministic: m starts at about n / fraction(split) with a margin and doubles until n are found, and the
    answer is a function of (task, n, seed, difficulty, split) only. Ids are those of the unsplit stream, so
    they are unique within a split and never shared between splits of one seed. Raises ValueError when the
    split of a small problem space cannot hold n examples after a generous search.
    """
    provenance.check_split(split, f"{task.name}.generate: split")
    if n == 0:
        return []
    m = int(n / provenance.SPLIT_FRACTIONS[split] * 1.2) + 32
    limit = 64 * m
    while True:
        pool = task.generate(m, seed=seed, difficulty=difficulty)
        out = [e for e in pool if provenance.split_of(task.split_key(e)) == split]
        if len(out) >= n:
            return out[:n]
        if m >= limit:
            raise ValueError(
                f"{task.name}.generate: {n} examples of split {split!r} asked for; {len(out)} found in the first "
                f"{m} of seed {seed} (difficulty {difficulty})"
            )
        m *= 2
