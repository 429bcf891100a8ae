"""Code sandbox: limits hold (time, memory, processes, output, files, environment, network), correct programs
pass, and a sandbox that cannot start scores None rather than 0. Every test is bounded by ~1 s timeouts."""

import os
import socket
import time

import pytest

from r1jax.rewards import SandboxConfig, TestCase, code_reward, run_program, run_tests
from r1jax.rewards.sandbox import parse_tests

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
