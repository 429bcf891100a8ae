"""Code-execution sandbox and the code reward: run a completion's Python program against test cases.

Each run is a fresh process (see `_sandbox_runner.py` for what confines it):

- its own session / process group, in a fresh temporary work dir, with an empty
  environment, removed afterwards;
- RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE (caps files *and* stdout, which goes
  to a file: a program printing without end is killed by SIGXFSZ), RLIMIT_NPROC,
  no core dumps;
- a wall-clock timeout that SIGKILLs the whole process group;
- where the kernel allows (Linux user namespaces; Landlock >= 5.13): no network
  (network namespace, and Landlock denies TCP), a private pid namespace and /proc
  (the parent's processes and environment are invisible, and everything dies with
  the launcher), writes only inside the work dir. When run as root it first drops
  to uid 65534, since root ignores RLIMIT_NPROC. Where the kernel refuses, the run
  goes on with what applied; `RunResult.isolation` / `isolation_report()` say which.

Scoring: partial credit = fraction of tests passed. If the sandbox itself fails
(the program never started), the score is None (unscorable), never 0.

Test cases are stdin / expected-stdout pairs, or assert-style code run after the
program. An assert test passes if the process exits 0 and prints a per-run
random token after the asserts, so `exit(0)` / `os._exit(0)` in the program does
not pass. (A program that reads its own source could still find the token: this
sandbox contains accidents and reward hacking by a policy, not a determined attacker.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from r1jax.rewards.extract import code_block

_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_runner.py")
NOBODY = 65534


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 2.0  # wall clock per run; the process group is killed after it
    memory_mb: int = 512  # RLIMIT_AS
    max_output_bytes: int = 1 << 20  # stdout / stderr / any file is capped at this (RLIMIT_FSIZE)
    max_processes: int = 32  # RLIMIT_NPROC inside the sandbox
    isolate: bool = True  # namespaces + Landlock + dropping root, where the kernel allows
    python: str = sys.executable

    def __post_init__(self):
        if self.timeout_s <= 0:
            raise ValueError(f"sandbox timeout_s={self.timeout_s} must be > 0")
        if self.memory_mb < 64:
            raise ValueError(f"sandbox memory_mb={self.memory_mb}: Python needs at least 64 MB")
        if self.max_processes < 2:
            raise ValueError(f"sandbox max_processes={self.max_processes} must be >= 2 (the launcher forks)")


@dataclasses.dataclass(frozen=True)
class RunResult:
    started: bool  # False: the sandbox failed before the program ran (infrastructure failure)
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool
    wall_s: float
    isolation: dict


@dataclasses.dataclass(frozen=True)
class TestCase:
    """stdin + expected_stdout (compared line by line, trailing whitespace ignored), or assert_code."""

    __test__ = False  # not a pytest class

    stdin: str = ""
    expected_stdout: str | None = None
    assert_code: str | None = None

    def __post_init__(self):
        if (self.expected_stdout is None) == (self.assert_code is None):
            raise ValueError("TestCase needs exactly one of expected_stdout and assert_code")


def _read_capped(path: str, cap: int) -> tuple[str, bool]:
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError:
        return "", False
    return data[:cap].decode("utf-8", "replace"), len(data) > cap


def live_group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` that are not zombies (killed orphans wait for init to reap them)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            pids.append(int(name))
    return pids


def _kill_group(pgid: int, wait_s: float = 1.0) -> None:
    """SIGKILL the process group until no live member is left (bounded by `wait_s`).

    Processes that left the group (setsid) die with the pid namespace where there is one.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() >= deadline or not live_group_members(pgid):
            return
        time.sleep(0.005)


def _read_paths(python: str) -> list[str]:
    """Directories the program may read: the system and the Python installation (Landlock rules)."""
    paths = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/dev"]
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(python))):
        paths.append(os.path.dirname(p) if p.endswith("/bin") else p)
    return sorted(set(paths))


def _readable_by_others(path: str) -> bool:
    """Can an unprivileged uid reach and read `path` (o+x on every ancestor, o+r on the path)?"""
    path = os.path.realpath(path)
    try:
        parts = path.split(os.sep)
        for i in range(2, len(parts)):
            if not os.stat(os.sep.join(parts[:i])).st_mode & 0o001:
                return False
        return bool(os.stat(path).st_mode & 0o004)
    except OSError:
        return False


@functools.cache
def _can_drop_root(python: str) -> bool:
    """Dropping root only works if uid 65534 can still run the interpreter and read its standard library."""
    return _readable_by_others(python) and _readable_by_others(sysconfig.get_paths()["stdlib"])


def _make_pids_cgroup(limit: int) -> str | None:
    """A fresh pids cgroup (v1 or v2) with pids.max=limit, or None where cgroups are not writable."""
    for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        path = os.path.join(base, f"r1jax-sandbox-{secrets.token_hex(6)}")
        try:
            os.mkdir(path)
        except OSError:
            continue
        try:
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(limit))
            return path
        except OSError:
            os.rmdir(path)
    return None


def _remove_cgroup(path: str, wait_s: float = 1.0) -> None:
    deadline = time.monotonic() + wait_s
    while True:  # rmdir fails (EBUSY) until the namespace's last process is reaped
        try:
            os.rmdir(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def run_program(code: str, stdin: str = "", config: SandboxConfig = SandboxConfig()) -> RunResult:
    """Run Python `code` with `stdin` in a fresh sandboxed process; never raises for the program's faults."""
    t0 = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="r1jax-sandbox-")
    proc, cgroup = None, None
    root = os.geteuid() == 0
    drop = config.isolate and root and _can_drop_root(config.python)
    if config.isolate and root and not drop:
        cgroup = _make_pids_cgroup(config.max_processes)
    try:
        program, status_path = os.path.join(workdir, "main.py"), os.path.join(workdir, "status.json")
        with open(program, "w", encoding="utf-8") as f:
            f.write(code)
        with open(os.path.join(workdir, "stdin.txt"), "w", encoding="utf-8") as f:
            f.write(stdin)
        cfg = {
            "workdir": workdir,
            "program": program,
            "python": config.python,
            "status_path": status_path,
            "cpu_s": max(1, int(config.timeout_s + 0.999)),
            "memory_bytes": config.memory_mb << 20,
            "file_bytes": config.max_output_bytes + 1,
            "nproc": config.max_processes,
            "isolate": config.isolate,
            "drop_uid": NOBODY if drop else None,
            "cgroup": cgroup,
            "read_paths": _read_paths(config.python),
        }
        cfg_path = os.path.join(workdir, "sandbox.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        if drop:
            os.chmod(program, 0o644)
            os.chown(workdir, NOBODY, NOBODY)
        out_path, err_path = os.path.join(workdir, "stdout.txt"), os.path.join(workdir, "stderr.txt")
        with (
            open(os.path.join(workdir, "stdin.txt"), "rb") as fin,
            open(out_path, "wb") as fout,
            open(err_path, "wb") as ferr,
        ):
            try:
                proc = subprocess.Popen(
                    [config.python, "-I", _RUNNER, cfg_path],
                    stdin=fin,
                    stdout=fout,
                    stderr=ferr,
                    cwd=workdir,
                    env={},
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as e:  # no interpreter, no fork: the sandbox's failure, not the program's
                return RunResult(False, None, "", f"sandbox launch failed: {e}", False, False, 0.0, {})
        timed_out = False
        try:
            proc.wait(timeout=config.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid, wait_s=0)
        proc.wait()
        _kill_group(proc.pid)  # anything left in the group (the launcher, its leader, is reaped: no zombie loop)
        stdout, trunc_out = _read_capped(out_path, config.max_output_bytes)
        stderr, trunc_err = _read_capped(err_path, config.max_output_bytes)
        try:
            with open(status_path) as f:
                status = json.load(f)
        except (OSError, ValueError):
            status = {}
        started = bool(status.get("started"))
        if started and proc.returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):
            trunc_out = True
        return RunResult(
            started=started,
            returncode=proc.returncode,
            stdout=stdout,
            stderr=stderr,
            timed_out=timed_out,
            output_truncated=trunc_out or trunc_err,
            wall_s=time.monotonic() - t0,
            isolation={k: v for k, v in status.items() if k != "started"},
        )
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        if cgroup is not None:
            _remove_cgroup(cgroup)
        shutil.rmtree(workdir, ignore_errors=True)


def _same_output(got: str, expected: str) -> bool:
    norm = lambda s: [line.rstrip() for line in s.strip().splitlines()]
    return norm(got) == norm(expected)


def run_test(code: str, test: TestCase, config: SandboxConfig = SandboxConfig()) -> bool | None:
    """True / False for one test; None if the sandbox failed to start the program."""
    if test.assert_code is None:
        r = run_program(code, test.stdin, config)
        if not r.started:
            return None
        return r.returncode == 0 and not r.timed_out and _same_output(r.stdout, test.expected_stdout)
    token = secrets.token_hex(16)
    r = run_program(f"{code}\n\n{test.assert_code}\nprint({token!r})\n", test.stdin, config)
    if not r.started:
        return None
    lines = r.stdout.strip().splitlines()
    return r.returncode == 0 and not r.timed_out and bool(lines) and lines[-1].strip() == token


def run_tests(code: str, tests: Sequence[TestCase], config: SandboxConfig = SandboxConfig()) -> float | None:
    """Fraction of `tests` passed; None if any run failed for infrastructure reasons or there are no tests."""
    if not tests:
        return None
    passed = 0
    for test in tests:
        ok = run_test(code, test, config)
        if ok is None:
            return None
        passed += ok
    return passed / len(tests)


def parse_tests(tests: Any) -> list[TestCase]:
    """Test cases from the forms data files use.

    - list of TestCase, or of dicts {'input'|'stdin': ..., 'output'|'stdout'|'expected_stdout': ...}
      or {'assert'|'assert_code': ...};
    - dict {'inputs': [...], 'outputs': [...]} (APPS / TACO style);
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
        return [TestCase(stdin=str(i), expected_stdout=str(o)) for i, o in zip(tests["inputs"], tests["outputs"])]
    out = []
    for t in tests:
        if isinstance(t, TestCase):
            out.append(t)
        elif isinstance(t, str):
            out.append(TestCase(assert_code=t))
        elif isinstance(t, Mapping) and ("assert" in t or "assert_code" in t):
            out.append(TestCase(assert_code=str(t.get("assert", t.get("assert_code")))))
        elif isinstance(t, Mapping):
            stdin = t.get("input", t.get("stdin", ""))
            expected = t.get("output", t.get("stdout", t.get("expected_stdout")))
            if expected is None:
                raise ValueError(f"test case {t!r:.80}: needs 'output' (or 'stdout') or 'assert'")
            out.append(TestCase(stdin=str(stdin), expected_stdout=str(expected)))
        else:
            raise ValueError(f"test case {t!r:.80}: expected a dict, a string or a TestCase")
    return out


def code_reward(
    completions: Sequence[str],
    *,
    examples: Sequence[Any],
    timeout_s: float = 2.0,
    memory_mb: int = 512,
    isolate: bool = True,
) -> list[float | None]:
    """Fraction of the example's tests that the completion's last ```python block passes.

    No code block -> 0.0. No tests in the record, or a sandbox failure -> None.
    """
    config = SandboxConfig(timeout_s=timeout_s, memory_mb=memory_mb, isolate=isolate)
    out: list[float | None] = []
    for completion, ex in zip(completions, examples, strict=True):
        raw = ex.get("tests") if isinstance(ex, Mapping) else getattr(ex, "meta", {}).get("tests")
        tests = parse_tests(raw)
        code = code_block(completion)
        if not tests:
            out.append(None)
        elif code is None:
            out.append(0.0)
        else:
            out.append(run_tests(code, tests, config))
    return out


@functools.cache
def isolation_report() -> dict:
    """What the sandbox can enforce on this machine (runs one trivial program; cached)."""
    r = run_program("print('ok')")
    return {"works": r.started and r.stdout.strip() == "ok", **r.isolation}
