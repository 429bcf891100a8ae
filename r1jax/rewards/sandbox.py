"""Code-execution sandbox and the code reward: run a completion's Python program against test cases.

Each run is a fresh process (see `_sandbox_runner.py` for what confines it):

- its own session / process group, in a fresh work dir (the only place it may write),
  with an empty environment, removed afterwards; the launcher's config and status and
  the captured stdin / stdout / stderr lie in the parent's directory around it, which
  the program reaches only through the descriptors it was given;
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

Verdicts are decided in the parent; nothing that decides one (expected outputs, a
pass marker, the comparison) is ever inside the process that runs the candidate:

- stdin / stdout tests: the parent compares the captured stdout (whitespace-normalised)
  and the exit status.
- function-call tests ((input, expected output) pairs): the candidate's process
  (`_sandbox_harness.py`, role 'serve') gets only the inputs and returns its outputs
  as plain tagged JSON (builtin types only, exact types: an int subclass or an object
  with its own `__eq__` cannot be encoded, and that call fails); the parent rebuilds
  builtin values and compares them with expected values only it holds. The call tests of
  one problem share one process and its timeout.
- assert code (HumanEval / MBPP): statements of the form `assert f(<literals>) == <literal>`
  (and !=, `is`, truthiness, `abs(f(x) - y) < tol`, inside `check(candidate)` or not) are
  parsed with `ast` into such calls and compared in the parent. Any other assert code runs
  in a second sandboxed process ('check') that holds the trusted setup and the asserts but
  no candidate code: its candidate functions are proxies that send arguments to the
  candidate's process over a pipe and decode plain data back. The verdict is that
  process's exit status, read by the parent.

Residual risk, stated: the candidate sees its inputs and may keep state between calls
(it can behave differently on the n-th call, which is its own answer); in the 'check'
route the checker runs the test code on the candidate's plain-data answers, so a test
that trusts something other than returned values (e.g. it calls a function the candidate
defines but the setup does not) trusts the candidate's answer to that call. Where the
kernel refuses namespaces and Landlock and root is not dropped, the two processes share a
uid and file access; the checker makes itself non-dumpable (no ptrace, no /proc/pid/mem),
but the candidate could still write files the checker later reads. `isolation_report()`
says what applies on a machine.
"""

from __future__ import annotations

import ast
import builtins
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

from r1jax.rewards._sandbox_harness import EncodeError, decode, encode
from r1jax.rewards.extract import code_block

_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_runner.py")
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_harness.py"), encoding="utf-8") as _f:
    _HARNESS = _f.read()
FAILED = object()  # a call that raised, returned something that is not plain data, or never answered
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


@dataclasses.dataclass
class _Launch:
    """A sandboxed process that has been started; `_finish` waits for it, collects its output and cleans up."""

    proc: subprocess.Popen | None
    outer: str
    cgroup: str | None
    config: SandboxConfig
    t0: float
    error: str = ""


def _start(
    code: str,
    stdin: str,
    config: SandboxConfig,
    *,
    files: Mapping[str, str] = {},
    pass_fds: Sequence[int] = (),
) -> _Launch:
    """Start `code` as `main.py` in a fresh work dir (with `files` beside it) under the launcher.

    Layout: OUTER (the parent's: config, status, stdin / stdout / stderr files) holds WORK, the only
    directory the program may write (Landlock; after dropping root, ownership too). `pass_fds` stay open in
    the program (the function-call channels).
    """
    t0 = time.monotonic()
    outer = tempfile.mkdtemp(prefix="r1jax-sandbox-")
    workdir = os.path.join(outer, "work")
    os.mkdir(workdir)
    root = os.geteuid() == 0
    drop = config.isolate and root and _can_drop_root(config.python)
    cgroup = _make_pids_cgroup(config.max_processes) if config.isolate and root and not drop else None
    launch = _Launch(None, outer, cgroup, config, t0)
    program = os.path.join(workdir, "main.py")
    for name, text in {"main.py": code, **files}.items():
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(outer, "stdin.txt"), "w", encoding="utf-8") as f:
        f.write(stdin)
    cfg = {
        "workdir": workdir,
        "program": program,
        "python": config.python,
        "status_path": os.path.join(outer, "status.json"),
        "cpu_s": max(1, int(config.timeout_s + 0.999)),
        "memory_bytes": config.memory_mb << 20,
        "file_bytes": config.max_output_bytes + 1,
        "nproc": config.max_processes,
        "isolate": config.isolate,
        "drop_uid": NOBODY if drop else None,
        "cgroup": cgroup,
        "read_paths": _read_paths(config.python),
    }
    cfg_path = os.path.join(outer, "sandbox.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    if drop:
        os.chmod(outer, 0o711)
        for name in os.listdir(workdir):
            os.chmod(os.path.join(workdir, name), 0o644)
        os.chown(workdir, NOBODY, NOBODY)
    with (
        open(os.path.join(outer, "stdin.txt"), "rb") as fin,
        open(os.path.join(outer, "stdout.txt"), "wb") as fout,
        open(os.path.join(outer, "stderr.txt"), "wb") as ferr,
    ):
        try:
            launch.proc = subprocess.Popen(
                [config.python, "-I", _RUNNER, cfg_path],
                stdin=fin,
                stdout=fout,
                stderr=ferr,
                cwd=workdir,
                env={},
                start_new_session=True,
                close_fds=True,
                pass_fds=tuple(pass_fds),
            )
        except OSError as e:  # no interpreter, no fork: the sandbox's failure, not the program's
            launch.error = f"sandbox launch failed: {e}"
    return launch


def _finish(launch: _Launch, deadline: float) -> RunResult:
    """Wait for the program until `deadline` (then kill its process group), read what it left, remove its dirs."""
    proc, config, outer = launch.proc, launch.config, launch.outer
    try:
        if proc is None:
            return RunResult(False, None, "", launch.error, False, False, 0.0, {})
        timed_out = False
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid, wait_s=0)
        proc.wait()
        _kill_group(proc.pid)  # anything left in the group (the launcher, its leader, is reaped: no zombie loop)
        stdout, trunc_out = _read_capped(os.path.join(outer, "stdout.txt"), config.max_output_bytes)
        stderr, trunc_err = _read_capped(os.path.join(outer, "stderr.txt"), config.max_output_bytes)
        try:
            with open(os.path.join(outer, "status.json")) as f:
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
            wall_s=time.monotonic() - launch.t0,
            isolation={k: v for k, v in status.items() if k != "started"},
        )
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        if launch.cgroup is not None:
            _remove_cgroup(launch.cgroup)
        shutil.rmtree(outer, ignore_errors=True)


def run_program(code: str, stdin: str = "", config: SandboxConfig = SandboxConfig()) -> RunResult:
    """Run Python `code` with `stdin` in a fresh sandboxed process; never raises for the program's faults."""
    launch = _start(code, stdin, config)
    return _finish(launch, time.monotonic() + config.timeout_s)


# ----------------------------------------------------------------------------- test cases


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


@dataclasses.dataclass(frozen=True)
class _Check:
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


def _check_of(test: ast.AST, resolve) -> _Check | None:
    """The parent-side form of one assert's test expression, or None if it has none."""
    if (call := _call_of(test, resolve)) is not None:
        return _Check(*call, "truthy")
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        if (call := _call_of(test.operand, resolve)) is not None:
            return _Check(*call, "falsy")
        return None
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    op, left, right = test.ops[0], test.left, test.comparators[0]
    try:
        if isinstance(op, (ast.Eq, ast.NotEq)):
            kind = "eq" if isinstance(op, ast.Eq) else "ne"
            if (call := _call_of(left, resolve)) is not None:
                return _Check(*call, kind, ast.literal_eval(right))
            if (call := _call_of(right, resolve)) is not None:
                return _Check(*call, kind, ast.literal_eval(left))
            return None
        if isinstance(op, ast.Is) and isinstance(right, ast.Constant) and right.value in (None, True, False):
            if (call := _call_of(left, resolve)) is not None:
                return _Check(*call, "is", right.value)
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
            return _Check(*call, "close", ast.literal_eval(other), tol, isinstance(op, ast.LtE))
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


def _defined_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def convert_asserts(test: TestCase) -> list[_Check] | None:
    """Assert code as parent-side comparisons, or None where some statement has no such form.

    Understood: top-level `assert f(<literals>) == <literal>` (also !=, `is None/True/False`, bare truthiness,
    `not`, `abs(f(...) - y) < tol`), and the same inside `def check(candidate): ...` followed by
    `check(name)`; imports, string constants, `assert True` and top-level assignments of literals (HumanEval's
    METADATA) are skipped. `f` must not be a builtin or a name the trusted `setup` defines.
    """
    try:
        tree = ast.parse(test.assert_code)
        trusted = _defined_names(ast.parse(test.setup)) | _BUILTIN_NAMES
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


# ----------------------------------------------------------------------------- running tests


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
        launch = _start(_HARNESS, "", config, files=files, pass_fds=(req.fileno(), rep.fileno()))
        result = _finish(launch, time.monotonic() + config.timeout_s)
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
        defined = _defined_names(ast.parse(code))
        trusted = _defined_names(ast.parse(test.setup))
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
        launches.append(_start(_HARNESS, "", config, files=files, pass_fds=(to_cand_r, to_check_w)))
        files = _harness_files(
            None,
            role="check",
            setup=test.setup,
            test=test.assert_code,
            proxies=_proxied_names(code, test),
            in_fd=to_check_r,
            out_fd=to_cand_w,
        )
        launches.append(_start(_HARNESS, test.stdin, config, files=files, pass_fds=(to_check_r, to_cand_w)))
    finally:
        for fd in (to_cand_r, to_cand_w, to_check_r, to_check_w):
            os.close(fd)  # the children hold their ends; the candidate sees EOF when the checker exits
    deadline = time.monotonic() + config.timeout_s
    checker = _finish(launches[1], deadline)
    candidate = _finish(launches[0], min(deadline, time.monotonic() + 0.5))
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
    by_setup: dict[str, list[tuple[int, list[_Check]]]] = {}
    for i, test in enumerate(tests):
        if test.call is not None:
            by_setup.setdefault(test.setup, []).append((i, [_Check(test.call, test.args, {}, "eq", test.expected)]))
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


def _record_tests(ex: Any) -> Any:
    if isinstance(ex, Mapping):
        return ex["tests"] if "tests" in ex else (ex.get("meta") or {}).get("tests")
    return getattr(ex, "meta", {}).get("tests")


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
        tests = parse_tests(_record_tests(ex))
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
