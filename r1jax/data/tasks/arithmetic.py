"""Multi-digit arithmetic with column-by-column worked solutions (the built-in default task).

The default difficulty (1) is two- and three-digit addition, whose worked
solution is a short, perfectly regular list of column steps, learnable by a
~1-5M parameter model in minutes on a CPU:

    question: What is 347+85?
    solution: 7+5=12, write 2, carry 1. 4+8+1=13, write 3, carry 1. 3+0+1=4, write 4. So 347+85=432.
    answer:   432

difficulty | operations | operand digits
---------- | ---------- | ---------------------------------------------------
0          | +          | 2 (the laptop-CPU demo: learnable by a ~1M model in minutes)
1          | +          | 2-3
2          | + -        | 2-3 (a >= b, results are never negative)
3          | + - *      | 3-4 for + -; 2-3 digits times 1 digit for *
4          | + - *      | 4-5 for + -; 2-3 digits times 2 digits
5          | + - *      | 5-6 for + -; 3-4 digits times 2 digits
6          | +          | 3 (fixed width: one-step answers are hard for a ~1M model, column solutions less so)

Multi-digit multipliers write one partial product per step (no carries inside
a partial product) and then add them up.

Besides the worked solution, three other solution styles feed the stage-0 corpus
(`r1jax.data.corpus.pretraining_records`): `direct_solution` states the result in one
step ("347+85=432."), wrong at a given rate, the way a small model's guess is;
`noisy_solution` is a worked solution that may hold a slip; `rechecked_solution` holds a
slip that a "Wait, let me re-check:" step catches at once, redoing the column right and
carrying on from it, so its final answer is always right. On a base that has learned
the column steps, reinforcement learning can then raise accuracy by moving the policy from
direct answers to worked and re-checked ones (longer output, more re-checks), not only by
adding the answer tags.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from r1jax.data import provenance
from r1jax.data.tasks.base import (
    Example,
    as_random,
    check_error_rate,
    check_generate_args,
    generate_split,
    gold_of,
    parse_number,
)

MAX_DIFFICULTY = 6
MIN_DIFFICULTY = 0
_OPS = {0: "+", 1: "+", 2: "+-", 3: "+-*", 4: "+-*", 5: "+-*", 6: "+"}
_ADD_DIGITS = {0: (2, 2), 1: (2, 3), 2: (2, 3), 3: (3, 4), 4: (4, 5), 5: (5, 6), 6: (3, 3)}
_MUL_DIGITS = {3: ((2, 3), (1, 1)), 4: ((2, 3), (2, 2)), 5: ((3, 4), (2, 2))}


def _rand_int(rng: random.Random, digits: tuple[int, int]) -> int:
    n = rng.randint(*digits)
    return rng.randint(10 ** (n - 1), 10**n - 1)


def _digits_lsb(x: int, width: int) -> list[int]:
    return [(x // 10**i) % 10 for i in range(width)]


# ----------------------------------------------------------------------------- column algorithms
# Each returns (steps, result). `error` = (step index, delta) injects one arithmetic slip: the
# slipped value is written down and the rest of the computation carries on from it, so the
# final result is consistent with the mistake, as a careless student's would be.


def _add_steps(a: int, b: int, error: tuple[int, int] | None = None) -> tuple[list[str], int]:
    width = max(len(str(a)), len(str(b)))
    da, db = _digits_lsb(a, width), _digits_lsb(b, width)
    steps, carry, result = [], 0, 0
    for i in range(width):
        s = da[i] + db[i] + carry
        if error is not None and error[0] == i:
            s = max(0, s + error[1])
        lhs = f"{da[i]}+{db[i]}" + (f"+{carry}" if carry else "")
        step = f"{lhs}={s}, write {s % 10}"
        carry = s // 10
        steps.append(step + (f", carry {carry}." if carry else "."))
        result += (s % 10) * 10**i
    if carry:
        steps.append(f"write {carry}.")
        result += carry * 10**width
    return steps, result


def _sub_steps(a: int, b: int, error: tuple[int, int] | None = None) -> tuple[list[str], int]:
    width = len(str(a))
    da, db = _digits_lsb(a, width), _digits_lsb(b, width)
    steps, borrow, result = [], 0, 0
    for i in range(width):
        need = da[i] - db[i] - borrow < 0
        top = da[i] + 10 * need
        v = top - db[i] - borrow
        if error is not None and error[0] == i:
            v = min(9, max(0, v + error[1]))
        lhs = f"{top}-{db[i]}" + ("-1" if borrow else "")
        steps.append(f"{lhs}={v}, write {v}" + (", borrow 1." if need else "."))
        result += v * 10**i
        borrow = int(need)
    return steps, result


def _mul1_steps(a: int, m: int, error: tuple[int, int] | None = None) -> tuple[list[str], int]:
    width = len(str(a))
    da = _digits_lsb(a, width)
    steps, carry, result = [], 0, 0
    for i in range(width):
        s = da[i] * m + carry
        if error is not None and error[0] == i:
            s = max(0, s + error[1])
        lhs = f"{da[i]}*{m}" + (f"+{carry}" if carry else "")
        step = f"{lhs}={s}, write {s % 10}"
        carry = s // 10
        steps.append(step + (f", carry {carry}." if carry else "."))
        result += (s % 10) * 10**i
    if carry:
        steps.append(f"write {carry}.")
        result += carry * 10**width
    return steps, result


def _mul_steps(a: int, b: int, error: tuple[int, int] | None = None) -> tuple[list[str], int]:
    if b < 10:
        return _mul1_steps(a, b, error)
    steps, partials = [], []
    for j, m in enumerate(_digits_lsb(b, len(str(b)))):
        p = a * m
        if error is not None and error[0] == j:
            p = max(0, p + error[1] * (10 if p >= 10 else 1))  # slip in the tens digit
        partials.append(p * 10**j)
        steps.append(f"{a}*{m}={p}" + (f", shifted {p * 10**j}." if j else "."))
    total = sum(partials)
    steps.append("+".join(str(p) for p in partials) + f"={total}.")
    return steps, total


_STEPS = {"+": _add_steps, "-": _sub_steps, "*": _mul_steps}
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _render(a: int, op: str, b: int, steps: list[str], result: int) -> str:
    return " ".join(steps) + f" So {a}{op}{b}={result}."


class ArithmeticTask:
    """Column arithmetic; see the module docstring for the difficulty table."""

    name = "arithmetic"
    default_difficulty = 1
    max_difficulty = MAX_DIFFICULTY

    def generate(
        self, n: int, *, seed: int, difficulty: int | None = None, split: str | None = None
    ) -> list[Example]:
        """n problems from the seeded stream; with `split`, only those of that content split (by `split_key`)."""
        if split is not None:
            return generate_split(self, n, seed=seed, difficulty=difficulty, split=split)
        d = self.default_difficulty if difficulty is None else difficulty
        check_generate_args(self.name, n, seed, d, MAX_DIFFICULTY, MIN_DIFFICULTY)
        # The difficulty goes into the rng seed too: the same seed at two difficulties gives unrelated data.
        rng = random.Random(f"{self.name}/{seed}/{d}")
        out = []
        for i in range(n):
            op = rng.choice(_OPS[d])
            if op == "*":
                da, db = _MUL_DIGITS[d]
                a, b = _rand_int(rng, da), _rand_int(rng, db) if db[0] > 1 else rng.randint(2, 9)
            else:
                a, b = _rand_int(rng, _ADD_DIGITS[d]), _rand_int(rng, _ADD_DIGITS[d])
                if op == "-" and b > a:
                    a, b = b, a
            meta = {"a": a, "b": b, "op": op, "difficulty": d}
            out.append(
                Example(
                    id=f"arith-{seed}-{i}" if d == 1 else f"arith{d}-{seed}-{i}",
                    question=f"What is {a}{op}{b}?",
                    answer=str(_APPLY[op](a, b)),
                    solution=_render(a, op, b, *_STEPS[op](a, b)),
                    task=self.name,
                    meta=meta,
                )
            )
        return out

    def split_key(self, example: Example) -> str:
        """The canonical problem: a+b and b+a (a*b and b*a) are one problem, so they always share a split."""
        a, b, op = example.meta["a"], example.meta["b"], example.meta["op"]
        if op in "+*":
            a, b = min(a, b), max(a, b)
        return provenance.normalise_question(f"What is {a}{op}{b}?")

    def verify(self, predicted_answer: str | None, example_or_gold: Example | Mapping | str) -> bool:
        pred, gold = parse_number(predicted_answer), parse_number(gold_of(example_or_gold))
        return pred is not None and gold is not None and pred == gold

    def worked_solution(self, example: Example) -> str:
        a, b, op = example.meta["a"], example.meta["b"], example.meta["op"]
        return _render(a, op, b, *_STEPS[op](a, b))

    def noisy_solution(self, example: Example, rng: Any, error_rate: float) -> tuple[str, str]:
        """(solution, answer); with probability `error_rate` it holds one mistake.

        Two kinds of mistake, equally likely: a slip in one column (a digit sum off by
        one, the rest carried on consistently, so the final answer is wrong too), or
        correct steps followed by a miscopied final answer.
        """
        check_error_rate(error_rate)
        rng = as_random(rng)
        a, b, op = example.meta["a"], example.meta["b"], example.meta["op"]
        correct = _APPLY[op](a, b)
        if rng.random() >= error_rate:
            return _render(a, op, b, *_STEPS[op](a, b)), str(correct)
        if rng.random() < 0.5:
            n_steps = len(str(a)) if op != "*" or b < 10 else len(str(b))
            for _ in range(10):  # a slip can be absorbed (e.g. clipped at 0); retry until it shows
                error = (rng.randrange(n_steps), rng.choice((-1, 1)))
                steps, result = _STEPS[op](a, b, error)
                if result != correct:
                    return _render(a, op, b, steps, result), str(result)
        steps, _ = _STEPS[op](a, b)
        wrong = correct + rng.choice((-10, -1, 1, 10))
        return _render(a, op, b, steps, wrong), str(wrong)

    def direct_solution(self, example: Example, rng: Any, error_rate: float) -> tuple[str, str]:
        """(solution, answer) in one step, "347+85=432.", the short answer a model gives without working;
        with probability `error_rate` one digit of the result is off by one (the answer is then wrong)."""
        check_error_rate(error_rate)
        rng = as_random(rng)
        a, b, op = example.meta["a"], example.meta["b"], example.meta["op"]
        result = str(_APPLY[op](a, b))
        if rng.random() < error_rate:
            k = rng.randrange(len(result))
            d = int(result[k])
            # Off by one in digit k, never a leading zero.
            choices = [x for x in (d - 1, d + 1) if 0 <= x <= 9 and (x or k or len(result) == 1)]
            result = result[:k] + str(rng.choice(choices)) + result[k + 1 :]
        return f"{a}{op}{b}={result}.", result

    def checked_direct_solution(self, example: Example, rng: Any, error_rate: float) -> tuple[str, str]:
        """(solution, answer): a one-step answer (`direct_solution`, wrong with probability `error_rate`) that a
        re-check works out column by column, the worked result being the answer (always right):

            347+85=431. Wait, let me re-check: 7+5=12, write 2, carry 1. 4+8+1=13, write 3, carry 1. 3+0+1=4,
            write 4. So 347+85=432.

        The re-check follows a right guess as often as a wrong one, so its appearance tells nothing; what it buys
        is the worked answer in place of the guess, which is why RL on accuracy can raise how often it is used."""
        guess, _ = self.direct_solution(example, rng, error_rate)
        return f"{guess} Wait, let me re-check: {self.worked_solution(example)}", example.answer

    def rechecked_solution(self, example: Example, rng: Any) -> tuple[str, str]:
        """(solution, answer): a worked solution with a slip in one step that the next sentence catches,

            7+5=12, write 2, carry 1. 4+8+1=14, write 4, carry 1. Wait, let me re-check: 4+8+1=13, write 3,
            carry 1. 3+0+1=4, write 4. So 347+85=432.

        The slipped step is redone correctly and the rest follows from the fix, so the answer is always right."""
        rng = as_random(rng)
        a, b, op = example.meta["a"], example.meta["b"], example.meta["op"]
        steps, result = _STEPS[op](a, b)
        n_steps = len(str(a)) if op != "*" or b < 10 else len(str(b))
        for _ in range(20):  # a slip can be absorbed (e.g. clipped at 0); retry until the step shows it
            slipped, _ = _STEPS[op](a, b, (rng.randrange(n_steps), rng.choice((-1, 1))))
            diff = [i for i, (x, y) in enumerate(zip(slipped, steps)) if x != y]
            if diff:
                i = diff[0]
                shown = [*slipped[: i + 1], f"Wait, let me re-check: {steps[i]}", *steps[i + 1 :]]
                return _render(a, op, b, shown, result), str(result)
        return _render(a, op, b, steps, result), str(result)
