"""Why decode at 16 rows is far from its memory roofline on XLA:CPU: the 16-row matmuls themselves.

Times `x @ w` alone for the Qwen2.5-0.5B decode shapes at M = 16 rows (the MLP's up / gate and down
projections, the 151,936-wide LM head), against a 1-row matrix-vector product over the same weight, the streaming
read bandwidth, and one large square matmul, under each XLA:CPU matmul library the installed jaxlib can select
(the default, `--xla_cpu_use_xnnpack=true`, `--xla_cpu_use_onednn=true`). Each library runs in a fresh process
(XLA_FLAGS is read when the CPU client starts), pinned to `--threads` CPUs; best of `--repeats` timings.
A 16-row matmul reads the weight once, as a 1-row one does, and does 16× the FLOPs, which at these shapes is still
below the matmul ceiling: at the read bandwidth it should take about as long as the 1-row product.

    python -m benchmarks.measure.decode_gemm --json /tmp/decode_gemm.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks import harness

LIBRARIES = {"default": "", "xnnpack": "--xla_cpu_use_xnnpack=true", "onednn": "--xla_cpu_use_onednn=true"}
SHAPES = [(16, 896, 4864), (1, 896, 4864), (16, 4864, 896), (16, 896, 151936), (1, 896, 151936), (1024, 1024, 1024)]


def measure(repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    rows = []
    for m, k, n in SHAPES:
        x = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
        w = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
        s = harness.best_time(repeats, jax.jit(lambda a, b: a @ b), x, w)
        rows.append({"m": m, "k": k, "n": n, "ms": 1e3 * s, "gflop_s": 2 * m * k * n / s / 1e9,
                     "weight_gb_s": 4 * k * n / s / 1e9})
    return {"rows": rows, "read_bandwidth_gb_s": harness.read_bandwidth() / 1e9}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", default=None)
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    threads = harness.pin_threads(args.threads)
    if args._worker:
        print(json.dumps(measure(args.repeats)))
        return
    load = harness.LoadMonitor(own_threads=args.threads)
    results = {}
    for name, flag in LIBRARIES.items():
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip())
        cmd = [sys.executable, "-m", __spec__.name, "--_worker", f"--repeats={args.repeats}",
               f"--threads={args.threads}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    record = load.record()
    print(f"x @ w, f32, best of {args.repeats}, {args.threads} CPUs; read bandwidth "
          + ", ".join(f"{k} {v['read_bandwidth_gb_s']:.1f}" for k, v in results.items()) + " GB/s")
    print("| M × K × N | " + " | ".join(f"{k}: ms, GFLOP/s, weight GB/s" for k in results) + " |")
    print("|---|" + "---|" * len(results))
    for i, (m, k, n) in enumerate(SHAPES):
        cells = [f"{r['rows'][i]['ms']:.2f}, {r['rows'][i]['gflop_s']:.1f}, {r['rows'][i]['weight_gb_s']:.1f}"
                 for r in results.values()]
        print(f"| {m} × {k} × {n} | " + " | ".join(cells) + " |")
    print(harness.loaded_banner(record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "load_avg": record, "threads": threads, "shapes": SHAPES}, f, indent=2)


if __name__ == "__main__":
    main()
