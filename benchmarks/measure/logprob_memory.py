"""Memory and CPU time of the grouped log-prob: 'xla' (materialised logits) vs 'chunked' (and 'pallas').

Memory: the XLA temp buffer size of one jitted forward+backward (loss = Σ log π,
gradients w.r.t. h and W) at Qwen2.5-1.5B shapes (D=1536, V=151936, bf16 h
and W), from `lower(ShapeDtypeStruct...).compile().memory_analysis()`, so
nothing is allocated. 'pallas' is included only where it compiles (GPU/TPU).

Time: forward+backward on the default backend at N=2048, D=512, V=32000
(f32), xla and chunked interleaved, median of the repetitions.

    python -m benchmarks.measure.logprob_memory [--reps 7] [--json results.json]
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from r1jax.kernels.grouped_logprob import api

QWEN_D, QWEN_V = 1536, 151936
MEMORY_NS = (4096, 16384)
TIME_N, TIME_D, TIME_V = 2048, 512, 32000


def _fwd_bwd(implementation):
    def loss(h_nd, w_dv, targets_n):
        logp_n, _ = api.grouped_logprob_nd(
            h_nd, w_dv, targets_n, temperature=1.0, return_entropy=False, implementation=implementation
        )
        return jnp.sum(logp_n)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def temp_bytes(implementation, n, d, v, dtype):
    shapes = (
        jax.ShapeDtypeStruct((n, d), dtype),
        jax.ShapeDtypeStruct((d, v), dtype),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    compiled = _fwd_bwd(implementation).lower(*shapes).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def time_ratio(reps):
    keys = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(keys[0], (TIME_N, TIME_D), jnp.float32)
    w = jax.random.normal(keys[1], (TIME_D, TIME_V), jnp.float32) * TIME_D**-0.5
    t = jax.random.randint(keys[2], (TIME_N,), 0, TIME_V)
    fns = {impl: _fwd_bwd(impl) for impl in ("xla", "chunked")}
    for fn in fns.values():
        jax.block_until_ready(fn(h, w, t))  # compile and warm up

    def timed(fn):
        start = time.perf_counter()
        jax.block_until_ready(fn(h, w, t))
        return time.perf_counter() - start

    # interleaved (xla, chunked, xla, ...) so that machine load hits both alike
    times = harness.interleave({impl: (lambda fn=fn: timed(fn)) for impl, fn in fns.items()}, reps)
    spreads = {impl: harness.spread(ts) for impl, ts in times.items()}
    return {impl: s["median"] for impl, s in spreads.items()}, spreads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", default=None, help="write the figures to this path")
    args = parser.parse_args()
    load = harness.LoadMonitor(own_threads=os.cpu_count())  # the memory figures are compile-time; the times are not

    backend = jax.default_backend()
    impls = ["xla", "chunked"] + ([f"pallas_{backend}"] if backend in ("gpu", "tpu") else [])
    memory = {}
    for n in MEMORY_NS:
        for impl in impls:
            memory[f"{impl}/N={n}"] = temp_bytes(impl, n, QWEN_D, QWEN_V, jnp.bfloat16)
    seconds, spreads = time_ratio(args.reps)
    load_record = load.record()

    print(f"## grouped log-prob, fwd+bwd temp memory (D={QWEN_D}, V={QWEN_V}, bf16), backend={backend}\n")
    print("| N | " + " | ".join(f"{i} temp" for i in impls) + " | xla / chunked |")
    print("|---|" + "---|" * (len(impls) + 1))
    ratios = {}
    for n in MEMORY_NS:
        ratios[n] = memory[f"xla/N={n}"] / memory[f"chunked/N={n}"]
        cells = " | ".join(f"{memory[f'{i}/N={n}'] / 2**20:,.1f} MiB" for i in impls)
        print(f"| {n} | {cells} | {ratios[n]:.0f}x |")
    time_ratio_value = seconds["chunked"] / seconds["xla"]
    print(f"\n## fwd+bwd time, N={TIME_N}, D={TIME_D}, V={TIME_V}, f32, median of {args.reps}, backend={backend}\n")
    print("| xla | chunked | chunked / xla |")
    print("|---|---|---|")
    print(f"| {seconds['xla'] * 1e3:.0f} ms | {seconds['chunked'] * 1e3:.0f} ms | {time_ratio_value:.2f} |")
    print(harness.table(spreads, "s, fwd+bwd", load_record))

    if args.json:
        figures = {
            "ratio": ratios[MEMORY_NS[-1]],
            "memory_ratio_by_n": {str(n): r for n, r in ratios.items()},
            "temp_bytes": memory,
            "seconds": seconds,
            "seconds_spread": spreads,
            "load_avg": load_record,
            "loaded": load_record["loaded"],
            "threads": harness.thread_settings(),
            "time_ratio_chunked_over_xla": time_ratio_value,
            "backend": backend,
            "jax": jax.__version__,
            "numpy": np.__version__,
        }
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
