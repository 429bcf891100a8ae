"""Rollout throughput: r1jax's cached group sampler vs a no-cache reference vs transformers' `generate`.

Same random weights and shapes for all three (default: a ~21M-parameter Qwen2-shaped model, P=8 prompts × G=8
samples, 32-token prompts, 128 new tokens, greedy, no EOS so every row decodes all tokens), f32:

  r1jax      `sampling.sample`: one prefill per prompt, KV cache repeated to G, jitted while_loop decode.
  no-cache   the full forward over the fixed (B, prompt + new) buffer per generated token, as
             `sampling.reference_generate` does; its per-step cost does not depend on the step, so only
             `--ref_steps` steps are timed and tokens/s = B / (time per step).
  hf         transformers' greedy `generate` (torch CPU f32) on the same B = P*G rows, weights exported with
             `r1jax.models.hf_io.save_hf_checkpoint`. Runs in a subprocess of `--torch_python` (an env with torch and
             transformers; jax is not needed there). Its tokens are compared with r1jax's.

Also reports the prefill FLOPs (XLA cost analysis) of the shared prefill (P rows) and of prefilling every copy
(P*G rows): the ratio should be G.

    python -m benchmarks.measure.rollout --json /tmp/rollout.json                       # full size
    python -m benchmarks.measure.rollout --prompts 4 --samples 4 --new_tokens 32 --small   # quick
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
import json, sys, time
import numpy as np, torch, transformers
ckpt, out_path, new_tokens, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[5]))
model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
ids = torch.from_numpy(np.load(ckpt + "/prompts_bt.npy")).long()
kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, eos_token_id=None)
with torch.no_grad():
    model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        times.append(time.perf_counter() - t0)
json.dump({"times": times, "tokens": out[:, ids.shape[1]:].tolist(), "threads": torch.get_num_threads()},
          open(out_path, "w"))
"""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8, help="P")
    p.add_argument("--samples", type=int, default=8, help="G")
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--small", action="store_true", help="a ~1M-parameter model instead of ~21M")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per method, interleaved (medians reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="CPUs both r1jax and torch are pinned to")
    p.add_argument("--ref_steps", type=int, default=3, help="no-cache steps timed")
    p.add_argument("--torch_python", default=os.environ.get("R1JAX_TORCH_PYTHON", ".venv-torch/bin/python"))
    p.add_argument("--skip_hf", action="store_true")
    p.add_argument("--json", default=None, help="write the figures here; the headline r1jax / hf ratio is `ratio`")
    return p.parse_args()


def main():
    args = parse_args()
    threads = harness.pin_threads(args.threads)  # before jax starts: XLA sizes its pool from the allowed CPUs
    load = harness.LoadMonitor(own_threads=args.threads)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from r1jax import sampling
    from r1jax.models import get_preset, init_model

    if args.small:
        dims = dict(vocab_size=2048, embed_dim=128, mlp_dim=384, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32)
    else:
        dims = dict(
            vocab_size=8192, embed_dim=512, mlp_dim=1408, num_layers=6, num_heads=8, num_kv_heads=2, head_dim=64
        )
    cfg = get_preset("tiny", **dims, max_seq_len=4096)
    model = init_model(cfg, seed=0)
    graphdef, params = nnx.split(model)
    p, g, tp, tn = args.prompts, args.samples, args.prompt_len, args.new_tokens
    b = p * g
    prompts_pt = np.random.default_rng(0).integers(1, cfg.vocab_size, size=(p, tp)).astype(np.int32)
    prompts = prompts_pt.tolist()
    config = sampling.SamplingConfig(num_samples=g, max_new_tokens=tn, greedy=True, prompt_bucket=tp)
    figures = dict(params=cfg.num_params(), P=p, G=g, prompt_len=tp, new_tokens=tn, backend=jax.default_backend())
    print(f"model {cfg.num_params() / 1e6:.1f}M params, P={p} G={g} prompt={tp} new={tn}, {jax.default_backend()}")

    # r1jax
    def run_r1jax():
        r = sampling.sample(graphdef, params, prompts, jax.random.key(0), config)
        return jax.block_until_ready(r)

    t0 = time.perf_counter()
    rollout = run_r1jax()
    figures["r1jax_compile_and_first_run_s"] = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rollout = run_r1jax()
        times.append(time.perf_counter() - t0)
    figures["r1jax_tokens_per_s"] = b * tn / harness.spread(times)["median"]
    r1jax_tokens_bt = np.asarray(rollout.completion_tokens_bt)

    # no-cache reference: time single steps over the full-length buffer
    tokens_pt, mask_pt = sampling.pad_prompts(prompts, config)
    buf_bt = jnp.asarray(np.concatenate([np.repeat(tokens_pt, g, 0), np.zeros((b, tn), np.int32)], 1))
    mask_bt = jnp.asarray(np.concatenate([np.repeat(mask_pt, g, 0), np.zeros((b, tn), bool)], 1))
    step = jax.jit(sampling.no_cache_step, static_argnums=(0, 5))
    buf = jax.block_until_ready(step(graphdef, params, buf_bt, mask_bt, 0, tp))
    t0 = time.perf_counter()
    for t in range(args.ref_steps):
        buf = step(graphdef, params, buf, mask_bt, t, tp)
    jax.block_until_ready(buf)
    figures["no_cache_tokens_per_s"] = b * args.ref_steps / (time.perf_counter() - t0)

    # prefill FLOPs, shared vs per copy
    def prefill_flops(share):
        fn = jax.jit(
            lambda prm, tok, msk: sampling.decode.prefill(
                nnx.merge(graphdef, prm), tok, msk, config.replace(share_prefill=share), None
            )
        )
        cost = fn.lower(params, tokens_pt, mask_pt).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost["flops"])

    figures["prefill_flops_shared"] = prefill_flops(True)
    figures["prefill_flops_per_copy"] = prefill_flops(False)
    figures["prefill_flops_ratio"] = figures["prefill_flops_per_copy"] / figures["prefill_flops_shared"]

    # transformers
    if not args.skip_hf and os.path.exists(args.torch_python):
        from r1jax.models.hf_io import save_hf_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            save_hf_checkpoint(model, tmp)
            np.save(os.path.join(tmp, "prompts_bt.npy"), np.repeat(prompts_pt, g, 0))
            out = os.path.join(tmp, "hf.json")
            hf_times = []
            for _ in range(args.repeats):  # transformers, r1jax, transformers, r1jax ...: load drift hits both
                proc = subprocess.run(
                    [args.torch_python, "-c", HF_WORKER, tmp, out, str(tn), "1", str(args.threads)],
                    cwd=tmp,  # not the repository root, whose `kernels/` folder transformers would import as `kernels`
                    env=harness.torch_env(args.threads),
                    capture_output=True,
                    text=True,
                )
                if proc.returncode:
                    sys.exit(f"transformers worker failed:\n{proc.stderr[-3000:]}")
                hf = json.load(open(out))
                hf_times += hf["times"]
                t0 = time.perf_counter()
                run_r1jax()
                times.append(time.perf_counter() - t0)
        figures["r1jax_tokens_per_s"] = b * tn / harness.spread(times)["median"]
        figures["hf_tokens_per_s"] = b * tn / harness.spread(hf_times)["median"]
        figures["hf_seconds_spread"] = harness.spread(hf_times)
        figures["hf_torch_threads"] = hf["threads"]
        figures["hf_token_agreement"] = float(np.mean(np.asarray(hf["tokens"]) == r1jax_tokens_bt))
        figures["ratio"] = figures["r1jax_tokens_per_s"] / figures["hf_tokens_per_s"]

    figures["r1jax_seconds_spread"] = harness.spread(times)
    figures["load_avg"] = load.record()
    figures["loaded"] = figures["load_avg"]["loaded"]
    figures["threads"] = threads
    rows = [
        ("r1jax (KV cache, shared prefill)", figures["r1jax_tokens_per_s"]),
        ("no-cache reference", figures["no_cache_tokens_per_s"]),
    ]
    if "hf_tokens_per_s" in figures:
        rows.append(("transformers generate (torch CPU f32)", figures["hf_tokens_per_s"]))
    print(f"{'method':40s} {'tokens/s':>10s} {'r1jax / this':>13s}")
    for name, tps in rows:
        print(f"{name:40s} {tps:10.1f} {figures['r1jax_tokens_per_s'] / tps:13.2f}")
    print(
        f"prefill GFLOPs: shared {figures['prefill_flops_shared'] / 1e9:.3f}, per copy "
        f"{figures['prefill_flops_per_copy'] / 1e9:.3f}, ratio {figures['prefill_flops_ratio']:.2f} (G={g})"
    )
    spreads = {"r1jax": figures["r1jax_seconds_spread"]}
    if "hf_seconds_spread" in figures:
        spreads["transformers"] = figures["hf_seconds_spread"]
    print(harness.table(spreads, f"s per rollout of {b * tn} tokens", figures["load_avg"]))
    if "hf_token_agreement" in figures:
        print(f"greedy tokens equal to transformers': {100 * figures['hf_token_agreement']:.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
