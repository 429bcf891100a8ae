"""r1jax: the DeepSeek-R1 training pipeline (arXiv 2501.12948) in JAX."""

import ctypes
import os
import sys

__version__ = "0.1.0"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_KEEP_BYTES = 1 << 30


def keep_freed_host_memory() -> bool:
    """Let glibc's malloc reuse freed large blocks instead of returning them to the OS (mmap threshold and trim
    threshold raised to 1 GiB). Returns whether it applied (Linux with glibc only).

    XLA:CPU allocates each step's temporaries afresh; blocks above glibc's mmap threshold (at most 32 MiB by
    default) come from fresh `mmap` pages every step, and first-touching them page-faults: an attention softmax over
    42 MB of scores took 22 ms, 6 ms once the memory is reused (`benchmarks/op_profile.py` shows whole steps). Freed
    memory stays mapped, so peak resident size can grow a little (+4% on `benchmarks/rl_step_breakdown.py` at the
    headroom preset, 2.31 -> 2.41 GB together with the layout changes). Done on
    `import r1jax`; set R1JAX_HOST_MALLOC=default before the import to keep glibc's behaviour.
    """
    if not sys.platform.startswith("linux") or os.environ.get("R1JAX_HOST_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):  # not glibc (musl, for one): nothing to tune
        return False


HOST_MALLOC_TUNED = keep_freed_host_memory()
