"""Test cases: the three forms a code problem's tests take (stdio, call, assert) and the forms data files give them in.

A `TestCase` is data only; `asserts.py` turns assert code into parent-side checks and `verdicts.py` runs them.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class TestCase:
    """One test, in one of three forms (exactly one of `expected_stdout`, `assert_code`, `call` is set):

    - stdio: the program reads `stdin`; its stdout must equal `expected_stdout` (compared in the parent, line
      by line, surrounding and trailing whitespace ignored) and it must exit 0;
    - call: `call(*args)` (a function the program defines) must return `expected` (plain data; compared in
      the parent with `==` on rebuilt builtin values);
    - assert: `assert_code` (asserts about the program's functions, e.g. HumanEval's `check`) must pass.
      `setup` is trusted code run before it (HumanEval's prompt: imports and the functions the checks use);
      `entry_point` is the function a `check(candidate)` is about.
    """

    __test__ = False  # not a pytest class

    stdin: str = ""
    expected_stdout: str | None = None
    assert_code: str | None = None
    call: str | None = None
    args: tuple = ()
    expected: Any = None
    setup: str = ""
    entry_point: str | None = None

    def __post_init__(self):
        forms = (self.expected_stdout is not None) + (self.assert_code is not None) + (self.call is not None)
        if forms != 1:
            raise ValueError("TestCase needs exactly one of expected_stdout, assert_code and call")
        object.__setattr__(self, "args", tuple(self.args))


def _literal_value(x: Any) -> Any:
    """Expected values in data files: Python literals given as text are parsed, JSON values kept."""
    if isinstance(x, str):
        try:
            return ast.literal_eval(x)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return x
    return x


def parse_tests(tests: Any) -> list[TestCase]:
    """Test cases from the forms data files use.

    - list of TestCase, or of dicts {'input'|'stdin': ..., 'output'|'stdout'|'expected_stdout': ...},
      {'assert'|'assert_code': ..., optional 'setup', 'entry_point'} or {'fn': name, 'args': [...],
      'expected': value};
    - dict {'inputs': [...], 'outputs': [...]} (APPS / TACO style), with 'fn_name' for call tests;
    - a string of assert statements (one test), or a JSON string of any of the above.
    """
    if tests is None:
        return []
    if isinstance(tests, str):
        try:
            decoded = json.loads(tests)
        except ValueError:
            return [TestCase(assert_code=tests)]
        return parse_tests(decoded) if not isinstance(decoded, str) else [TestCase(assert_code=decoded)]
    if isinstance(tests, Mapping) and "inputs" in tests:
        if tests.get("fn_name"):  # APPS call-based: each input is the argument list
            return [
                TestCase(
                    call=str(tests["fn_name"]),
                    args=tuple(i),
                    expected=o[0] if isinstance(o, list) and len(o) == 1 else o,
                )
                for i, o in zip(tests["inputs"], tests["outputs"])
            ]
        return [TestCase(stdin=str(i), expected_stdout=str(o)) for i, o in zip(tests["inputs"], tests["outputs"])]
    out = []
    for t in tests:
        if isinstance(t, TestCase):
            out.append(t)
        elif isinstance(t, str):
            out.append(TestCase(assert_code=t))
        elif isinstance(t, Mapping) and ("assert" in t or "assert_code" in t):
            out.append(
                TestCase(
                    assert_code=str(t.get("assert", t.get("assert_code"))),
                    setup=str(t.get("setup", "")),
                    entry_point=t.get("entry_point"),
                )
            )
        elif isinstance(t, Mapping) and "fn" in t:
            if "expected" not in t:
                raise ValueError(f"test case {t!r:.80}: a call test needs 'expected'")
            out.append(
                TestCase(call=str(t["fn"]), args=tuple(t.get("args", ())), expected=_literal_value(t["expected"]))
            )
        elif isinstance(t, Mapping):
            stdin = t.get("input", t.get("stdin", ""))
            expected = t.get("output", t.get("stdout", t.get("expected_stdout")))
            if expected is None:
                raise ValueError(f"test case {t!r:.80}: needs 'output' (or 'stdout'), 'assert' or 'fn'")
            out.append(TestCase(stdin=str(stdin), expected_stdout=str(expected)))
        else:
            raise ValueError(f"test case {t!r:.80}: expected a dict, a string or a TestCase")
    return out


def record_tests(ex: Any) -> Any:
    """A record's tests: its 'tests' field, else 'meta.tests' (a mapping, or an object with a `meta` dict)."""
    if isinstance(ex, Mapping):
        return ex["tests"] if "tests" in ex else (ex.get("meta") or {}).get("tests")
    return getattr(ex, "meta", {}).get("tests")
