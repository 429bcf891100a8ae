"""Confinement: run one Python program in a fresh, confined process and collect what it left.

Each run is a fresh process, started through `launcher.py` (which confines itself, then execs the program):

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

This layer knows nothing of tests or verdicts: `start` / `finish` are what `verdicts.py` builds its runs from.
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

# Run by file path with `python -I` (isolated: no site-packages, no script dir on sys.path), never imported.
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
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
class Launch:
    """A sandboxed process that has been started; `finish` waits for it, collects its output and cleans up."""

    proc: subprocess.Popen | None
    outer: str
    cgroup: str | None
    config: SandboxConfig
    t0: float
    error: str = ""


def start(
    code: str,
    stdin: str,
    config: SandboxConfig,
    *,
    files: Mapping[str, str] = {},
    pass_fds: Sequence[int] = (),
) -> Launch:
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
    launch = Launch(None, outer, cgroup, config, t0)
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
                [config.python, "-I", LAUNCHER, cfg_path],
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


def finish(launch: Launch, deadline: float) -> RunResult:
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
    launch = start(code, stdin, config)
    return finish(launch, time.monotonic() + config.timeout_s)


@functools.cache
def isolation_report() -> dict:
    """What the sandbox can enforce on this machine (runs one trivial program; cached)."""
    r = run_program("print('ok')")
    return {"works": r.started and r.stdout.strip() == "ok", **r.isolation}
