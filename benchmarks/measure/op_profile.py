"""Where a train step's time goes, op by op: XLA's own profile of the SFT trainer's jitted step, summed per op.

Runs `r1jax.trainers.sft.train_step` (forward, fused log-prob loss, backward, AdamW; the state donated) at a model
shape, records `--steps` calls with `jax.profiler.trace` (a Perfetto trace), and sums each XLA op's time over them.
Each op is printed with its output shape and the JAX operation it came from (the compiled HLO's `op_name`), and
ops are grouped into kinds:

  matmul     fusions around a dot (XLA:CPU's `ynn_fusion` / `dot`), elementwise work fused into them included
  transpose  copies that change a layout (`copy_*`, `transpose_*` fusions): no arithmetic at all
  other      elementwise and reduction fusions, broadcasts, slices, ...

Op times are wall times of concurrently scheduled thunks on a shared thread pool, so their sum exceeds the step
time; the shares are what to read. The default shape is the tiny preset at the built-in stage 0's batch
(D=128, L=4, H=4, K=2, F=384, V=384; B=16 × S=256).

    python -m benchmarks.measure.op_profile                       # tiny preset, stage-0 batch
    python -m benchmarks.measure.op_profile --embed_dim 512 --layers 10 --heads 8 --kv_heads 8 --mlp_dim 1536 \\
        --vocab 32768 --seq 512 --batch 4 --top 20 --json /tmp/ops.json
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import tempfile

from benchmarks import harness


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embed_dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--mlp_dim", type=int, default=384)
    p.add_argument("--vocab", type=int, default=384)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="profiled calls (after one untimed)")
    p.add_argument("--top", type=int, default=15, help="ops printed")
    p.add_argument("--json", default=None)
    return p.parse_args()


def op_kind(name: str) -> str:
    if name.startswith(("ynn_fusion", "dot", "xnn_fusion", "onednn")):
        return "matmul"
    if name.startswith(("copy", "transpose")):
        return "transpose"
    return "other"


def hlo_ops(hlo_text: str) -> dict:
    """op name -> (output shape, JAX op_name) from a compiled module's text."""
    ops = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ", line)
        if m:
            src = re.search(r'op_name="([^"]*)"', line)
            ops[m.group(1)] = (m.group(2), src.group(1) if src else "")
    return ops


def profile_ops(fn, args, steps: int) -> dict:
    """op name -> mean milliseconds per call, from a Perfetto trace of `steps` calls of the jitted `fn`."""
    import jax

    jax.block_until_ready(fn(*args))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(fn(*args))
        (trace,) = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(trace) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and not name.startswith(("$", "Thunk", "Pjit", "PjRt", "Execute", "CommonPjRt")):
            totals[name] += e.get("dur", 0) / steps / 1e3
    return dict(totals)


def main():
    args = parse_args()
    load = harness.LoadMonitor(own_threads=os.cpu_count())
    import jax
    import numpy as np

    from r1jax import sharding, train_state
    from r1jax.models import ModelConfig, init_model
    from r1jax.trainers import sft

    cfg = ModelConfig(
        vocab_size=args.vocab, embed_dim=args.embed_dim, mlp_dim=args.mlp_dim, num_layers=args.layers,
        num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.embed_dim // args.heads, qkv_bias=True,
        tie_embeddings=True, max_seq_len=args.seq,
    )
    optimizer = train_state.make_optimizer(train_state.optimizer_config(learning_rate=1e-4, decay="constant"), 1000)
    graphdef, state, _ = train_state.create_train_state(init_model(cfg, 0), optimizer, sharding.make_mesh((1, 1, 1)), 0)
    B, S = args.batch, args.seq
    tokens = np.random.default_rng(0).integers(0, args.vocab, (B, S + 1), dtype=np.int32)
    batch = {
        "tokens_bt": tokens[:, :-1], "targets_bt": tokens[:, 1:], "segment_ids_bt": np.ones((B, S), np.int32),
        "positions_bt": np.broadcast_to(np.arange(S, dtype=np.int32), (B, S)).copy(),
        "loss_mask_bt": np.ones((B, S), np.float32),
    }
    step = jax.jit(functools.partial(sft.train_step, graphdef=graphdef, optimizer=optimizer, implementation="auto"))
    ops = hlo_ops(step.lower(state, batch).compile().as_text())
    step_s = harness.call_times(args.steps, lambda s: step(s, batch)[1], state)
    totals = profile_ops(lambda s: step(s, batch)[1], (state,), args.steps)
    kinds = collections.Counter()
    for name, ms in totals.items():
        kinds[op_kind(name)] += ms
    op_sum = sum(totals.values())
    print(f"{cfg.num_params() / 1e6:.1f}M params, B={B} S={S}: step {1e3 * min(step_s):.1f} ms (best of {args.steps});"
          f" ops sum to {op_sum:.1f} ms")
    print("| kind | ms | share of op time |\n|---|---|---|")
    for kind, ms in kinds.most_common():
        print(f"| {kind} | {ms:.1f} | {ms / op_sum:.0%} |")
    print("| op | ms | output | from |\n|---|---|---|---|")
    top = []
    for name, ms in collections.Counter(totals).most_common(args.top):
        shape, src = ops.get(name, ("", ""))
        top.append({"op": name, "ms": ms, "kind": op_kind(name), "shape": shape, "from": src})
        print(f"| {name} | {ms:.1f} | {shape} | {src[-70:]} |")
    load_record = load.record()
    print(harness.loaded_banner(load_record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "shape": vars(args), "step_ms_best": 1e3 * min(step_s), "op_ms_sum": op_sum,
                "kind_ms": dict(kinds), "top_ops": top, "load_avg": load_record, "loaded": load_record["loaded"],
                "threads": harness.thread_settings(),
            }, f, indent=1)


if __name__ == "__main__":
    main()
