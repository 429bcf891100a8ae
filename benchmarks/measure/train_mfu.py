"""Model FLOPs utilisation of a train step, against a matmul ceiling measured in the same run on the same device.

The step is the SFT trainer's own `train_step` (forward, next-token loss through the fused log-prob kernel,
backward, AdamW; jitted with the state donated) on a ~50M-parameter Qwen2-shaped model (default D=512, L=10, H=8,
F=1536, V=32768 tied) at sequence 512, f32. Model FLOPs per step:

    6 · N · tokens                 (N = all parameters; the tied embedding counts once, as the LM head matmul)
  + 12 · L · B · S² · D            (attention scores and values, forward + backward, full S×S as computed here)

and, for reference, XLA's own count for the compiled step (`cost_analysis()['flops']`, which also counts the
optimizer, the kernel's recomputation of logits in the backward pass and elementwise work). The ceiling is the
best time of a big f32 matmul (`--ceiling_n`³, jitted), plus a matmul of the model's own MLP shape. Step and
ceiling measurements alternate (the machine is shared), and the medians of the step time and of the matmul rate
give the headline `ratio` = model FLOP/s ÷ ceiling FLOP/s. Compilation is excluded (a first call per function).

    python -m benchmarks.measure.train_mfu --json /tmp/mfu.json
    python -m benchmarks.measure.train_mfu --layers 2 --seq 128 --repeats 2     # quick
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--embed_dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--mlp_dim", type=int, default=1536)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="alternating (ceiling, step) measurements")
    p.add_argument("--ceiling_n", type=int, default=2048, help="the ceiling matmul is n×n @ n×n, f32")
    p.add_argument("--implementation", default="auto", help="log-prob kernel implementation")
    p.add_argument("--json", default=None, help="write the figures here; the headline MFU vs ceiling is `ratio`")
    return p.parse_args()


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def main():
    args = parse_args()
    load = harness.LoadMonitor(own_threads=os.cpu_count())  # an MFU on a loaded machine measures the load
    from r1jax import sharding, train_state
    from r1jax.models import ModelConfig, init_model
    from r1jax.trainers import sft

    d, L, S, B = args.embed_dim, args.layers, args.seq, args.batch
    cfg = ModelConfig(
        vocab_size=args.vocab,
        embed_dim=d,
        mlp_dim=args.mlp_dim,
        num_layers=L,
        num_heads=args.heads,
        num_kv_heads=args.heads,
        head_dim=d // args.heads,
        qkv_bias=True,
        tie_embeddings=True,
        max_seq_len=S,
    )
    n_params = cfg.num_params()
    mesh = sharding.make_mesh((1, 1, 1)) if jax.device_count() == 1 else sharding.make_mesh((-1, 1, 1))
    optimizer = train_state.make_optimizer(train_state.optimizer_config(learning_rate=1e-4, decay="constant"), 1000)
    graphdef, state, state_sh = train_state.create_train_state(init_model(cfg, 0), optimizer, mesh, 0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, args.vocab, (B, S + 1), dtype=np.int32)
    batch = {
        "tokens_bt": tokens[:, :-1],
        "targets_bt": tokens[:, 1:],
        "segment_ids_bt": np.ones((B, S), np.int32),
        "positions_bt": np.broadcast_to(np.arange(S, dtype=np.int32), (B, S)).copy(),
        "loss_mask_bt": np.ones((B, S), np.float32),
    }
    batch_sh = jax.tree.map(lambda x: sharding.batch_sharding(mesh, x.ndim), batch)
    batch = jax.device_put(batch, batch_sh)
    step = jax.jit(
        functools.partial(sft.train_step, graphdef=graphdef, optimizer=optimizer, implementation=args.implementation),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, None),
        donate_argnums=0,
    )
    compiled = step.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    tokens_per_step = B * S
    model_flops = 6 * n_params * tokens_per_step + 12 * L * B * S * S * d

    n = args.ceiling_n
    a = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((n, n)), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    x_mlp = jnp.asarray(rng.standard_normal((tokens_per_step, d)), jnp.float32)
    w_mlp = jnp.asarray(rng.standard_normal((d, args.mlp_dim)), jnp.float32)
    timed(mm, a, b), timed(mm, x_mlp, w_mlp)  # compile

    state, _ = compiled(state, batch)  # first call (warm-up, not timed)
    jax.block_until_ready(state)
    step_s, ceiling_rates, mlp_rates = [], [], []
    for _ in range(args.repeats):
        ceiling_rates.append(2 * n**3 / min(timed(mm, a, b) for _ in range(3)))
        mlp_rates.append(2 * tokens_per_step * d * args.mlp_dim / min(timed(mm, x_mlp, w_mlp) for _ in range(3)))
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready((state, m))
        step_s.append(time.perf_counter() - t0)
    med_step, ceiling, mlp_ceiling = (
        statistics.median(step_s),
        statistics.median(ceiling_rates),
        statistics.median(mlp_rates),
    )
    achieved = model_flops / med_step
    load_record = load.record()
    figures = {
        "load_avg": load_record,
        "loaded": load_record["loaded"],
        "threads": harness.thread_settings(),
        "step_s_spread": harness.spread(step_s),
        "ceiling_flop_per_s_spread": harness.spread(ceiling_rates),
        "ratio": achieved / ceiling,
        "model_flops_per_step": model_flops,
        "xla_flops_per_step": xla_flops,
        "step_s_median": med_step,
        "step_s": step_s,
        "model_flop_per_s": achieved,
        "xla_flop_per_s": xla_flops / med_step,
        "ceiling_flop_per_s": ceiling,
        "ceiling_flop_per_s_all": ceiling_rates,
        "mlp_shaped_matmul_flop_per_s": mlp_ceiling,
        "mfu_vs_mlp_shaped_matmul": achieved / mlp_ceiling,
        "settings": {
            "params": n_params,
            "embed_dim": d,
            "layers": L,
            "heads": args.heads,
            "mlp_dim": args.mlp_dim,
            "vocab": args.vocab,
            "seq": S,
            "batch": B,
            "tokens_per_step": tokens_per_step,
            "dtype": "float32",
            "ceiling_matmul": f"{n}x{n} @ {n}x{n} f32",
            "repeats": args.repeats,
            "jax": jax.__version__,
            "device": str(jax.devices()[0]),
            "device_kind": jax.devices()[0].device_kind,
            "cpus": os.cpu_count(),
            "load_avg_1min": os.getloadavg()[0],
            "implementation": args.implementation,
        },
    }
    print(
        f"{n_params / 1e6:.1f}M params, B={B} S={S}: step {med_step:.3f} s (median of {len(step_s)}), "
        f"model {achieved / 1e9:.1f} GFLOP/s, XLA-counted {xla_flops / med_step / 1e9:.1f} GFLOP/s"
    )
    print(f"ceiling ({n}³ f32 matmul) {ceiling / 1e9:.1f} GFLOP/s, MLP-shaped matmul {mlp_ceiling / 1e9:.1f} GFLOP/s")
    print(f"MFU vs ceiling = {figures['ratio']:.1%}")
    print(harness.loaded_banner(load_record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
