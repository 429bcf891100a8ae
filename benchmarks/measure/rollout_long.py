"""Rollouts at R1 lengths: continuous vs static batching, vs transformers' `generate`, and decode vs the roofline.

R1-style completions are long and their lengths have a heavy tail. The workload: P×G samples (default 8×8 = 64)
whose lengths are drawn from a log-normal whose 95th percentile is 8× its median, clipped to [1, max_new_tokens].
Models have random weights, so a sample would not stop by itself: every sample is stopped at its predrawn length
(`sampling.sample(..., budgets=lengths)`), so both schedulers do exactly the same useful work (and are checked to
return the same tokens). Sampling uses R1's evaluation setting, T = 0.6, top-p = 0.95. The embedding (tied LM head)
is drawn with std 0.2 instead of 0.02, so that next-token distributions are peaked like a trained model's rather
than nearly uniform over the vocabulary.

  static       `SamplingConfig(scheduler='static')`: all P·G rows decode until the longest sample stops.
  continuous   `SamplingConfig(scheduler='continuous', num_slots=--slots)`: slots refilled as samples stop.
  hf           transformers' `generate` (torch CPU f32, do_sample, same T / top-p) on the same P·G rows and weights
               (exported with `r1jax.models.hf_io.save_hf_checkpoint`). `generate` decodes every row until the last
               one stops, so its time for P·G rows × max(lengths) new tokens is its time for this workload; it
               runs in a subprocess of `--torch_python` (default $R1JAX_TORCH_PYTHON).

Useful tokens/s = sum(lengths) / wall time of the rollout (prefill included, compilation excluded).

Both sides get the same CPU cores (`--threads`: the process and the torch worker are pinned to the same first N
cores, torch.set_num_threads(N)); the load average is recorded before and after, since the figures mean something
only on an otherwise idle machine.

At the Qwen2.5-0.5B shape (random weights, V = 151,936) it also measures:
  decode step time for batch 1 and 16 (budgets 1 vs 1 + --decode_steps: the difference is that many decode steps)
  against the memory-bandwidth roofline (bytes of weights + valid KV read per step / read bandwidth measured in
  the same run: the best of a sum and a matrix-vector product over a 1 GiB f32 matrix; a copy's read + write
  bandwidth is lower and is reported beside it), and the share of a decode step spent after the LM head
  (`select_tokens` on the step's (B, V) logits, timed alone, over the decode step time).

    # full run (idle machine; tens of minutes on 2 CPU cores):
    R1JAX_TORCH_PYTHON=/work/torchenv/bin/python python -m benchmarks.measure.rollout_long --json /tmp/rollout_long.json
    # the decode and sampling figures alone (minutes):
    python -m benchmarks.measure.rollout_long --models "" --json /tmp/rollout_decode.json
    # check that it works (minutes):
    R1JAX_TORCH_PYTHON=/work/torchenv/bin/python python -m benchmarks.measure.rollout_long --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import harness

HF_WORKER = r"""
import json, os, sys, time
import numpy as np, torch, transformers
ckpt, out_path, new_tokens, repeats, cores = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cores = [int(c) for c in cores.split(",")]
os.sched_setaffinity(0, cores)
torch.set_num_threads(len(cores))
torch.manual_seed(0)
model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
ids = torch.from_numpy(np.load(ckpt + "/prompts_bt.npy")).long()
kw = dict(attention_mask=torch.ones_like(ids), do_sample=True, temperature=0.6, top_p=0.95, top_k=0,
          pad_token_id=0, eos_token_id=None)
with torch.no_grad():
    model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        times.append(time.perf_counter() - t0)
json.dump({"seconds": min(times), "threads": torch.get_num_threads(), "cores": sorted(os.sched_getaffinity(0))},
          open(out_path, "w"))
"""

MODELS = {
    "21m": dict(vocab_size=8192, embed_dim=512, mlp_dim=1408, num_layers=6, num_heads=8, num_kv_heads=2, head_dim=64),
    "0.5b": None,  # the qwen2.5-0.5b preset
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="21m,0.5b", help="comma-separated: 21m, 0.5b")
    p.add_argument("--prompts", type=int, default=8, help="P")
    p.add_argument("--samples", type=int, default=8, help="G")
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--median", type=int, default=48, help="median completion length (21M model)")
    p.add_argument("--median_0_5b", type=int, default=12, help="median completion length (0.5B shape)")
    p.add_argument("--p95_ratio", type=float, default=8.0, help="95th percentile / median of the lengths")
    p.add_argument("--cap_ratio", type=float, default=16.0, help="max_new_tokens = cap_ratio × median")
    p.add_argument("--slots", type=int, default=16, help="continuous scheduler's decode slots")
    p.add_argument("--decode_steps", type=int, default=16, help="decode steps timed at the 0.5B shape")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per method (the best is reported)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="cores for each side")
    p.add_argument("--torch_python", default=os.environ.get("R1JAX_TORCH_PYTHON", ".venv-torch/bin/python"))
    p.add_argument("--skip_hf", action="store_true")
    p.add_argument("--quick", action="store_true", help="small lengths, 21M workload only with the 0.5B decode")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args()
    if args.quick:
        args.median, args.median_0_5b, args.decode_steps, args.repeats = 8, 4, 4, 1
        args.models = "21m"
    return args


def lognormal_lengths(n, median, p95_ratio, cap, seed=0):
    """n lengths from a log-normal with the given median and 95th percentile / median, clipped to [1, cap]."""
    import numpy as np

    sigma = np.log(p95_ratio) / 1.6448536  # z of the 95th percentile
    lengths = np.exp(np.log(median) + sigma * np.random.default_rng(seed).standard_normal(n))
    return np.clip(np.round(lengths), 1, cap).astype(np.int32)


def prefill_logits(graphdef, params, tokens_pt, mask_pt, config):
    """The (P·G, V) next-token logits after the prompts: real logits of the model to time the sampling on."""
    import jax
    from flax import nnx

    from r1jax import sampling

    fn = jax.jit(lambda prm, t, m: sampling.decode.prefill(nnx.merge(graphdef, prm), t, m, config, None)[1])
    return fn(params, tokens_pt, mask_pt)


def main():
    args = parse_args()
    cores = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cores)  # before jax starts its thread pools
    load_before = os.getloadavg()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from r1jax import sampling
    from r1jax.models import get_preset, init_model
    from r1jax.models.hf_io import save_hf_checkpoint

    figures = dict(backend=jax.default_backend(), threads=len(cores), cores=cores, load_before=load_before)
    sample_kw = dict(temperature=0.6, top_p=0.95)
    print(f"{jax.default_backend()}, {len(cores)} cores {cores}, load average {load_before}")

    def build(name):
        if MODELS[name] is None:
            cfg = get_preset("qwen2.5-0.5b", max_seq_len=4096)
        else:
            cfg = get_preset("tiny", **MODELS[name], max_seq_len=4096)
        model = init_model(cfg, seed=0)
        model.embed[...] = model.embed[...] * 10.0  # std 0.2: peaked next-token distributions (module docstring)
        return cfg, model

    bandwidth = harness.copy_bandwidth(256 if args.quick else 1024)
    print(f"copy bandwidth {bandwidth / 1e9:.2f} GB/s")

    # -- long-tailed workload: static vs continuous vs transformers -------------------------------------------
    p, g = args.prompts, args.samples
    for name in [m for m in args.models.split(",") if m]:
        cfg, model = build(name)
        graphdef, params = nnx.split(model)
        median = args.median_0_5b if name == "0.5b" else args.median
        cap = int(args.cap_ratio * median)
        lengths = lognormal_lengths(p * g, median, args.p95_ratio, cap)
        prompts_pt = np.random.default_rng(1).integers(1, cfg.vocab_size, size=(p, args.prompt_len)).astype(np.int32)
        prompts = prompts_pt.tolist()
        base = sampling.SamplingConfig(
            num_samples=g, max_new_tokens=int(lengths.max()), prompt_bucket=args.prompt_len, **sample_kw
        )
        useful = int(lengths.sum())
        row = dict(
            params=cfg.num_params(), P=p, G=g, prompt_len=args.prompt_len, median=float(np.median(lengths)),
            p95=float(np.percentile(lengths, 95)), max=int(lengths.max()), useful_tokens=useful,
        )
        print(
            f"\n[{name}] {cfg.num_params() / 1e6:.0f}M params, V={cfg.vocab_size}, P×G={p}×{g}, lengths median "
            f"{row['median']:.0f} p95 {row['p95']:.0f} max {row['max']} sum {useful}"
        )
        tokens = {}
        for sched, config in [
            ("static", base),
            ("continuous", base.replace(scheduler="continuous", num_slots=args.slots)),
        ]:
            run_args = (sampling.sample, graphdef, params, prompts, jax.random.key(0), config)
            t0 = time.perf_counter()
            r = jax.block_until_ready(sampling.sample(*run_args[1:], budgets=lengths))
            row[f"{sched}_first_run_s"] = time.perf_counter() - t0
            seconds = harness.best_time(args.repeats, *run_args, warmup=False, budgets=lengths)
            tokens[sched] = np.asarray(r.completion_tokens_bt)
            row[f"{sched}_tokens_per_s"] = useful / seconds
            kv = sampling.kv_cache_bytes(cfg, config, p, args.prompt_len)
            row[f"{sched}_kv_cache_mb"] = (kv["prefill"] + kv["decode"]) / 2**20
            mib = row[f"{sched}_kv_cache_mb"]
            print(f"  {sched:11s} {useful / seconds:9.1f} useful tokens/s   KV cache {mib:.1f} MiB")
        if not np.array_equal(tokens["static"], tokens["continuous"]):
            sys.exit("static and continuous rollouts differ: the comparison would not be of the same work")
        row["ratio"] = row["continuous_tokens_per_s"] / row["static_tokens_per_s"]
        if not args.skip_hf and os.path.exists(args.torch_python):
            with tempfile.TemporaryDirectory() as tmp:
                save_hf_checkpoint(model, tmp)
                np.save(os.path.join(tmp, "prompts_bt.npy"), np.repeat(prompts_pt, g, 0))
                out = os.path.join(tmp, "hf.json")
                proc = subprocess.run(
                    [args.torch_python, "-c", HF_WORKER, tmp, out, str(int(lengths.max())), str(args.repeats),
                     ",".join(map(str, cores))],
                    cwd=tmp,  # not the repository root, whose `kernels/` folder transformers would import
                    capture_output=True, text=True,
                )
                if proc.returncode:
                    sys.exit(f"transformers worker failed:\n{proc.stderr[-3000:]}")
                hf = json.load(open(out))
            row["hf_tokens_per_s"] = useful / hf["seconds"]
            row["hf_threads"] = hf["threads"]
            row["ratio_vs_hf"] = row["continuous_tokens_per_s"] / row["hf_tokens_per_s"]
            print(f"  {'hf':11s} {row['hf_tokens_per_s']:9.1f} useful tokens/s   ({hf['threads']} torch threads)")
        print(f"  continuous / static {row['ratio']:.2f}" + (
            f", continuous / hf {row['ratio_vs_hf']:.2f}" if "ratio_vs_hf" in row else ""))
        figures[name] = row
        del model, graphdef, params

    # -- decode at the Qwen2.5-0.5B shape vs the bandwidth roofline; sampling share ------------------------
    # A decode step streams the weights (and the KV) and writes almost nothing, so its ceiling is the read
    # bandwidth, measured here next to the decode timings; a copy (read + write) gives a lower figure, also kept.
    figures["copy_bandwidth_gb_s"] = max(bandwidth, harness.copy_bandwidth(256 if args.quick else 1024)) / 1e9
    bandwidth = harness.read_bandwidth(8192 if args.quick else 16384)
    figures["read_bandwidth_gb_s"] = bandwidth / 1e9
    cfg, model = build("0.5b")
    graphdef, params = nnx.split(model)
    tp, steps = args.prompt_len, args.decode_steps
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    kv_per_token = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(cfg.dtype).itemsize
    print(
        f"\n[decode] Qwen2.5-0.5B shape, {weight_bytes / 2**30:.2f} GiB of weights, {steps} steps timed, read "
        f"bandwidth {bandwidth / 1e9:.2f} GB/s (copy {figures['copy_bandwidth_gb_s']:.2f} GB/s)"
    )
    for batch, (pp, gg) in [(1, (1, 1)), (16, (2, 8))]:
        config = sampling.SamplingConfig(num_samples=gg, max_new_tokens=1 + steps, prompt_bucket=tp, **sample_kw)
        prompts = np.random.default_rng(2).integers(1, cfg.vocab_size, size=(pp, tp)).tolist()
        run_args = (sampling.sample, graphdef, params, prompts, jax.random.key(0), config)
        jax.block_until_ready(sampling.sample(*run_args[1:], budgets=[1] * batch))  # compile
        long_s = harness.best_time(args.repeats, *run_args, warmup=False, budgets=[1 + steps] * batch)
        step_s = (long_s - harness.best_time(args.repeats, *run_args, warmup=False, budgets=[1] * batch)) / steps
        kv_bytes = batch * kv_per_token * (tp + steps / 2)  # valid keys and values, on average over the steps
        roofline_s = (weight_bytes + kv_bytes) / bandwidth
        figures[f"decode_step_ms_b{batch}"] = 1e3 * step_s
        figures[f"roofline_ms_b{batch}"] = 1e3 * roofline_s
        figures[f"roofline_fraction_b{batch}"] = roofline_s / step_s
        print(
            f"  batch {batch:2d}: {1e3 * step_s:8.1f} ms/step, roofline {1e3 * roofline_s:7.1f} ms "
            f"-> {100 * roofline_s / step_s:.0f}% of the roofline"
        )
        if batch == 16:
            tokens_pt, mask_pt = sampling.pad_prompts(prompts, config)
            logits_bv = jax.block_until_ready(prefill_logits(graphdef, params, tokens_pt, mask_pt, config))
            keys_b = sampling.row_keys(jax.random.key(3), batch)
            select = jax.jit(sampling.select_tokens, static_argnums=2)
            jax.block_until_ready(select(logits_bv, keys_b, config))
            sample_s = harness.best_time(5, select, logits_bv, keys_b, config, warmup=False)
            figures["sampling_ms_b16"] = 1e3 * sample_s
            figures["sampling_share"] = sample_s / step_s
            kept = np.isfinite(np.asarray(sampling.process_logits(logits_bv, config))).sum(-1)
            figures["nucleus_size_median"] = float(np.median(kept))
            print(
                f"  sampling (T=0.6, top-p 0.95, V={cfg.vocab_size}): {1e3 * sample_s:.2f} ms = "
                f"{100 * sample_s / step_s:.1f}% of a batch-16 step (median nucleus {np.median(kept):.0f} tokens)"
            )

    figures["load_after"] = os.getloadavg()
    head = figures.get("21m") or next((figures[m] for m in ("0.5b",) if m in figures), {})
    for key in ("ratio", "ratio_vs_hf"):
        if key in head:
            figures[key] = head[key]
    print(f"\nload average before {load_before}, after {figures['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
