"""Measuring rules shared by the side-by-side benchmarks, so that a ratio measures the code and not the machine.

A benchmark that compares two programs on a shared CPU can be bent by other work on the machine: torch's
thread pool suffers from contention far more than XLA's, so a run at load average 8 on 2 cores once showed a
9× ratio that an idle machine turned into 1×. Every side-by-side benchmark therefore:

  pins threads    `pin_threads(n)` restricts this process (and so every subprocess it starts) to the first `n`
                  CPUs with `sched_setaffinity`; XLA sizes its CPU thread pool from the schedulable CPUs, and
                  the torch side calls `torch.set_num_threads(n)` with OMP/MKL_NUM_THREADS=n (`torch_env(n)`).
                  At n = 1 XLA's Eigen pool is also switched off (XLA_FLAGS --xla_cpu_multi_thread_eigen=false
                  intra_op_parallelism_threads=1). Must run before jax is imported.
  records load    `LoadMonitor` samples `os.getloadavg()` before, during (every few seconds) and after. A run is
                  flagged `loaded` when the 1-minute load average before it exceeded half the CPUs, or when
                  during it the load beyond the benchmark's own pinned threads did.
  interleaves     `interleave(fns, repeats)` runs A, B, A, B, ... so that any drift in load hits both alike.
  reports spread  `spread(xs)`: median with min, max and the interquartile range; `table(...)` prints them with
                  the load flag.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time

# The checkout these benchmarks belong to (realpath: `ab` reaches them through a link from a directory of its own).
REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

try:  # jax-free; absent on the torch side of a side-by-side run, which never records load
    from r1jax import host
except ImportError:
    host = None

STEAL_LIMIT = 0.10  # hypervisor steal above this share of CPU time marks a run loaded
LOADED_FRACTION = 0.5  # 1-min load average above this share of the CPUs marks a run as taken on a loaded machine


def pin_threads(n: int) -> dict:
    """Restricts this process (and its children) to the first `n` allowed CPUs; returns the thread settings.

    Call before `import jax`: XLA reads the schedulable CPU count and XLA_FLAGS when its CPU client starts.
    """
    if "jax" in sys.modules:
        raise RuntimeError("pin_threads must run before jax is imported (XLA sizes its thread pool once)")
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= n <= len(allowed):
        raise ValueError(f"threads={n}: must be between 1 and the {len(allowed)} CPUs this process may use")
    cpus = allowed[:n]
    os.sched_setaffinity(0, cpus)
    if n == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    return thread_settings()


def _host_malloc_tuned() -> bool:
    """r1jax.host.MALLOC_TUNED; False in a process without r1jax (the torch side of a side-by-side run)."""
    return host is not None and host.MALLOC_TUNED


def thread_settings() -> dict:
    """What this process (and a subprocess it starts) will run with."""
    return {
        "cpus_total": os.cpu_count(),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "threads": len(os.sched_getaffinity(0)),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        # whether glibc's malloc keeps freed blocks in this process (r1jax.host.keep_freed_host_memory); the env var
        # is what a subprocess will do
        "r1jax_host_malloc": "tuned" if _host_malloc_tuned() else "default",
        "r1jax_host_malloc_env": os.environ.get("R1JAX_HOST_MALLOC", ""),
        "pinning": "sched_setaffinity (inherited by subprocesses) + torch.set_num_threads / OMP_NUM_THREADS",
    }


def torch_env(n: int) -> dict:
    """Environment for a torch subprocess pinned to `n` threads (it still must call torch.set_num_threads(n))."""
    return dict(os.environ, OMP_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n), CUDA_VISIBLE_DEVICES="")


class LoadMonitor:
    """Samples the 1-minute load average in a background thread, and the hypervisor's steal time over the run;
    `record()` says whether the machine was loaded.

    `own_threads` is the number of busy threads the benchmark itself adds to the load average; only the load
    beyond it counts against a run while it is going on. Steal above STEAL_LIMIT marks a run loaded too: this
    VM's neighbours then had part of its CPUs (50% steal was seen on a 2-core VM with load average 1.8).
    """

    def __init__(self, own_threads: int, every_s: float = 5.0):
        self.own_threads = own_threads
        self.every_s = every_s
        self.cpus = os.cpu_count() or 1
        self.before = os.getloadavg()
        self.cpu_before = host.cpu_times() if host is not None else None
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def record(self) -> dict:
        self._stop.set()
        self._thread.join()
        after = os.getloadavg()
        during = max(self.samples + [after[0]])
        limit = LOADED_FRACTION * self.cpus
        steal = host.steal_fraction(self.cpu_before, host.cpu_times()) if host is not None else None
        loaded = self.before[0] > limit or during - self.own_threads > limit or (steal or 0.0) > STEAL_LIMIT
        return {
            "before": list(self.before),
            "after": list(after),
            "max_1min_during": during,
            "samples_1min": self.samples,
            "cpus": self.cpus,
            "own_threads": self.own_threads,
            "steal_fraction": steal,
            "loaded": loaded,
            "rule": f"loaded if 1-min load before > {LOADED_FRACTION} x cpus, or during minus own threads > that, "
            f"or hypervisor steal > {STEAL_LIMIT:.0%} of CPU time during the run",
        }


def interleave(fns: dict, repeats: int) -> dict:
    """Calls each fn in turn, `repeats` rounds (A, B, A, B, ...); each call returns one time or a list of times."""
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            got = fn()
            out[name].extend(got if isinstance(got, (list, tuple)) else [got])
    return out


def spread(xs) -> dict:
    """Median with min, max and interquartile range of a list of measurements."""
    xs = sorted(float(x) for x in xs)
    if not xs:
        raise ValueError("spread of no measurements")
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q[0], "q3": q[2], "n": len(xs)}


def loaded_banner(load: dict) -> str:
    steal = load.get("steal_fraction")
    steal_text = "" if steal is None else f", steal {steal:.0%}"
    if not load["loaded"]:
        return (f"load: idle enough (1-min {load['before'][0]:.2f} before, {load['max_1min_during']:.2f} max "
                f"during{steal_text})")
    return (
        f"LOADED MACHINE: 1-min load {load['before'][0]:.2f} before, {load['max_1min_during']:.2f} max during"
        f"{steal_text}, on {load['cpus']} CPUs; these figures measure the load as much as the code: rerun on an "
        "idle machine"
    )


def table(rows: dict, unit: str, load: dict) -> str:
    """A printed table: one row per side, median [min, max] (IQR) of its measurements, then the load line."""
    lines = [f"{'':24s} {'median':>10s} {'min':>10s} {'max':>10s} {'q1':>10s} {'q3':>10s} {'n':>4s}  ({unit})"]
    for name, s in rows.items():
        lines.append(
            f"{name:24s} {s['median']:10.4g} {s['min']:10.4g} {s['max']:10.4g} {s['q1']:10.4g} {s['q3']:10.4g} "
            f"{s['n']:4d}"
        )
    lines.append(loaded_banner(load))
    return "\n".join(lines)


def peak_rss_mib() -> float:
    """Peak resident memory of this process (VmHWM), MiB.

    Not `ru_maxrss`: Linux carries a parent's peak into a child across fork + exec, so a subprocess started by a
    big process would report at least the parent's size; VmHWM belongs to the address space, which exec replaces.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# -- device timing and ceilings (jax is imported inside: `pin_threads` must run before jax starts) ---------------


def call_times(repeats: int, fn, *a, warmup: bool = True, **kw) -> list[float]:
    """Seconds of each of `repeats` calls of `fn(*a, **kw)`, each timed to completion (`jax.block_until_ready`),
    after one untimed call (compilation) unless `warmup=False`."""
    import jax

    if warmup:
        jax.block_until_ready(fn(*a, **kw))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*a, **kw))
        times.append(time.perf_counter() - t0)
    return times


def best_time(repeats: int, fn, *a, warmup: bool = True, **kw) -> float:
    """The fastest of `call_times(repeats, fn, *a, warmup=warmup, **kw)`."""
    return min(call_times(repeats, fn, *a, warmup=warmup, **kw))


def matmul_ceiling(n: int = 1024, dtype: str = "float32") -> float:
    """FLOP/s of an n×n matmul, best of 5: the compute roofline of a phase."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((n, n), dtype)
    return 2 * n**3 / best_time(5, jax.jit(lambda a: a @ a), x)


def read_bandwidth(n: int = 16384) -> float:
    """Bytes/s of streaming reads over an n×n f32 matrix (1 GiB at n = 16384): the best of a sum and a
    matrix-vector product, best of 5 each — the traffic of a decode step (weights read, almost nothing written).
    A copy's read + write bandwidth is several times lower on a CPU and would understate the limit."""
    import jax
    import jax.numpy as jnp

    m, v = jnp.ones((n, n), jnp.float32), jnp.ones((n,), jnp.float32)
    return m.nbytes / min(best_time(5, jax.jit(jnp.sum), m), best_time(5, jax.jit(lambda a, x: a @ x), m, v))


def copy_bandwidth(mib: int = 1024) -> float:
    """Bytes/s of an f32 array of `mib` MiB read and written once (2 × its bytes), best of 5."""
    import jax
    import jax.numpy as jnp

    big = jnp.ones((mib * 2**20 // 4,), jnp.float32)
    return 2 * big.nbytes / best_time(5, jax.jit(lambda a: a + 1.0), big)


def dense_shapes(cfg, tokens: int, backward: bool = False) -> list[tuple[int, int, int, int]]:
    """(count, m, k, n) of the dense matmuls one forward over `tokens` tokens runs in a decoder of ModelConfig
    `cfg` (q, k, v, o, gate, up, down projections per layer; the LM head), and with `backward` also the
    input- and weight-gradient matmuls of each. Attention's own products are not included."""
    d, f, hd = cfg.embed_dim, cfg.mlp_dim, cfg.head_dim
    q, kv, layers = cfg.num_heads * hd, cfg.num_kv_heads * hd, cfg.num_layers
    per_layer = [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]
    shapes = [(layers, tokens, k, n) for k, n in per_layer] + [(1, tokens, d, cfg.vocab_size)]
    if backward:  # dX = dY·Wᵀ: (tokens, n, k); dW = Xᵀ·dY: (k, tokens, n)
        shapes += [(c, m, n, k) for c, m, k, n in shapes] + [(c, k, m, n) for c, m, k, n in shapes]
    return shapes


def dense_rate(shapes, repeats: int = 3) -> dict:
    """FLOPs, seconds and FLOP/s of the matmuls `shapes` ((count, m, k, n), as from `dense_shapes`), each
    distinct shape timed on its own (best of `repeats`) and weighted by its count: what the model's own matmuls
    reach on this device, to set against `matmul_ceiling`."""
    import jax
    import jax.numpy as jnp

    flops = seconds = 0.0
    for (m, k, n), count in _count_shapes(shapes).items():
        a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
        t = best_time(repeats, jax.jit(lambda x, y: x @ y), a, b)
        flops, seconds = flops + count * 2 * m * k * n, seconds + count * t
    return {"flops": flops, "seconds": seconds, "flop_per_s": flops / seconds}


def _count_shapes(shapes) -> dict:
    counts: dict = {}
    for c, m, k, n in shapes:
        counts[(m, k, n)] = counts.get((m, k, n), 0) + c
    return counts
