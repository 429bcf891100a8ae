"""Code sandbox: limits hold (time, memory, processes, output, files, environment, network), correct programs
pass, and a sandbox that cannot start scores None rather than 0. Every test is bounded by ~1 s timeouts."""

import json
import math
import os
import socket
import time

import pytest

from r1jax.rewards import SandboxConfig, TestCase, code_reward, run_program, run_tests
from r1jax.rewards.sandbox import confinement, convert_asserts, parse_tests

FAST = SandboxConfig(timeout_s=1.0, memory_mb=256)


def _live_processes_mentioning(marker: str) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmd and state not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


REVERSE = "s = input()\nprint(s[::-1])\n"


def test_correct_program_passes_every_time():
    tests = [TestCase("abc\n", "cba"), TestCase("hello\n", "olleh\n"), TestCase("x\n", "x")]
    asserts = [TestCase(assert_code="assert f(2) == 4"), TestCase(assert_code="assert f(-3) == 9")]
    for _ in range(3):
        assert run_tests(REVERSE, tests, FAST) == 1.0
        assert run_tests("def f(x):\n    return x * x\n", asserts, FAST) == 1.0


def test_partial_credit_and_cheats():
    tests = [TestCase("abc\n", "cba"), TestCase("ab\n", "ab")]
    assert run_tests(REVERSE, tests, FAST) == 0.5
    asserts = [TestCase(assert_code="assert f(2) == 4"), TestCase(assert_code="assert f(3) == 9")]
    assert run_tests("def f(x):\n    return 4\n", asserts, FAST) == 0.5
    # Exiting before the asserts run does not count as passing.
    assert run_tests("import os\ndef f(x):\n    return 0\nos._exit(0)\n", asserts, FAST) == 0.0
    assert run_tests("raise SystemExit(0)\n", asserts, FAST) == 0.0
    assert run_tests("print('cba'", tests, FAST) == 0.0  # syntax error


def test_infinite_loop_is_killed_within_timeout():
    for code in ("while True:\n    pass\n", "import time\ntime.sleep(60)\n"):
        t0 = time.monotonic()
        r = run_program(code, config=FAST)
        assert time.monotonic() - t0 < FAST.timeout_s + 0.5
        assert r.started and r.timed_out and r.returncode != 0


def test_memory_limit_stops_8gb_allocation():
    t0 = time.monotonic()
    r = run_program("x = bytearray(8 * 2**30)\nprint('allocated', len(x))\n", config=FAST)
    assert r.started and r.returncode != 0 and "allocated" not in r.stdout
    assert "MemoryError" in r.stderr and not r.timed_out and time.monotonic() - t0 < FAST.timeout_s


def test_fork_bomb_leaves_no_survivors():
    code = (
        "import os\nprint(os.getcwd(), flush=True)\n"
        "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    t0 = time.monotonic()
    r = run_program(code, config=FAST)
    assert time.monotonic() - t0 < FAST.timeout_s + 1.5
    workdir = r.stdout.splitlines()[0]
    assert "r1jax-sandbox-" in workdir and not os.path.exists(workdir)
    assert _live_processes_mentioning(workdir) == []


def test_output_is_capped():
    config = SandboxConfig(timeout_s=1.0, memory_mb=256, max_output_bytes=1 << 16)
    code = "import sys\nblock = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(block)\n"  # 1 GB
    t0 = time.monotonic()
    r = run_program(code, config=config)
    assert time.monotonic() - t0 < config.timeout_s + 0.5
    assert r.started and r.output_truncated and len(r.stdout) <= config.max_output_bytes
    assert run_tests(code, [TestCase("", "x")], config) == 0.0


def test_cannot_write_outside_workdir(tmp_path):
    target = tmp_path / "escape.txt"
    code = f"open({str(target)!r}, 'w').write('x')\nprint('wrote')\n"
    r = run_program(code, config=FAST)
    assert r.started and "wrote" not in r.stdout and not target.exists()
    # Inside its own work dir it can write (and the dir is gone afterwards).
    r = run_program("open('scratch.txt', 'w').write('x')\nprint(open('scratch.txt').read())\n", config=FAST)
    assert r.stdout.strip() == "x"


def test_cannot_read_another_runs_files():
    # Completions of a batch run side by side: one program must not read what another wrote (its answer, or
    # the files the parent gave it). The writer is held running while the reader tries the file's exact path.
    writer = confinement.start("open('secret.txt', 'w').write('s3cr3t')\nimport time\ntime.sleep(30)\n", "", FAST)
    secret = os.path.join(writer.outer, "work", "secret.txt")
    try:
        deadline = time.monotonic() + 2 * FAST.timeout_s
        while time.monotonic() < deadline and not (os.path.exists(secret) and open(secret).read() == "s3cr3t"):
            time.sleep(0.01)
        assert open(secret).read() == "s3cr3t"  # it is there, on the host
        reader = f"try:\n    print(open({secret!r}).read())\nexcept OSError as e:\n    print('denied', e)\n"
        r = run_program(reader, config=FAST)
        assert r.started and "denied" in r.stdout and "s3cr3t" not in r.stdout
    finally:
        confinement.finish(writer, time.monotonic())
    assert not os.path.exists(writer.outer)


def test_cannot_read_parent_environment(monkeypatch):
    monkeypatch.setenv("R1JAX_SANDBOX_SECRET", "s3cr3t-value")
    code = (
        "import os\n"
        "print(dict(os.environ))\n"
        f"for pid in (os.getppid(), {os.getpid()}):\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as e:\n"
        "        print('denied', type(e).__name__)\n"
    )
    r = run_program(code, config=FAST)
    assert r.started and r.returncode == 0, r.stderr
    assert "s3cr3t" not in r.stdout and r.stdout.count("denied") == 2


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        code = (
            "import socket\ntry:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n    print('connected')\n"
            "except OSError as e:\n    print('refused', e)\n"
        )
        r = run_program(code, config=FAST)
        assert r.started and "refused" in r.stdout and "connected" not in r.stdout
    finally:
        server.close()


def test_infrastructure_failure_is_unscorable():
    broken = SandboxConfig(timeout_s=1.0, python="/nonexistent/python3")
    assert run_tests(REVERSE, [TestCase("a\n", "a")], broken) is None
    assert run_tests(REVERSE, [], FAST) is None


def test_code_reward_on_records():
    examples = [
        {"tests": [{"input": "abc\n", "output": "cba"}, {"input": "xy\n", "output": "yx"}]},
        {"tests": {"inputs": ["abc\n"], "outputs": ["abc"]}},
        {"tests": None},
        {"tests": "assert 1 == 1"},
    ]
    completion = f"<think>reverse it</think><answer>\n```python\n{REVERSE}```\n</answer>"
    got = code_reward([completion, completion, completion, "no code here"], examples=examples, timeout_s=1.0)
    assert got == [1.0, 0.0, None, 0.0]
    assert parse_tests('[{"stdin": "1", "stdout": "2"}]') == [TestCase("1", "2")]
    with pytest.raises(ValueError, match="exactly one"):
        TestCase("1")
    with pytest.raises(ValueError, match="exactly one"):
        TestCase(expected_stdout="1", call="f")


def test_plain_data_round_trip_and_refusals():
    from r1jax.rewards.sandbox.harness import EncodeError, decode, encode

    values = [None, True, 0, -7, 2**80, 1.5, float("inf"), "x", [1, (2, 3)], {"a": {1, 2}}, {(1, 2): frozenset({3})}]
    for v in values:
        back = decode(json.loads(json.dumps(encode(v))))
        assert back == v and type(back) is type(v)
    assert math.isnan(decode(encode(float("nan"))))

    class Int(int):
        pass

    for bad in (Int(3), object(), b"bytes", [1, object()]):
        with pytest.raises(EncodeError):
            encode(bad)
    for forged in ({"__eq__": 1}, {"tuple": "ab"}, {"dict": [[1]]}, {"a": 1, "b": 2}):
        with pytest.raises(ValueError):
            decode(forged)


@pytest.mark.parametrize(
    "code, parsed",
    [
        ("assert f(2) == 4", [("f", (2,), "eq", 4)]),
        ("assert 4 == f(x=2)", [("f", (), "eq", 4)]),
        ("assert f([1, 2], 'a') != (1,)", [("f", ([1, 2], "a"), "ne", (1,))]),
        ("assert f(0) is None\nassert not f(1)\nassert f(2)", [("f", (0,), "is", None), ("f", (1,), "falsy", None),
                                                              ("f", (2,), "truthy", None)]),
        ("assert abs(f(1.5) - 0.5) < 1e-6", [("f", (1.5,), "close", 0.5)]),
        ("M = {'a': 1}\n\ndef check(candidate):\n    'doc'\n    assert candidate(3) == 9\n    assert True\n\ncheck(g)",
         [("g", (3,), "eq", 9)]),
    ],
)  # fmt: skip
def test_asserts_become_parent_side_comparisons(code, parsed):
    checks = convert_asserts(TestCase(assert_code=code))
    assert [(c.fn, c.args, c.kind, c.expected) for c in checks] == parsed


@pytest.mark.parametrize(
    "code",
    [
        "for i in range(3):\n    assert f(i) == i",  # a loop
        "assert len(f(2)) == 4",  # a builtin around the call
        "assert f(y) == 4",  # a non-literal argument
        "assert aux(2) == 4",  # a function the trusted setup defines
        "assert f(2) == 4\nprint('x')",  # any other statement
        "def check(candidate):\n    x = candidate(1)\n    assert x == 1\n\ncheck(f)",
    ],
)
def test_other_asserts_run_in_the_checking_process(code):
    test = TestCase(assert_code=code, setup="def aux(x):\n    return x * 2\n")
    assert convert_asserts(test) is None


def test_checking_process_runs_asserts_against_plain_answers():
    test = TestCase(
        assert_code="for i in range(5):\n    assert f(i) == aux(i)", setup="def aux(x):\n    return x * x\n"
    )
    assert run_tests("def f(x):\n    return x * x\n", [test], FAST) == 1.0
    assert run_tests("def f(x):\n    return x * 3\n", [test], FAST) == 0.0
    # The candidate's own `aux` does not replace the trusted one in the checker.
    assert run_tests("def aux(x):\n    return 0\ndef f(x):\n    return 0\n", [test], FAST) == 0.0
    # A tuple comes back a tuple (the test compares with ==, types included), a non-plain value fails the call.
    test = TestCase(assert_code="r = f(1)\nassert r == (1, 2) and isinstance(r, tuple)")
    assert run_tests("def f(x):\n    return (x, x + 1)\n", [test], FAST) == 1.0
    assert run_tests("def f(x):\n    return [x, x + 1]\n", [test], FAST) == 0.0


def test_call_tests_and_mixed_forms():
    code = (
        "import sys\ndef f(x, y=1):\n    return {'sum': x + y}\nif sys.stdin.read().strip() == 'go':\n    print('ok')\n"
    )
    tests = parse_tests(
        [
            {"fn": "f", "args": [1, 2], "expected": {"sum": 3}},
            {"fn": "f", "args": [1], "expected": "{'sum': 2}"},  # a Python literal given as text
            {"fn": "f", "args": [5], "expected": {"sum": 5}},  # wrong
            {"fn": "g", "args": [], "expected": None},  # no such function
            {"input": "go", "output": "ok"},
            {"assert": "assert f(0) == {'sum': 1}"},
        ]
    )
    assert [t.call for t in tests[:4]] == ["f", "f", "f", "g"]
    assert run_tests(code, tests, FAST) == pytest.approx(4 / 6)
    apps = parse_tests({"fn_name": "f", "inputs": [[1, 1], [2, 2]], "outputs": [[{"sum": 2}], [{"sum": 4}]]})
    assert apps == [
        TestCase(call="f", args=(1, 1), expected={"sum": 2}),
        TestCase(call="f", args=(2, 2), expected={"sum": 4}),
    ]
    assert run_tests(code, apps, FAST) == 1.0
