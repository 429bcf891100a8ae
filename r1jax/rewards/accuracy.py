"""Accuracy reward (paper 2.2.2 "accuracy rewards"): is the final answer right?

Order of checks for one completion:
1. Built-in, HumanEval or reasoning-gym task records (`examples` with a 'task' field) use
   the task's own verifier (exact integer arithmetic, Countdown's expression checker, the
   code sandbox, ...). A reasoning-gym record is scored by the config it was generated with
   (its `meta.gym`), whatever config the task object was built with.
2. Normalised exact match, then exact numeric comparison when both sides are plain
   numbers ('1,234', '0.50', '3/4').
3. math-verify for LaTeX equivalence (fractions, radicals, sets, intervals, percentages).

math-verify's own timeout uses SIGALRM, which only works on the main thread, so it
is called with its timeouts disabled; the reward composition (`compose.py`) runs
this function in worker processes with a wall-clock timeout instead.

`gym_score_reward` is reasoning-gym's partial credit (`score_answer` in [0, 1]) as a reward of its own.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from r1jax.data import tasks as data_tasks
from r1jax.data.tasks import BUILTIN_TASKS, parse_number
from r1jax.rewards.extract import EXTRACTORS, extract_answer
from r1jax.rewards.humaneval import HumanEvalTask

_MATH_DELIMS = ("$", "\\(", "\\[", "\\boxed")


def _normalise(text: str) -> str:
    return text.strip().strip("$").strip().rstrip(".").replace(" ", "")


@functools.cache
def _math_verify():
    import math_verify

    # math-verify warns once that its timeout is off; we enforce timeouts ourselves.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


def _mv_parse(text: str):
    mv = _math_verify()
    wrapped = text if any(d in text for d in _MATH_DELIMS) else f"${text}$"
    return mv.parse(wrapped, parsing_timeout=None)


def math_equal(pred: str, gold: str) -> bool:
    """math-verify equivalence of two answer strings (timeouts disabled: call it where a timeout is enforced)."""
    gold_parsed, pred_parsed = _mv_parse(gold), _mv_parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(_math_verify().verify(gold_parsed, pred_parsed, timeout_seconds=None))


def check_answer(pred: str | None, gold: str, *, use_math_verify: bool = True) -> bool:
    """Is the extracted answer `pred` equal to `gold`? (exact / numeric / math-verify)."""
    if pred is None or not pred.strip():
        return False
    if _normalise(pred) == _normalise(gold):
        return True
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        return p == g
    return use_math_verify and math_equal(pred, gold)


def get_task(name: str, **kwargs: Any):
    """A task by name: the built-in and reasoning-gym tasks (r1jax.data.tasks.get_task), and 'humaneval', whose
    verifier is the code sandbox and so lives here, above the data layer."""
    if name == "humaneval":
        return HumanEvalTask(**kwargs)
    return data_tasks.get_task(name, **kwargs)


@functools.cache
def _task(name: str):
    return get_task(name)


def _task_name(example: Any) -> str | None:
    task = example.get("task") if isinstance(example, Mapping) else getattr(example, "task", None)
    if task in BUILTIN_TASKS or task == "humaneval" or (isinstance(task, str) and task.startswith("gym:")):
        return task
    return None


def accuracy_reward(
    completions: Sequence[str],
    answers: Sequence[str | None],
    *,
    examples: Sequence[Any] | None = None,
    extract: Sequence[str] = EXTRACTORS,
    prefix: str = "",
    use_math_verify: bool = True,
) -> list[float | None]:
    """1.0 if the completion's final answer is right, 0.0 if wrong or missing, None if there is no gold answer.

    completions: N texts (without the prompt). answers: N gold answers.
    examples: optional N records; those of a known task are checked by the task's verifier.
    extract: extraction methods in order ('answer_tag', 'boxed', 'last_number').
    prefix: text the prompt already ends with (e.g. '<think>'), prepended before extraction.
    """
    if len(completions) != len(answers):
        raise ValueError(f"len(completions)={len(completions)} != len(answers)={len(answers)}")
    if examples is not None and len(examples) != len(completions):
        raise ValueError(f"len(examples)={len(examples)} != len(completions)={len(completions)}")
    out: list[float | None] = []
    for i, (completion, gold) in enumerate(zip(completions, answers)):
        pred = extract_answer(prefix + completion, extract)
        task = _task_name(examples[i]) if examples is not None else None
        if task is not None:
            out.append(float(pred is not None and _task(task).verify(pred, examples[i])))
        elif gold is None or (isinstance(gold, float) and math.isnan(gold)) or not str(gold).strip():
            out.append(None)
        else:
            out.append(float(check_answer(pred, str(gold), use_math_verify=use_math_verify)))
    return out


def gym_score_reward(
    completions: Sequence[str],
    *,
    examples: Sequence[Any],
    extract: Sequence[str] = EXTRACTORS,
    prefix: str = "",
) -> list[float | None]:
    """reasoning-gym's own `score_answer` in [0, 1] (partial credit on the datasets that give it), scored by
    each record's own dataset config; None for records of other tasks."""
    if len(examples) != len(completions):
        raise ValueError(f"len(examples)={len(examples)} != len(completions)={len(completions)}")
    out: list[float | None] = []
    for completion, example in zip(completions, examples):
        task = _task_name(example)
        if task is None or not task.startswith("gym:"):
            out.append(None)
            continue
        out.append(_task(task).score(extract_answer(prefix + completion, extract), example))
    return out
