"""Assert conversion: assert code (HumanEval / MBPP) parsed with `ast` into checks the parent decides.

Statements of the form `assert f(<literals>) == <literal>` (and !=, `is`, truthiness, `abs(f(x) - y) < tol`,
inside `check(candidate)` or not) become `Check`s: a call of a candidate function on literal arguments, and
a comparison with a value that stays in the parent. The candidate's process is sent only the call; the
comparison runs here, on builtin values rebuilt from plain data (`harness.decode`). Assert code with any
other statement has no such form (`convert_asserts` returns None) and `verdicts.py` runs it in a checking
process instead.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
from typing import Any

from r1jax.rewards.sandbox.cases import TestCase
from r1jax.rewards.sandbox.harness import EncodeError, encode


@dataclasses.dataclass(frozen=True)
class Check:
    """One parent-side comparison: the candidate's `fn(*args, **kwargs)` against a value only the parent holds.

    kind: 'eq' / 'ne' (== / != expected), 'is' (identity with None / True / False), 'truthy' / 'falsy',
    'close' (abs(got - expected) < tol, or <= when `inclusive`).
    """

    fn: str
    args: tuple
    kwargs: dict
    kind: str
    expected: Any = None
    tol: float = 0.0
    inclusive: bool = False

    def passes(self, got: Any) -> bool:
        # `got` and `expected` are builtin values rebuilt in this process, so `==` runs no candidate code.
        try:
            if self.kind == "eq":
                return bool(got == self.expected)
            if self.kind == "ne":
                return bool(got != self.expected)
            if self.kind == "is":
                return got is self.expected
            if self.kind == "truthy":
                return bool(got)
            if self.kind == "falsy":
                return not got
            diff = abs(got - self.expected)
            return bool(diff <= self.tol if self.inclusive else diff < self.tol)
        except (TypeError, ValueError, OverflowError):
            return False


_BUILTIN_NAMES = frozenset(dir(builtins))


def _literal(node: ast.AST) -> Any:
    """`ast.literal_eval` of a node whose value can also be sent to the sandbox (raises ValueError otherwise)."""
    value = ast.literal_eval(node)
    try:
        encode(value)
    except EncodeError as e:
        raise ValueError(str(e)) from None
    return value


def _call_of(node: ast.AST, resolve) -> tuple[str, tuple, dict] | None:
    """(function, args, kwargs) if `node` is a call of a candidate function on literal arguments."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return None
    fn = resolve(node.func.id)
    if fn is None or any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        return None
    try:
        return fn, tuple(_literal(a) for a in node.args), {k.arg: _literal(k.value) for k in node.keywords}
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _check_of(test: ast.AST, resolve) -> Check | None:
    """The parent-side form of one assert's test expression, or None if it has none."""
    if (call := _call_of(test, resolve)) is not None:
        return Check(*call, "truthy")
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        if (call := _call_of(test.operand, resolve)) is not None:
            return Check(*call, "falsy")
        return None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    op, left, right = test.ops[0], test.left, test.comparators[0]
    try:
        if isinstance(op, (ast.Eq, ast.NotEq)):
            kind = "eq" if isinstance(op, ast.Eq) else "ne"
            if (call := _call_of(left, resolve)) is not None:
                return Check(*call, kind, ast.literal_eval(right))
            if (call := _call_of(right, resolve)) is not None:
                return Check(*call, kind, ast.literal_eval(left))
            return None
        if isinstance(op, ast.Is) and isinstance(right, ast.Constant) and right.value in (None, True, False):
            if (call := _call_of(left, resolve)) is not None:
                return Check(*call, "is", right.value)
            return None
        # abs(candidate(x) - y) < tol  (either order inside abs)
        if (
            isinstance(op, (ast.Lt, ast.LtE))
            and isinstance(left, ast.Call)
            and isinstance(left.func, ast.Name)
            and left.func.id == "abs"
            and len(left.args) == 1
            and not left.keywords
            and isinstance(left.args[0], ast.BinOp)
            and isinstance(left.args[0].op, ast.Sub)
        ):
            a, b = left.args[0].left, left.args[0].right
            call, other = (_call_of(a, resolve), b) if _call_of(a, resolve) else (_call_of(b, resolve), a)
            if call is None:
                return None
            tol = ast.literal_eval(right)
            return Check(*call, "close", ast.literal_eval(other), tol, isinstance(op, ast.LtE))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return None


def _ignorable(node: ast.stmt) -> bool:
    """Statements that cannot change a literal assert's outcome: imports, strings, `assert True`, pass."""
    if isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass)):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
        return True
    return isinstance(node, ast.Assert) and isinstance(node.test, ast.Constant) and bool(node.test.value)


def defined_names(tree: ast.Module) -> set[str]:
    """Names a module binds at top level (functions, classes, assigned names, imports)."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def convert_asserts(test: TestCase) -> list[Check] | None:
    """Assert code as parent-side comparisons, or None where some statement has no such form.

    Understood: top-level `assert f(<literals>) == <literal>` (also !=, `is None/True/False`, bare truthiness,
    `not`, `abs(f(...) - y) < tol`), and the same inside `def check(candidate): ...` followed by
    `check(name)`; imports, string constants, `assert True` and top-level assignments of literals (HumanEval's
    METADATA) are skipped. `f` must not be a builtin or a name the trusted `setup` defines.
    """
    try:
        tree = ast.parse(test.assert_code)
        trusted = defined_names(ast.parse(test.setup)) | _BUILTIN_NAMES
    except (SyntaxError, ValueError):
        return None
    check_fn, target, top = None, None, []
    for node in tree.body:
        if _ignorable(node):
            continue
        if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets):
            try:
                ast.literal_eval(node.value)
                continue
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return None
        if (
            isinstance(node, ast.FunctionDef)
            and check_fn is None
            and not node.decorator_list
            and len(node.args.args) == 1
            and not (node.args.vararg or node.args.kwarg or node.args.kwonlyargs or node.args.posonlyargs)
        ):
            check_fn = node
        elif (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and check_fn is not None
            and node.value.func.id == check_fn.name
            and len(node.value.args) == 1
            and isinstance(node.value.args[0], ast.Name)
            and not node.value.keywords
            and target is None
        ):
            target = node.value.args[0].id
        elif isinstance(node, ast.Assert):
            top.append(node)
        else:
            return None
    if check_fn is not None and target is None:
        target = test.entry_point
    if check_fn is not None and (target is None or target in trusted - {test.entry_point}):
        return None
    checks = []
    top_resolve = lambda name: None if name in trusted else name  # noqa: E731
    for node in top:
        if (c := _check_of(node.test, top_resolve)) is None:
            return None
        checks.append(c)
    if check_fn is not None:
        param = check_fn.args.args[0].arg
        inner_resolve = lambda name: target if name == param else None  # noqa: E731
        for node in check_fn.body:
            if _ignorable(node):
                continue
            if not isinstance(node, ast.Assert) or (c := _check_of(node.test, inner_resolve)) is None:
                return None
            checks.append(c)
    return checks or None
