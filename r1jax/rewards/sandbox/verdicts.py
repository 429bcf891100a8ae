"""Verdicts: pass / fail decided in this process, where the program under test cannot reach.

Nothing that decides a verdict (expected outputs, a pass marker, the comparison) is ever inside the process
that runs the candidate:

- stdin / stdout tests: the parent compares the captured stdout (whitespace-normalised) and the exit status.
- function-call tests ((input, expected output) pairs): the candidate's process (`harness.py`, role 'serve')
  gets only the inputs and returns its outputs as plain tagged JSON (builtin types only, exact types: an int
  subclass or an object with its own `__eq__` cannot be encoded, and that call fails); the parent rebuilds
  builtin values and compares them with expected values only it holds. The call tests of one problem share
  one process and its timeout.
- assert code: asserts that `asserts.convert_asserts` understands become such calls, compared here. Any other
  assert code runs in a second sandboxed process ('check') that holds the trusted setup and the asserts but no
  candidate code: its candidate functions are proxies that send arguments to the candidate's process over a
  pipe and decode plain data back. The verdict is that process's exit status, read by the parent.

Scoring: partial credit = fraction of tests passed. If the sandbox itself fails (the program never started),
the score is None (unscorable), never 0.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from r1jax.rewards.extract import code_block
from r1jax.rewards.sandbox.asserts import Check, convert_asserts, defined_names
from r1jax.rewards.sandbox.cases import TestCase, parse_tests, record_tests
from r1jax.rewards.sandbox.confinement import RunResult, SandboxConfig, finish, run_program, start
from r1jax.rewards.sandbox.harness import decode, encode

# The harness's source becomes the sandboxed program (`main.py` in the work dir); it imports nothing of r1jax.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py"), encoding="utf-8") as _f:
    HARNESS = _f.read()
FAILED = object()  # a call that raised, returned something that is not plain data, or never answered


def _same_output(got: str, expected: str) -> bool:
    norm = lambda s: [line.rstrip() for line in s.strip().splitlines()]  # noqa: E731
    return norm(got) == norm(expected)


def _harness_files(code: str | None, **cfg: Any) -> dict[str, str]:
    files = {"harness.json": json.dumps(cfg)}
    if code is not None:
        files["solution.py"] = code
    return files


def _request(fn: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict:
    return {"fn": fn, "args": encode(list(args)), "kwargs": encode(dict(kwargs))}


def call_outputs(
    code: str, calls: Sequence[tuple[str, tuple, dict]], config: SandboxConfig = SandboxConfig(), setup: str = ""
) -> tuple[list[Any], RunResult]:
    """Run the program once and call its functions on parent-chosen inputs: `calls` = [(name, args, kwargs)].

    Returns one entry per call (the returned value rebuilt from plain data, or `FAILED` where the call raised,
    returned something `encode` refuses, or never answered) and the run's result. Nothing expected enters the
    process; the candidate's stdout is ignored.
    """
    with tempfile.TemporaryFile() as req, tempfile.TemporaryFile() as rep:
        req.write("".join(json.dumps(_request(*c)) + "\n" for c in calls).encode())
        req.seek(0)
        files = _harness_files(
            code, role="serve", setup=setup, solution="solution.py", in_fd=req.fileno(), out_fd=rep.fileno()
        )
        launch = start(HARNESS, "", config, files=files, pass_fds=(req.fileno(), rep.fileno()))
        result = finish(launch, time.monotonic() + config.timeout_s)
        rep.seek(0)
        lines = rep.read(config.max_output_bytes + 1).splitlines()
    outputs = []
    for i in range(len(calls)):
        try:
            reply = json.loads(lines[i])
            outputs.append(decode(reply["ok"]))
        except (IndexError, ValueError, TypeError, KeyError, RecursionError):
            outputs.append(FAILED)
    return outputs, result


def _proxied_names(code: str, test: TestCase) -> dict[str, str]:
    """Names the checking process binds to the candidate: the entry point, and functions the program defines
    that the test mentions and the trusted setup does not define (the test keeps the setup's own functions)."""
    try:
        defined = defined_names(ast.parse(code))
        trusted = defined_names(ast.parse(test.setup))
        mentioned = {n.id for n in ast.walk(ast.parse(test.assert_code)) if isinstance(n, ast.Name)}
    except (SyntaxError, ValueError):
        defined, trusted, mentioned = set(), set(), set()
    names = {n: n for n in (defined & mentioned) - trusted}
    if test.entry_point is not None:
        names[test.entry_point] = test.entry_point
    return names


def run_checked(code: str, test: TestCase, config: SandboxConfig = SandboxConfig()) -> RunResult:
    """Run assert code that has no parent-side form in a checking process with no candidate code in it.

    Two sandboxed processes, joined by two pipes: the candidate's ('serve') only answers calls with plain
    data; the checker ('check') runs the trusted setup and the asserts, calling the candidate through
    proxies. The verdict is the checker's exit status, observed by the parent.
    """
    to_cand_r, to_cand_w = os.pipe()
    to_check_r, to_check_w = os.pipe()
    launches = []
    try:
        files = _harness_files(
            code, role="serve", setup=test.setup, solution="solution.py", in_fd=to_cand_r, out_fd=to_check_w
        )
        launches.append(start(HARNESS, "", config, files=files, pass_fds=(to_cand_r, to_check_w)))
        files = _harness_files(
            None,
            role="check",
            setup=test.setup,
            test=test.assert_code,
            proxies=_proxied_names(code, test),
            in_fd=to_check_r,
            out_fd=to_cand_w,
        )
        launches.append(start(HARNESS, test.stdin, config, files=files, pass_fds=(to_check_r, to_cand_w)))
    finally:
        for fd in (to_cand_r, to_cand_w, to_check_r, to_check_w):
            os.close(fd)  # the children hold their ends; the candidate sees EOF when the checker exits
    deadline = time.monotonic() + config.timeout_s
    checker = finish(launches[1], deadline)
    candidate = finish(launches[0], min(deadline, time.monotonic() + 0.5))
    return dataclasses.replace(checker, started=checker.started and candidate.started)


def _passed(r: RunResult) -> bool | None:
    return None if not r.started else (r.returncode == 0 and not r.timed_out)


def run_tests(code: str, tests: Sequence[TestCase], config: SandboxConfig = SandboxConfig()) -> float | None:
    """Fraction of `tests` passed; None if any run failed for infrastructure reasons or there are no tests.

    Verdicts are decided in this process, never inside the program's: stdio tests compare the captured stdout
    here; call tests and convertible asserts compare returned plain data here (all such tests of one setup
    share one run and its timeout); other asserts run in a checking process without the candidate's code.
    """
    if not tests:
        return None
    passed: dict[int, bool] = {}
    by_setup: dict[str, list[tuple[int, list[Check]]]] = {}
    for i, test in enumerate(tests):
        if test.call is not None:
            by_setup.setdefault(test.setup, []).append((i, [Check(test.call, test.args, {}, "eq", test.expected)]))
        elif test.assert_code is not None and (checks := convert_asserts(test)) is not None:
            by_setup.setdefault(test.setup, []).append((i, checks))
        elif test.assert_code is not None:
            ok = _passed(run_checked(code, test, config))
            if ok is None:
                return None
            passed[i] = ok
        else:
            r = run_program(code, test.stdin, config)
            if not r.started:
                return None
            passed[i] = r.returncode == 0 and not r.timed_out and _same_output(r.stdout, test.expected_stdout)
    for setup, group in by_setup.items():
        checks = [c for _, cs in group for c in cs]
        outputs, r = call_outputs(code, [(c.fn, c.args, c.kwargs) for c in checks], config, setup)
        if not r.started:
            return None
        verdicts = iter(out is not FAILED and c.passes(out) for c, out in zip(checks, outputs))
        for i, cs in group:
            passed[i] = all([next(verdicts) for _ in cs])
    return sum(passed.values()) / len(tests)


def run_test(code: str, test: TestCase, config: SandboxConfig = SandboxConfig()) -> bool | None:
    """True / False for one test; None if the sandbox failed to start the program."""
    score = run_tests(code, [test], config)
    return None if score is None else score == 1.0


def code_reward(
    completions: Sequence[str],
    *,
    examples: Sequence[Any],
    timeout_s: float = 2.0,
    memory_mb: int = 512,
    isolate: bool = True,
) -> list[float | None]:
    """Fraction of the example's tests that the completion's last ```python block passes.

    No code block -> 0.0. No tests in the record (its 'tests', or 'meta.tests'), or a sandbox failure -> None.
    """
    config = SandboxConfig(timeout_s=timeout_s, memory_mb=memory_mb, isolate=isolate)
    out: list[float | None] = []
    for completion, ex in zip(completions, examples, strict=True):
        tests = parse_tests(record_tests(ex))
        code = code_block(completion)
        if not tests:
            out.append(None)
        elif code is None:
            out.append(0.0)
        else:
            out.append(run_tests(code, tests, config))
    return out
