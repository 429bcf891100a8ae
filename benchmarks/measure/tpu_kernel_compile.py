"""Compiles the grouped log-prob and KL kernels (value and gradient) for every TPU generation, no TPU needed.

The matrix of tests/test_tpu_compile.py as a table: kernel × chip (v4, v5e, v5p, v6e) × Qwen2.5 head (0.5B,
1.5B, 7B, 32B) × dtype (bf16, f32), N tokens, through libtpu's compile-only client. Per case: whether it
compiled, the compile time, the Mosaic calls in the program, and for each of the three kernels (forward, dh,
dW) the block sizes the VMEM rule chose, its VMEM footprint estimate and the limit set (kernels/_tpu.py).

    ALLOW_MULTIPLE_LIBTPU_LOAD=1 python -m benchmarks.measure.tpu_kernel_compile [--n 16384] [--json out.json]

`--vocab-study`: instead, per-chip memory of the value-and-gradient program on v5e:2x2 as mesh (1, 1, 4) with the
vocabulary split over 'tensor' inside shard_map (what the kernels do) against the head gathered onto every chip.
"""

import argparse
import json
import time

import jax.numpy as jnp

from r1jax.kernels import _sharded, _tpu, tpu_compile
from r1jax.kernels.grouped_logprob import pallas_tpu as logprob_tpu
from r1jax.kernels.kl import pallas_tpu as kl_tpu

MIB = 2**20


def _blocks(kernel, chip, head, dtype, n):
    """'fwd/dh/dw: (bn, bv) est MiB' for the three kernels of one case, and the VMEM limit in MiB."""
    import jax

    kind = tpu_compile.topology_devices(tpu_compile.CHIPS[chip])[0].device_kind
    d, v = tpu_compile.HEADS[head]
    h = jax.ShapeDtypeStruct((n, d), dtype)
    w = jax.ShapeDtypeStruct((d, v), dtype)
    out = []
    for part in ("fwd", "dh", "dw"):
        if kernel == "logprob":
            bn, bv, limit = logprob_tpu._blocks(part, h, w, None, None, kind)
        else:
            bn, bv, limit = kl_tpu._blocks(part, h, h, v, None, None, kind)
        out.append(f"{part} {bn}x{bv}")
    return ", ".join(out), _tpu.vmem_limit_bytes(kind) // MIB


def vocab_study(n: int):
    print("| kernel | head | vocabulary | argument GiB | output GiB | temp GiB | compile s | Mosaic calls |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kernel in ("logprob", "kl"):
        for head in ("0.5b", "7b"):
            for name, axis in (("split", "tensor"), ("gathered", None)):
                _sharded.VOCAB_AXIS = axis
                compiled, secs = tpu_compile.compile_kernel(kernel, "v5e", head, jnp.bfloat16, n, mesh_shape=(1, 1, 4))
                m = compiled.memory_analysis()
                gib = [x / 2**30 for x in (m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes)]
                print(f"| {kernel} | {head} | {name} | {gib[0]:.2f} | {gib[1]:.2f} | {gib[2]:.2f} | {secs:.1f} "
                      f"| {tpu_compile.mosaic_calls(compiled)} |", flush=True)
    _sharded.VOCAB_AXIS = "tensor"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--json", default=None)
    parser.add_argument("--vocab-study", action="store_true")
    args = parser.parse_args()
    if args.vocab_study:
        return vocab_study(args.n)
    rows, start = [], time.perf_counter()
    print("| kernel | chip | head | dtype | compiles | compile s | Mosaic calls | blocks (bn x bv) | VMEM limit MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kernel in ("logprob", "kl"):
        for chip in tpu_compile.CHIPS:
            for head in tpu_compile.HEADS:
                for name, dtype in (("bf16", jnp.bfloat16), ("f32", jnp.float32)):
                    try:
                        compiled, secs = tpu_compile.compile_kernel(kernel, chip, head, dtype, args.n)
                        ok, calls, err = True, tpu_compile.mosaic_calls(compiled), ""
                    except Exception as e:  # the compiler's error is the measurement
                        ok, secs, calls, err = False, float("nan"), 0, str(e).splitlines()[0][:200]
                    blocks, limit = _blocks(kernel, chip, head, dtype, args.n)
                    rows.append(dict(kernel=kernel, chip=chip, head=head, dtype=name, compiles=ok,
                                     compile_s=round(secs, 2), mosaic_calls=calls, blocks=blocks,
                                     vmem_limit_mib=limit, error=err))
                    print(f"| {kernel} | {chip} | {head} | {name} | {'yes' if ok else 'NO ' + err} | {secs:.1f} "
                          f"| {calls} | {blocks} | {limit} |", flush=True)
    total = time.perf_counter() - start
    print(f"\n{sum(r['compiles'] for r in rows)}/{len(rows)} compile; {total:.0f} s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "total_s": total, "cases": rows}, f, indent=1)


if __name__ == "__main__":
    main()
