"""Adapter from the optional `reasoning-gym` package to the task interface: `get_task('gym:<name>')`.

reasoning-gym generates procedural datasets from a seed (no downloads) and
scores answers itself; its `score_answer` is the verifier here (1.0 = correct).
It is imported lazily so r1jax runs without it. Difficulty is the dataset's own
config: pass keyword arguments to `get_task('gym:name', **config)`; the
integer `difficulty` knob of the built-in tasks has no meaning here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from r1jax.data.tasks.base import Example, as_random, check_error_rate

_INSTALL_HINT = "reasoning-gym is not installed: `pip install reasoning-gym` (or `pip install r1jax[gym]`)"


def _import_gym():
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return reasoning_gym


def _jsonable(x: Any) -> Any:
    """Round-trip through JSON so `meta` survives JSONL (tuples become lists, odd objects strings)."""
    return json.loads(json.dumps(x, default=str))


class GymTask:
    """One reasoning-gym dataset as a task; `name` is 'gym:<dataset name>'."""

    def __init__(self, dataset: str, **config: Any):
        gym = _import_gym()
        if dataset not in gym.factory.DATASETS:
            known = ", ".join(sorted(gym.factory.DATASETS)[:20])
            raise ValueError(f"gym:{dataset}: unknown reasoning-gym dataset; known include {known}, ...")
        self.dataset, self.config, self.name = dataset, config, f"gym:{dataset}"

    @functools.cached_property
    def _scorer(self):
        # score_answer reads only the entry; a one-item dataset with the same config provides the method.
        return _import_gym().create_dataset(self.dataset, size=1, seed=0, **self.config)

    def generate(self, n: int, *, seed: int, difficulty: int | None = None) -> list[Example]:
        if difficulty is not None:
            raise ValueError(
                f"{self.name}: difficulty={difficulty} is not supported; pass the dataset's own config to "
                f"get_task({self.name!r}, **config)"
            )
        if n == 0:
            return []
        ds = _import_gym().create_dataset(self.dataset, size=n, seed=seed, **self.config)
        out = []
        for i in range(n):
            entry = ds[i]
            out.append(
                Example(
                    id=f"gym-{self.dataset}-{seed}-{i}",
                    question=str(entry["question"]),
                    answer=str(entry["answer"]),
                    # reasoning-gym gives no worked solutions; the gold answer stands in.
                    solution=f"The answer is {entry['answer']}.",
                    task=self.name,
                    meta={"entry": _jsonable(entry)},
                )
            )
        return out

    def score(self, predicted_answer: str | None, example_or_gold: Example | Mapping | str) -> float:
        """reasoning-gym's own score in [0, 1] (some datasets give partial credit)."""
        if predicted_answer is None:
            return 0.0
        if isinstance(example_or_gold, Example):
            entry = example_or_gold.meta["entry"]
        elif isinstance(example_or_gold, Mapping) and "entry" in (example_or_gold.get("meta") or {}):
            entry = example_or_gold["meta"]["entry"]
        elif isinstance(example_or_gold, Mapping):
            entry = {"question": example_or_gold.get("question", ""), "answer": example_or_gold["answer"]}
        else:
            entry = {"question": "", "answer": str(example_or_gold)}
        entry = {**entry, "metadata": entry.get("metadata") or {}}
        return float(self._scorer.score_answer(str(predicted_answer), entry))

    def verify(self, predicted_answer: str | None, example_or_gold: Example | Mapping | str) -> bool:
        return self.score(predicted_answer, example_or_gold) >= 1.0

    def worked_solution(self, example: Example) -> str:
        return example.solution

    def noisy_solution(self, example: Example, rng: Any, error_rate: float) -> tuple[str, str]:
        """No worked solutions to corrupt: a wrong answer is the gold answer with its text reversed."""
        check_error_rate(error_rate)
        if as_random(rng).random() >= error_rate:
            return example.solution, example.answer
        wrong = example.answer[::-1] if example.answer[::-1] != example.answer else example.answer + "0"
        return f"The answer is {wrong}.", wrong
