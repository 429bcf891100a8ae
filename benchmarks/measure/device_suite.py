"""One-shot accelerator suite: kernels against their oracle, train-step MFU, decode against its roofline, rollout.

Run on a GPU (or TPU) it finishes within ~8 minutes and writes one JSON; each section is guarded, so a failure is
recorded under its name (`ok: false`, the error) and the other sections still run:

  ceilings   the two numbers every other figure is measured against, taken in this run on this device: the rate
             of a large square matmul (bf16 on an accelerator) and the bandwidth of a large elementwise pass
             (bytes read + bytes written over its time)
  kernels    the grouped log-prob (log π, entropy) and the exact KL, implementations 'xla', 'chunked' and 'pallas'
             (compiled on the device; interpret mode on CPU) at the Qwen2.5-1.5B head (D = 1536, V = 151,936),
             inputs in bf16: each one's values and gradients (under random cotangents) against the 'xla' oracle on
             f32-upcast inputs (relative L2 error and max abs error; `passed` against a dtype tolerance), its
             forward+backward time (median, spread) and its memory (the compiled program's temp bytes and, where
             the device reports it, the process-wide peak after it ran)
  train      the SFT trainer's `train_step` (forward, loss, backward, AdamW) at the Qwen2.5-0.5B shape in bf16
             compute (random weights): model FLOPs 6·N·T + 12·L·B·S²·(H·hd) per step over its median time, as a
             share of the measured matmul rate
  decode     greedy decode at the 0.5B shape (bf16 weights) for batch 1 and 16: seconds per decode step from two
             lengths (so prefill and compilation cancel), tokens/s, and the share of the bandwidth roofline
             (bytes of weights + KV cache read per step over the measured bandwidth)
  rollout    `sampling.sample` at the 0.5B shape, P = 8 prompts × G = 8 samples, temperature 1: tokens/s

`--smoke` runs every section at tiny shapes on CPU (interpret-mode Pallas, f32 kernels with a tight tolerance) in
well under a minute; the default test suite runs it (tests/test_device_suite.py).

    python -m benchmarks.measure.device_suite --json /tmp/device_suite.json          # on the accelerator, ~5-8 min
    python -m benchmarks.measure.device_suite --smoke --json /tmp/device_suite.json  # CPU, tiny
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import harness
from r1jax import sampling, sharding, train_state
from r1jax.kernels import _common
from r1jax.kernels.grouped_logprob import api as logprob_api
from r1jax.kernels.kl import api as kl_api
from r1jax.models import get_preset, init_model
from r1jax.trainers import sft

FULL = dict(
    matmul_n=8192,
    copy_mib=2048,
    kernel_n=4096,
    kernel_d=1536,
    kernel_v=151_936,
    kernel_dtype="bfloat16",
    kernel_reps=10,
    preset="qwen2.5-0.5b",
    preset_overrides={},
    train_b=8,
    train_s=1024,
    train_reps=5,
    decode_batches=(1, 16),
    decode_prompt=128,
    decode_lengths=(32, 160),
    rollout_pg=(8, 8),
    rollout_prompt=128,
    rollout_new=256,
)
SMOKE = dict(
    matmul_n=256,
    copy_mib=8,
    kernel_n=40,
    kernel_d=32,
    kernel_v=300,
    kernel_dtype="float32",
    kernel_reps=2,
    preset="tiny",
    preset_overrides=dict(vocab_size=256),
    train_b=2,
    train_s=32,
    train_reps=2,
    decode_batches=(2,),
    decode_prompt=8,
    decode_lengths=(4, 20),
    rollout_pg=(2, 2),
    rollout_prompt=8,
    rollout_new=8,
)
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}  # relative L2 error against the f32 oracle


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU, interpret-mode Pallas")
    p.add_argument("--sections", default="ceilings,kernels,train,decode,rollout")
    p.add_argument("--json", required=True, help="write every figure here")
    return p.parse_args()


def timings(fn, *args, reps: int) -> dict:
    """Median and spread of `reps` calls after one warm-up call (compilation excluded)."""
    return harness.spread(harness.call_times(reps, fn, *args))


def device_peak_bytes():
    stats = jax.devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def ceilings(s) -> dict:
    dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    n = s["matmul_n"]
    k1, k2 = jax.random.split(jax.random.key(1))
    a = jax.random.normal(k1, (n, n), dtype)
    b = jax.random.normal(k2, (n, n), dtype)
    mm = timings(jax.jit(lambda x, y: x @ y), a, b, reps=10)
    x = jax.random.normal(k1, (s["copy_mib"] * 2**20 // 4,), jnp.float32)
    cp = timings(jax.jit(lambda v: v + 1.0), x, reps=10)
    return {
        "matmul": f"{n}x{n} @ {n}x{n} {jnp.dtype(dtype).name}",
        "matmul_flop_per_s": 2 * n**3 / mm["min"],
        "matmul_s": mm,
        "copy_bytes": 2 * x.nbytes,
        "copy_bytes_per_s": 2 * x.nbytes / cp["min"],
        "copy_s": cp,
    }


def _rel(out, ref) -> dict:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return {
        "rel_l2": float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)),
        "max_abs": float(np.max(np.abs(out - ref))),
        "finite": bool(np.all(np.isfinite(out))),
    }


def kernels(s) -> dict:
    n, d, v, dtype = s["kernel_n"], s["kernel_d"], s["kernel_v"], jnp.dtype(s["kernel_dtype"])
    tol = TOLERANCE[dtype.name]
    pallas = _common.resolve_implementation("pallas")
    impls = ("xla", "chunked", pallas)
    ks = jax.random.split(jax.random.key(2), 8)  # fresh random inputs and cotangents, never zeros
    h = jax.random.normal(ks[0], (n, d), jnp.float32).astype(dtype)
    w = (jax.random.normal(ks[1], (d, v), jnp.float32) * d**-0.5).astype(dtype)
    hq = jax.random.normal(ks[2], (n, d), jnp.float32).astype(dtype)
    wq = (jax.random.normal(ks[3], (d, v), jnp.float32) * d**-0.5).astype(dtype)
    t = jax.random.randint(ks[4], (n,), 0, v)
    c_logp, c_ent, c_kl = (jax.random.normal(k, (n,), jnp.float32) for k in ks[5:8])

    def logprob_fn(impl):
        def f(h_, w_):
            logp, ent = logprob_api.grouped_logprob_nd(
                h_, w_, t, temperature=1.0, return_entropy=True, implementation=impl
            )
            return jnp.sum(logp * c_logp) + jnp.sum(ent * c_ent), (logp, ent)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

    def kl_fn(impl):
        def f(h_, w_, hq_, wq_):
            k = kl_api.kl_nd(h_, w_, hq_, wq_, temperature=1.0, implementation=impl)
            return jnp.sum(k * c_kl), k

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))

    up = functools.partial(jnp.asarray, dtype=jnp.float32)
    (_, (ref_logp, ref_ent)), (ref_dh, ref_dw) = logprob_fn("xla")(up(h), up(w))
    (_, ref_kl), (ref_kdh, ref_kdw) = kl_fn("xla")(up(h), up(w), up(hq), up(wq))
    out = {"shape": {"N": n, "D": d, "V": v, "dtype": dtype.name}, "tolerance_rel_l2": tol, "logprob": {}, "kl": {}}
    passed = True
    for impl in impls:
        row = {}
        try:
            fn = logprob_fn(impl).lower(h, w).compile()  # compiled once: timed and its memory read
            (_, (logp, ent)), (dh, dw) = fn(h, w)
            errs = {"logp": _rel(logp, ref_logp), "entropy": _rel(ent, ref_ent), "dh": _rel(dh, ref_dh)}
            errs["dw"] = _rel(dw, ref_dw)
            row["errors"] = errs
            row["passed"] = all(e["finite"] and e["rel_l2"] < tol for e in errs.values())
            row["fwd_bwd_s"] = timings(fn, h, w, reps=s["kernel_reps"])
            row["temp_bytes"] = fn.memory_analysis().temp_size_in_bytes
            row["device_peak_bytes_after"] = device_peak_bytes()
        except Exception as e:  # noqa: BLE001 - one implementation's failure is a finding, not the end of the suite
            row = {"passed": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        out["logprob"][impl] = row
        passed &= row["passed"]
        row = {}
        try:
            fn = kl_fn(impl).lower(h, w, hq, wq).compile()
            (_, k), (dh, dw) = fn(h, w, hq, wq)
            errs = {"kl": _rel(k, ref_kl), "dh": _rel(dh, ref_kdh), "dw": _rel(dw, ref_kdw)}
            row["errors"] = errs
            row["passed"] = all(e["finite"] and e["rel_l2"] < tol for e in errs.values())
            row["fwd_bwd_s"] = timings(fn, h, w, hq, wq, reps=s["kernel_reps"])
            row["temp_bytes"] = fn.memory_analysis().temp_size_in_bytes
            row["device_peak_bytes_after"] = device_peak_bytes()
        except Exception as e:  # noqa: BLE001
            row = {"passed": False, "error": f"{type(e).__name__}: {e}"[:2000]}
        out["kl"][impl] = row
        passed &= row["passed"]
    out["pallas_implementation"] = pallas
    out["pallas_interpret"] = _common.interpret_default(pallas)
    out["passed"] = bool(passed)
    return out


def _config(s, dtype, param_dtype, seq):
    return get_preset(s["preset"], **s["preset_overrides"], dtype=dtype, param_dtype=param_dtype, max_seq_len=seq)


def train(s, peak) -> dict:
    b, seq = s["train_b"], s["train_s"]
    cfg = _config(s, "bfloat16", "float32", seq)
    mesh = sharding.make_mesh((1, 1, 1))
    optimizer = train_state.make_optimizer(train_state.optimizer_config(learning_rate=1e-4, decay="constant"), 1000)
    graphdef, state, state_sh = train_state.create_train_state(init_model(cfg, 0), optimizer, mesh, 0)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (b, seq + 1), dtype=np.int32)
    batch = {
        "tokens_bt": tokens[:, :-1],
        "targets_bt": tokens[:, 1:],
        "segment_ids_bt": np.ones((b, seq), np.int32),
        "positions_bt": np.broadcast_to(np.arange(seq, dtype=np.int32), (b, seq)).copy(),
        "loss_mask_bt": np.ones((b, seq), np.float32),
    }
    batch_sh = jax.tree.map(lambda x: sharding.batch_sharding(mesh, x.ndim), batch)
    batch = jax.device_put(batch, batch_sh)
    step = jax.jit(
        functools.partial(sft.train_step, graphdef=graphdef, optimizer=optimizer, implementation="auto"),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, None),
        donate_argnums=0,
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    state, m = compiled(state, batch)
    jax.block_until_ready((state, m))
    ts = []
    for _ in range(s["train_reps"]):
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready((state, m))
        ts.append(time.perf_counter() - t0)
    step_s = harness.spread(ts)
    n_params = cfg.num_params()
    flops = 6 * n_params * b * seq + 12 * cfg.num_layers * b * seq * seq * cfg.num_heads * cfg.head_dim
    mem = compiled.memory_analysis()
    return {
        "preset": s["preset"],
        "params": n_params,
        "batch": b,
        "seq": seq,
        "dtype": "bfloat16 compute, float32 params",
        "compile_s": compile_s,
        "step_s": step_s,
        "model_flops_per_step": flops,
        "model_flop_per_s": flops / step_s["median"],
        "mfu_vs_measured_matmul": flops / step_s["median"] / peak,
        "loss_finite": bool(np.isfinite(float(m["sft/loss"]))),
        "temp_bytes": mem.temp_size_in_bytes,
        "device_peak_bytes_after": device_peak_bytes(),
    }


def _sample_seconds(graphdef, params, prompts, config) -> float:
    jax.block_until_ready(sampling.sample(graphdef, params, prompts, jax.random.key(0), config))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(sampling.sample(graphdef, params, prompts, jax.random.key(1), config))
    return time.perf_counter() - t0


def decode(s, bandwidth) -> dict:
    tp, (n1, n2) = s["decode_prompt"], s["decode_lengths"]
    cfg = _config(s, "bfloat16", "bfloat16", tp + n2 + 8)
    graphdef, params = nnx.split(init_model(cfg, seed=0))
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    out = {"preset": s["preset"], "params": cfg.num_params(), "weight_bytes": weight_bytes, "batches": {}}
    rng = np.random.default_rng(0)
    for b in s["decode_batches"]:
        prompts = rng.integers(1, cfg.vocab_size, (b, tp)).tolist()
        secs = {}
        for n in (n1, n2):
            config = sampling.SamplingConfig(num_samples=1, max_new_tokens=n, greedy=True, prompt_bucket=tp)
            secs[n] = _sample_seconds(graphdef, params, prompts, config)
        step_s = (secs[n2] - secs[n1]) / (n2 - n1)
        mean_ctx = tp + (n1 + n2) / 2
        kv_bytes = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * b * mean_ctx  # K and V, bf16
        roofline_s = (weight_bytes + kv_bytes) / bandwidth
        out["batches"][str(b)] = {
            "seconds": {str(k): v for k, v in secs.items()},
            "step_s": step_s,
            "tokens_per_s": b / step_s,
            "bytes_per_step": weight_bytes + kv_bytes,
            "roofline_step_s": roofline_s,
            "fraction_of_bandwidth_roofline": roofline_s / step_s,
        }
    return out


def rollout(s) -> dict:
    (p, g), tp, tn = s["rollout_pg"], s["rollout_prompt"], s["rollout_new"]
    cfg = _config(s, "bfloat16", "bfloat16", tp + tn + 8)
    graphdef, params = nnx.split(init_model(cfg, seed=0))
    prompts = np.random.default_rng(1).integers(1, cfg.vocab_size, (p, tp)).tolist()
    config = sampling.SamplingConfig(num_samples=g, max_new_tokens=tn, temperature=1.0, prompt_bucket=tp)
    secs = _sample_seconds(graphdef, params, prompts, config)
    return {"P": p, "G": g, "prompt_len": tp, "new_tokens": tn, "seconds": secs, "tokens_per_s": p * g * tn / secs}


def main():
    args = parse_args()
    s = SMOKE if args.smoke else FULL
    load = harness.LoadMonitor(own_threads=1 if jax.default_backend() != "cpu" else os.cpu_count())
    dev = jax.devices()[0]
    result = {
        "smoke": args.smoke,
        "backend": jax.default_backend(),
        "device": str(dev),
        "device_kind": dev.device_kind,
        "jax": jax.__version__,
        "threads": harness.thread_settings(),
        "sections": {},
    }
    wanted = args.sections.split(",")
    t_start = time.perf_counter()

    def run(name, fn, *fn_args):
        if name not in wanted:
            return None
        t0 = time.perf_counter()
        try:
            r = {"ok": True, **fn(*fn_args)}
        except Exception as e:  # noqa: BLE001 - a failed section is recorded and the others still run
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-4000:]}
        r["wall_s"] = time.perf_counter() - t0
        result["sections"][name] = r
        print(f"[{name}] {'ok' if r['ok'] else 'FAILED: ' + r['error'][:300]} ({r['wall_s']:.1f} s)", flush=True)
        with open(args.json, "w") as f:  # written after every section: a timeout still leaves what finished
            json.dump(result, f, indent=2)
        return r

    c = run("ceilings", ceilings, s)
    peak = c["matmul_flop_per_s"] if c and c["ok"] else float("nan")
    bandwidth = c["copy_bytes_per_s"] if c and c["ok"] else float("nan")
    run("kernels", kernels, s)
    run("train", train, s, peak)
    run("decode", decode, s, bandwidth)
    run("rollout", rollout, s)
    result["wall_s"] = time.perf_counter() - t_start
    result["load_avg"] = load.record()
    sec = result["sections"]
    result["all_ok"] = all(r["ok"] for r in sec.values()) and sec.get("kernels", {}).get("passed", True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print_summary(result)


def print_summary(r):
    sec = r["sections"]
    print(f"\ndevice suite on {r['device_kind']} ({r['backend']}), {r['wall_s']:.0f} s, smoke={r['smoke']}")
    if sec.get("ceilings", {}).get("ok"):
        c = sec["ceilings"]
        print(
            f"  matmul {c['matmul_flop_per_s'] / 1e12:.3f} TFLOP/s ({c['matmul']}), "
            f"copy {c['copy_bytes_per_s'] / 1e9:.1f} GB/s"
        )
    if sec.get("kernels", {}).get("ok"):
        k = sec["kernels"]
        print(f"  kernels {k['shape']}, passed={k['passed']}")
        for op in ("logprob", "kl"):
            for impl, row in k[op].items():
                if "error" in row:
                    print(f"    {op:8s} {impl:11s} ERROR {row['error'][:200]}")
                    continue
                worst = max(e["rel_l2"] for e in row["errors"].values())
                ms = row["fwd_bwd_s"]["median"] * 1e3
                print(
                    f"    {op:8s} {impl:11s} worst rel err {worst:.2e}  fwd+bwd {ms:9.2f} ms"
                    f"  temp {row['temp_bytes'] / 2**20:9.1f} MiB"
                )
    if sec.get("train", {}).get("ok"):
        t = sec["train"]
        print(
            f"  train {t['preset']} B={t['batch']} S={t['seq']}: {t['step_s']['median']:.3f} s/step, "
            f"MFU {t['mfu_vs_measured_matmul']:.1%} of the measured matmul"
        )
    if sec.get("decode", {}).get("ok"):
        for b, row in sec["decode"]["batches"].items():
            print(
                f"  decode batch {b}: {row['tokens_per_s']:.1f} tokens/s, "
                f"{row['fraction_of_bandwidth_roofline']:.1%} of the bandwidth roofline"
            )
    if sec.get("rollout", {}).get("ok"):
        print(f"  rollout {sec['rollout']['tokens_per_s']:.1f} tokens/s")
    print("  " + harness.loaded_banner(r["load_avg"]))
    for name, row in sec.items():
        if not row["ok"]:
            print(f"  section {name} FAILED: {row['error'][:300]}")


if __name__ == "__main__":
    main()
