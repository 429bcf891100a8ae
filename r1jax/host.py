"""The host machine: glibc malloc tuning for XLA:CPU, and the CPU time the hypervisor took (steal).

Imports no jax: `import r1jax` runs `keep_freed_host_memory()` before jax allocates anything, and the benchmark
harness reads the steal counters before jax starts.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_KEEP_BYTES = 1 << 30


def keep_freed_host_memory() -> bool:
    """Let glibc's malloc reuse freed large blocks instead of returning them to the OS (mmap threshold and trim
    threshold raised to 1 GiB). Returns whether it applied (Linux with glibc only).

    XLA:CPU allocates each step's temporaries afresh; blocks above glibc's mmap threshold (at most 32 MiB by
    default) come from fresh `mmap` pages every step, and first-touching them page-faults: an attention softmax over
    42 MB of scores took 22 ms, 6 ms once the memory is reused (`benchmarks/measure/op_profile.py` shows whole
    steps). Freed memory stays mapped, so peak resident size can grow a little (+4% on
    `benchmarks/measure/rl_step_breakdown.py` at the headroom preset, 2.31 -> 2.41 GB together with the layout
    changes). Done on `import r1jax`; set R1JAX_HOST_MALLOC=default before the import to keep glibc's behaviour.
    """
    if not sys.platform.startswith("linux") or os.environ.get("R1JAX_HOST_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):  # not glibc (musl, for one): nothing to tune
        return False


def cpu_times() -> list[int] | None:
    """The aggregate `cpu` line of /proc/stat (user nice system idle iowait irq softirq steal ...), in ticks;
    None where there is none (not Linux)."""
    try:
        with open("/proc/stat") as f:
            head = f.readline().split()
    except OSError:
        return None
    return [int(x) for x in head[1:]] if head and head[0] == "cpu" else None


def steal_fraction(before: list[int] | None, after: list[int] | None) -> float | None:
    """Share of CPU time between two `cpu_times()` that the hypervisor gave to other guests (steal): on a virtual
    machine a busy host slows every thread of this one without showing in its load average."""
    if before is None or after is None or len(before) < 8:
        return None
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])  # guest time is already counted in user
    return delta[7] / total if total > 0 else 0.0


MALLOC_TUNED = keep_freed_host_memory()
