"""Adapter from the optional `reasoning-gym` package to the task interface: `get_task('gym:<name>')`.

reasoning-gym generates procedural datasets from a seed (no downloads) and
scores answers itself; its `score_answer` is the verifier here (1.0 = correct).
It is imported lazily so r1jax runs without it. Difficulty is the dataset's own
config: pass keyword arguments to `get_task('gym:name', **config)`; the
integer `difficulty` knob of the built-in tasks has no meaning here.

Records are right by construction: each Example's `meta` carries the dataset
name, the config it was generated with and the whole reasoning-gym entry, and
scoring rebuilds the scorer from that config (a task object built with another
config, or the default one as the accuracy reward builds it, scores the record
by the record's own rules). A bare gold string, as the Task protocol allows, is
scored by `score_answer` on an entry that holds only that answer when the
scorer accepts the gold answer that way; datasets whose scorer needs the
entry's metadata (or rejects its own gold without it) fall back to exact match
of whitespace-normalised text, so an equally right alternative answer is only
recognised when the record is passed.

Datasets whose items have no single gold answer (reasoning-gym gives
`answer=None`, e.g. propositional_logic, rush_hour) are scored by validity
through `score_answer`, but have no worked or wrong solutions to generate.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from r1jax.data.tasks.base import Example, as_random, check_error_rate, generate_split, split_key

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


@functools.cache
def _scorer(dataset: str, config_json: str):
    # score_answer reads the entry and the dataset's config; a one-item dataset with the same config provides both.
    return _import_gym().create_dataset(dataset, size=1, seed=0, **json.loads(config_json))


def _norm(text: str) -> str:
    return " ".join(str(text).split())


class GymTask:
    """One reasoning-gym dataset as a task; `name` is 'gym:<dataset name>'."""

    def __init__(self, dataset: str, **config: Any):
        gym = _import_gym()
        if dataset not in gym.factory.DATASETS:
            known = ", ".join(sorted(gym.factory.DATASETS)[:20])
            raise ValueError(f"gym:{dataset}: unknown reasoning-gym dataset; known include {known}, ...")
        self.dataset, self.name = dataset, f"gym:{dataset}"
        self._config = config  # as given, for generating
        self.config = _jsonable(config)  # as records carry it (and score by it)

    def _scorer_for(self, record_gym: Mapping | None):
        """The scorer of the record's own dataset and config (this task's when the record has none)."""
        dataset = self.dataset if record_gym is None else record_gym["dataset"]
        if dataset != self.dataset:
            raise ValueError(f"{self.name}: a record of gym:{dataset} cannot be scored here")
        config = self.config if record_gym is None else record_gym["config"]
        return _scorer(dataset, json.dumps(config, sort_keys=True))

    def generate(
        self, n: int, *, seed: int, difficulty: int | None = None, split: str | None = None
    ) -> list[Example]:
        """n entries of the dataset at `seed`; with `split`, only those of that content split (normalised question)."""
        if split is not None:
            return generate_split(self, n, seed=seed, difficulty=difficulty, split=split)
        if difficulty is not None:
            raise ValueError(
                f"{self.name}: difficulty={difficulty} is not supported; pass the dataset's own config to "
                f"get_task({self.name!r}, **config)"
            )
        if n == 0:
            return []
        ds = _import_gym().create_dataset(self.dataset, size=n, seed=seed, **self._config)
        out = []
        for i in range(n):
            entry = ds[i]
            gold = entry["answer"]
            out.append(
                Example(
                    id=f"gym-{self.dataset}-{seed}-{i}",
                    question=str(entry["question"]),
                    answer="" if gold is None else str(gold),
                    # reasoning-gym gives no worked solutions; the gold answer stands in, where there is one.
                    solution="" if gold is None else f"The answer is {gold}.",
                    task=self.name,
                    meta={"entry": _jsonable(entry), "gym": {"dataset": self.dataset, "config": self.config}},
                )
            )
        return out

    def score(self, predicted_answer: str | None, example_or_gold: Example | Mapping | str) -> float:
        """reasoning-gym's own score in [0, 1] (some datasets give partial credit), by the record's config."""
        if predicted_answer is None:
            return 0.0
        meta = None
        if isinstance(example_or_gold, Example):
            meta = example_or_gold.meta
        elif isinstance(example_or_gold, Mapping):
            meta = example_or_gold.get("meta") or {}
        if meta and "entry" in meta:
            entry = {**meta["entry"], "metadata": meta["entry"].get("metadata") or {}}
            return float(self._scorer_for(meta.get("gym")).score_answer(str(predicted_answer), entry))
        if isinstance(example_or_gold, Mapping):
            gold, question = str(example_or_gold["answer"]), str(example_or_gold.get("question", ""))
        else:
            gold, question = str(example_or_gold), ""
        return self._score_bare(str(predicted_answer), gold, question)

    def _score_bare(self, predicted: str, gold: str, question: str) -> float:
        """Score against a gold answer alone (no metadata): see the module docstring."""
        scorer = self._scorer_for(None)
        entry = {"question": question, "answer": gold, "metadata": {}}
        try:
            if scorer.score_answer(gold, entry) >= 1.0:
                return float(scorer.score_answer(predicted, entry))
        except Exception:  # the scorer needs the entry's metadata: judge by the text instead
            pass
        return float(_norm(predicted) == _norm(gold))

    def split_key(self, example: Example) -> str:
        return split_key(example)

    def verify(self, predicted_answer: str | None, example_or_gold: Example | Mapping | str) -> bool:
        return self.score(predicted_answer, example_or_gold) >= 1.0

    def _gold(self, example: Example) -> str:
        if example.meta.get("entry", {}).get("answer", example.answer) is None or not example.solution:
            raise ValueError(
                f"{self.name}: item {example.id} has no single gold answer (reasoning-gym gives answer=None), so "
                "there is no worked solution to train on; use this dataset for RL (validity is scored) only"
            )
        return example.answer

    def worked_solution(self, example: Example) -> str:
        self._gold(example)
        return example.solution

    def noisy_solution(self, example: Example, rng: Any, error_rate: float) -> tuple[str, str]:
        """No worked solutions to corrupt: a wrong answer is an edit of the gold answer that the dataset's own
        verifier rejects (reversed text is still right for a palindromic answer, so each edit is checked)."""
        check_error_rate(error_rate)
        gold = self._gold(example)
        if as_random(rng).random() >= error_rate:
            return example.solution, gold
        for wrong in (gold[::-1], gold + "0", gold + "1", "1" + gold, f"not {gold}", "0", "none"):
            if wrong != gold and not self.verify(wrong, example):
                return f"The answer is {wrong}.", wrong
        raise ValueError(f"{self.name}: item {example.id}: found no edit of {gold!r} that the verifier rejects")
