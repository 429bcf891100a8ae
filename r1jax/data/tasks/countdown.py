"""Countdown (the TinyZero task): reach a target with the given numbers and + - * /.

    question: Using the numbers [75, 3, 25], make 53 with + - * /, each number at most once.
    solution: 75-25=50. 50+3=53. So 75-25+3=53.
    answer:   75-25+3

Any expression that uses each given number at most once (all of them with
`require_all=True`, as in TinyZero) and evaluates exactly to the target is
correct, so the verifier parses and evaluates the prediction with a small
recursive-descent parser over exact fractions -- never `eval()`.

difficulty | numbers | range
---------- | ------- | -----
1          | 3       | 1-20
2          | 4       | 1-50
3          | 4       | 1-99 (TinyZero)
4          | 5       | 1-99
5          | 6       | 1-99
"""

from __future__ import annotations

import copy
import random
import re
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from r1jax.data.provenance import normalise_question
from r1jax.data.tasks.base import Example, as_random, check_error_rate, check_generate_args, generate_split

MAX_DIFFICULTY = 5
_SIZES = {1: (3, 20), 2: (4, 50), 3: (4, 99), 4: (5, 99), 5: (6, 99)}
_QUESTION_RE = re.compile(r"numbers \[([^\]]*)\], make (-?\d+)")
_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([-+*/()]))")


class ExpressionError(ValueError):
    """The text is not an arithmetic expression over integers with + - * / and parentheses."""


# ----------------------------------------------------------------------------- safe evaluation


def _tokenize(text: str) -> list[str]:
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-").strip()
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise ExpressionError(f"unexpected character {text[pos]!r} at {pos} in {text!r}")
        tokens.append(m.group(1) or m.group(2))
        pos = m.end()
    return tokens


def evaluate(text: str) -> tuple[Fraction, list[int]]:
    """Value (exact) and the integer literals used, of an expression with + - * / ( ).

    Grammar: expr := term (('+'|'-') term)*; term := atom (('*'|'/') atom)*;
    atom := INT | '(' expr ')'. No unary minus: Countdown numbers are given, not negated.
    Raises ExpressionError (bad syntax, division by zero, too long).
    """
    tokens = _tokenize(text)
    if not tokens or len(tokens) > 200:
        raise ExpressionError(f"expression has {len(tokens)} tokens: {text!r:.80}")
    used: list[int] = []
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom():
        tok = peek()
        if tok is None:
            raise ExpressionError(f"expression ends early: {text!r:.80}")
        if tok == "(":
            take()
            v = expr()
            if peek() != ")":
                raise ExpressionError(f"missing ')' in {text!r:.80}")
            take()
            return v
        if tok.isdigit():
            take()
            used.append(int(tok))
            return Fraction(int(tok))
        raise ExpressionError(f"unexpected token {tok!r} in {text!r:.80}")

    def term():
        v = atom()
        while peek() in ("*", "/"):
            op, rhs = take(), atom()
            if op == "/" and rhs == 0:
                raise ExpressionError(f"division by zero in {text!r:.80}")
            v = v * rhs if op == "*" else v / rhs
        return v

    def expr():
        v = term()
        while peek() in ("+", "-"):
            op, rhs = take(), term()
            v = v + rhs if op == "+" else v - rhs
        return v

    value = expr()
    if pos != len(tokens):
        raise ExpressionError(f"trailing tokens {tokens[pos:]} in {text!r:.80}")
    return value, used


# ----------------------------------------------------------------------------- expression trees
# A tree is an int (a given number) or [op, left, right]; JSON-serialisable so it fits in `meta`.

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _value(tree) -> Fraction:
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = _value(left), _value(right)
    if op == "/" and b == 0:
        raise ExpressionError("division by zero")
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


def _integral(tree) -> bool:
    """Every step of the tree gives an integer (a worked solution a student could write)."""
    try:
        return all(_value(_get(tree, p)).denominator == 1 for p in _internal_nodes(tree))
    except ExpressionError:
        return False


def _prec(tree) -> int:
    return 3 if isinstance(tree, int) else _PREC[tree[0]]


def to_text(tree) -> str:
    """Infix text with only the parentheses that precedence requires."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    ls, rs = to_text(left), to_text(right)
    if _prec(left) < _PREC[op]:
        ls = f"({ls})"
    # a-(b+c), a/(b*c): the right operand of - and / needs parentheses at equal precedence too.
    if _prec(right) < _PREC[op] or (op in "-/" and _prec(right) == _PREC[op]):
        rs = f"({rs})"
    return f"{ls}{op}{rs}"


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _steps(tree) -> list[str]:
    if isinstance(tree, int):
        return []
    op, left, right = tree
    return [*_steps(left), *_steps(right), f"{_fmt(_value(left))}{op}{_fmt(_value(right))}={_fmt(_value(tree))}."]


def _render(tree) -> str:
    return " ".join(_steps(tree)) + f" So {to_text(tree)}={_fmt(_value(tree))}."


def _internal_nodes(tree, path=()):
    if isinstance(tree, int):
        return []
    return [path, *_internal_nodes(tree[1], (*path, 1)), *_internal_nodes(tree[2], (*path, 2))]


def _leaves(tree, path=()):
    if isinstance(tree, int):
        return [path]
    return [*_leaves(tree[1], (*path, 1)), *_leaves(tree[2], (*path, 2))]


def _get(tree, path):
    for i in path:
        tree = tree[i]
    return tree


def _set(tree, path, value):
    _get(tree, path[:-1])[path[-1]] = value


# ----------------------------------------------------------------------------- the task


def _combine(rng: random.Random, a, b):
    """A random op on two subtrees whose result is a positive integer, or None."""
    va, vb = _value(a), _value(b)
    choices = [("+", a, b), ("*", a, b)]
    if va != vb:
        choices.append(("-", a, b) if va > vb else ("-", b, a))
    if vb > 1 and va % vb == 0:
        choices.append(("/", a, b))
    if va > 1 and vb % va == 0:
        choices.append(("/", b, a))
    op, x, y = rng.choice(choices)
    return [op, x, y]


def question_text(numbers: list[int], target: int) -> str:
    """The question for a Countdown instance (also used for TinyZero-format rows in r1jax.data.formats)."""
    return f"Using the numbers {numbers}, make {target} with + - * /, each number at most once."


def parse_question(question: str) -> tuple[list[int], int] | None:
    m = _QUESTION_RE.search(question)
    if m is None:
        return None
    return [int(x) for x in m.group(1).split(",") if x.strip()], int(m.group(2))


class CountdownTask:
    """Countdown; see the module docstring. `require_all=True` is TinyZero's rule (every number exactly once)."""

    name = "countdown"
    default_difficulty = 1
    max_difficulty = MAX_DIFFICULTY

    def __init__(self, require_all: bool = False, max_target: int = 1000):
        self.require_all = require_all
        self.max_target = max_target

    def generate(
        self, n: int, *, seed: int, difficulty: int | None = None, split: str | None = None
    ) -> list[Example]:
        """n instances from the seeded stream; with `split`, only those of that content split (by `split_key`)."""
        if split is not None:
            return generate_split(self, n, seed=seed, difficulty=difficulty, split=split)
        d = self.default_difficulty if difficulty is None else difficulty
        check_generate_args(self.name, n, seed, d, MAX_DIFFICULTY)
        rng = random.Random(f"{self.name}/{seed}/{d}")
        count, hi = _SIZES[d]
        out = []
        for i in range(n):
            while True:  # rejection: a positive integer target below max_target that isn't a given number
                numbers = [rng.randint(1, hi) for _ in range(count)]
                pool: list[Any] = list(numbers)
                rng.shuffle(pool)
                while len(pool) > 1:  # random pairs, so trees are not all left-deep chains
                    a = pool.pop(rng.randrange(len(pool)))
                    b = pool.pop(rng.randrange(len(pool)))
                    pool.append(_combine(rng, a, b))
                tree, target = pool[0], _value(pool[0])
                if target.denominator == 1 and 0 < target < self.max_target and int(target) not in numbers:
                    break
            target = int(target)
            out.append(
                Example(
                    id=f"countdown-{seed}-{i}" if d == 1 else f"countdown{d}-{seed}-{i}",
                    question=question_text(numbers, target),
                    answer=to_text(tree),
                    solution=_render(tree),
                    task=self.name,
                    meta={"numbers": numbers, "target": target, "tree": tree, "difficulty": d},
                )
            )
        return out

    def _numbers_target(self, example_or_gold: Example | Mapping | str) -> tuple[list[int], Fraction]:
        """Allowed numbers and target, from meta, from the question text, or (weakest) from a gold expression."""
        if isinstance(example_or_gold, Example):
            example_or_gold = example_or_gold.to_dict()
        if isinstance(example_or_gold, Mapping):
            meta = example_or_gold.get("meta") or {}
            if "numbers" in meta and "target" in meta:
                return list(meta["numbers"]), Fraction(meta["target"])
            parsed = parse_question(str(example_or_gold.get("question", "")))
            if parsed is not None:
                return parsed[0], Fraction(parsed[1])
            example_or_gold = str(example_or_gold["answer"])
        parsed = parse_question(example_or_gold)
        if parsed is not None:
            return parsed[0], Fraction(parsed[1])
        # A bare gold expression: the allowed numbers are the ones it uses, the target its value.
        value, used = evaluate(example_or_gold)
        return used, value

    def split_key(self, example: Example) -> str:
        """The canonical instance: the given numbers in sorted order and the target (their order is not the problem)."""
        return normalise_question(question_text(sorted(example.meta["numbers"]), example.meta["target"]))

    def verify(self, predicted_answer: str | None, example_or_gold: Example | Mapping | str) -> bool:
        """True iff the prediction is an expression over the given numbers (each at most once) equal to the target.

        A trailing '= <number>' is accepted if the number is the target.
        """
        if predicted_answer is None:
            return False
        numbers, target = self._numbers_target(example_or_gold)
        text = str(predicted_answer).strip().strip("$").strip()
        if text.count("=") > 1:
            return False
        if "=" in text:
            text, rhs = text.split("=")
            try:
                rhs_value, _ = evaluate(rhs)
            except ExpressionError:
                return False
            if rhs_value != target:
                return False
        try:
            value, used = evaluate(text)
        except ExpressionError:
            return False
        if Counter(used) - Counter(numbers):  # a number not given, or used more often than given
            return False
        meta = example_or_gold.get("meta") or {} if isinstance(example_or_gold, Mapping) else {}
        require_all = meta.get("require_all", self.require_all)  # a record may carry its set's rule (TinyZero's)
        if require_all and Counter(used) != Counter(numbers):
            return False
        return value == target

    def worked_solution(self, example: Example) -> str:
        return _render(example.meta["tree"])

    def noisy_solution(self, example: Example, rng: Any, error_rate: float) -> tuple[str, str]:
        """(solution, answer); with probability `error_rate` the answer misses the target.

        Mistakes: a wrong operation in one step (computed correctly, so the steps are
        consistent but end elsewhere), or a misread number (one given number off by one).
        """
        check_error_rate(error_rate)
        rng = as_random(rng)
        tree = example.meta["tree"]
        if rng.random() >= error_rate:
            return _render(tree), to_text(tree)
        for _ in range(20):
            bad = copy.deepcopy(tree)
            if rng.random() < 0.5:
                path = rng.choice(_internal_nodes(bad))
                node = _get(bad, path) if path else bad
                node[0] = rng.choice([op for op in "+-*" if op != node[0]])
            else:
                path = rng.choice(_leaves(bad))
                _set(bad, path, max(1, _get(bad, path) + rng.choice((-1, 1))))
            if _integral(bad) and not self.verify(to_text(bad), example):
                return _render(bad), to_text(bad)
        return _render(tree), str(example.meta["target"] + 1)  # every slip happened to still work
