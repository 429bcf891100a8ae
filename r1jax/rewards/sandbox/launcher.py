"""Sandbox launcher, run as a script: `python -I launcher.py <config.json>` (see confinement.py).

It confines itself, then execs the untrusted program, so the program starts
already confined. Standard library only: it runs before anything is imported.
Steps, each best effort and recorded in the status file:

1. resource limits (CPU, address space, file size, open files, no core dumps);
2. if running as root, drop to an unprivileged uid (root ignores RLIMIT_NPROC), or where the
   Python installation is not readable by that uid, join a pids cgroup instead;
3. new user + mount + pid + network namespaces (no network; the program cannot see
   or signal processes outside; when this launcher dies the kernel kills them all);
4. RLIMIT_NPROC, counted inside the new user namespace;
5. in the child (pid 1 of the namespace): a fresh /proc, then Landlock: writes only
   inside the work dir, reads only of system and Python directories, no TCP;
6. write the status file ("started"), exec the program.

The status file lies outside the program's work dir, where Landlock (and, once root is dropped, file
permissions) keep the program from writing: the launcher opens it first, while it still may, and
writes through that descriptor, which is closed on exec.

The launcher exits with the program's status (128 + signal if it was killed).
"""

import ctypes
import json
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _err(what):
    return f"{what}: {os.strerror(ctypes.get_errno())}"


def set_limits(cfg, status):
    limits = {
        "RLIMIT_CORE": 0,
        "RLIMIT_CPU": cfg["cpu_s"],
        "RLIMIT_AS": cfg["memory_bytes"],
        "RLIMIT_FSIZE": cfg["file_bytes"],
        "RLIMIT_NOFILE": 256,
    }
    for name, value in limits.items():
        # CPU: soft limit sends SIGXCPU, the hard limit one second later SIGKILL.
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))
    status["rlimits"] = sorted(limits)


def join_cgroup(cfg, status):
    """Root ignores RLIMIT_NPROC; where the program must stay root, a pids cgroup bounds its processes."""
    if cfg["cgroup"] is None:
        return
    try:
        with open(os.path.join(cfg["cgroup"], "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        status["nproc"] = f"cgroup pids.max={cfg['nproc']}"
    except OSError as e:
        status["nproc"] = f"not enforced (root, cgroup: {e})"


def drop_root(cfg, status):
    if os.geteuid() != 0 or cfg["drop_uid"] is None:
        return
    os.setgroups([])
    os.setgid(cfg["drop_uid"])
    os.setuid(cfg["drop_uid"])
    # setuid clears the dumpable flag, which would make /proc/self/uid_map unwritable below.
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    status["uid"] = cfg["drop_uid"]


def enter_namespaces(status):
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET) != 0:
        status["namespaces"] = _err("unshare")
        return False
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
    status["namespaces"] = ["user", "mount", "pid", "net"]
    return True


def mount_proc(status):
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        status["proc"] = _err("mount --make-rprivate /")
        return False
    if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        status["proc"] = _err("mount proc")
        return False
    status["proc"] = "private"
    return True


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock(cfg, status, proc_is_private):
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        status["landlock"] = _err("landlock unavailable")
        return
    execute, write_file, read_file, read_dir = 1, 2, 4, 8
    handled = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    file_rights = execute | write_file | read_file
    if abi >= 2:
        handled |= 1 << 13  # REFER
    if abi >= 3:
        handled |= 1 << 14  # TRUNCATE
        file_rights |= 1 << 14
    if abi >= 5:
        handled |= 1 << 15  # IOCTL_DEV
        file_rights |= 1 << 15
    read = execute | read_file | read_dir
    attr = _RulesetAttr(handled, 3 if abi >= 4 else 0, 3 if abi >= 6 else 0)  # no TCP; scoped signals / sockets
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    fd = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        status["landlock"] = _err("landlock_create_ruleset")
        return
    rules = [(p, read) for p in cfg["read_paths"]] + [(cfg["workdir"], handled), ("/dev/null", file_rights)]
    if proc_is_private:
        rules.append(("/proc", read))
    for path, access in rules:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        if not os.path.isdir(path):
            access &= file_rights
        rule = _PathBeneathAttr(access, pfd)
        rc = libc.syscall(SYS_LANDLOCK_ADD_RULE, fd, ctypes.c_int(1), ctypes.byref(rule), ctypes.c_uint32(0))
        os.close(pfd)
        if rc != 0:
            status["landlock"] = _err(f"landlock_add_rule {path}")
            return
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, fd, ctypes.c_uint32(0)) != 0:
        status["landlock"] = _err("landlock_restrict_self")
        return
    status["landlock"] = f"abi {abi}" + (", tcp denied" if abi >= 4 else "")


def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    cfg["status_fd"] = os.open(cfg["status_path"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    status = {"started": False}
    set_limits(cfg, status)
    if cfg["isolate"]:
        join_cgroup(cfg, status)
        drop_root(cfg, status)
    if "nproc" not in status:
        status["nproc"] = f"rlimit {cfg['nproc']}" if os.getuid() != 0 else "not enforced (running as root)"
    in_ns = cfg["isolate"] and enter_namespaces(status)
    resource.setrlimit(resource.RLIMIT_NPROC, (cfg["nproc"], cfg["nproc"]))
    if in_ns:
        pid = os.fork()
        if pid:  # the launcher: wait for pid 1 of the namespace and pass its status on
            _, wstatus = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else 128 + os.WTERMSIG(wstatus))
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # launcher killed -> pid 1 dies -> the namespace is torn down
    proc_is_private = in_ns and mount_proc(status)
    if cfg["isolate"]:
        landlock(cfg, status, proc_is_private)
    write_status(cfg, {**status, "started": True})
    try:
        os.execve(cfg["python"], [cfg["python"], "-I", cfg["program"]], {})
    except OSError as e:  # the sandbox could not start the program: not the program's fault
        write_status(cfg, {**status, "started": False, "exec": str(e)})
        os._exit(125)


def write_status(cfg, status):
    fd = cfg["status_fd"]
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(status).encode(), 0)


if __name__ == "__main__":
    main()
