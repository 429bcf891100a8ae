"""Where the time of one RL step goes: sample / reward / old + reference log-probs / update, for the default tiny
R1-Zero config (`experiments/r1_zero.py:tiny`: P=16 prompts × G=8, 96 new tokens, the tiny preset), so that the
slowest part is visible.

The phases are the trainer's own functions (r1jax/rollouts.py: prompt encoding, the sampler config, decoding,
`assemble_batch`, and the step that `make_grpo_step` builds), called in the trainer's order, each timed to
completion (`jax.block_until_ready`):

  sample      `sampling.sample`: shared prefill, KV cache broadcast to G, jitted decode loop
  decode      token ids → text for the B = P·G completions (host)
  reward      the composed, timeout-guarded reward function of the config (accuracy + format), worker processes
  advantages  `rollouts.assemble_batch`: group advantages and the host → device copy of the batch
  logps       the old (μ > 1) and reference (β > 0) log-prob forwards the config's step runs; the tiny config has
              μ = 1 and β = 0, so its step runs neither, and the table says so. One such no-cache forward over the
              batch is also timed on its own (`logps_one_pass`), outside the step, to show what each would cost
  update      the GRPO train step: forward, loss, backward, AdamW (jitted, state donated)

The first `--warmup` steps (compilation) are excluded; medians over `--steps` steps are reported. The base model
is a stage-0 export (`--base DIR`; default: `experiments/pretrain.py:runlocal` is trained into a temp dir first),
so completions stop at EOS as in a real run. The headline `ratio` is the slowest phase's share of the step.

Each device phase is also set against its roofline, measured in the same run: the f32 matmul ceiling (best of 5
n×n matmuls, n = 1024) and the streaming-read bandwidth (a sum and a matrix-vector product over 1 GiB). A
phase's roofline time is max(FLOPs / ceiling, bytes / bandwidth), and its fraction is roofline time / measured time:

  update, logps   FLOPs and bytes accessed from XLA's cost analysis of the compiled step / forward
  sample          prefill 2·N·P·Tp FLOPs at the ceiling, then, per decode step of the static batch (as many steps
                  as the longest completion), max(2·N·B FLOPs + attention, bytes of weights + the KV read) — the
                  decode loop's own cost analysis counts a while-loop body once, so it is not used
Host phases (decode, reward, advantages) are reported as shares of the step only.

To say why a phase is below its roofline, the model's own dense matmuls (q, k, v, o, gate, up, down, the LM head;
for the update also their input- and weight-gradient matmuls) are timed alone at the phase's token count
(`harness.dense_shapes` / `harness.dense_rate`): their rate against the ceiling says whether the matmuls are slow
at these shapes, and their time against the phase's says how much of the phase is not matmul work.

    python -m benchmarks.measure.rl_step_breakdown --json /tmp/rl_breakdown.json [--base /tmp/stage0/model]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from r1jax import config_lib, rollouts, sampling, sharding, train_state
from r1jax.data.pipeline import make_prompt_iterator
from r1jax.data.sources import PromptFields
from r1jax.main import run_experiment
from r1jax.trainers import grpo as trainer

REPO = harness.REPO


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(REPO, "experiments", "r1_zero.py") + ":tiny")
    p.add_argument("--base", default=None, help="stage-0 model dir (default: train pretrain.py:runlocal first)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable): --config.KEY"
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
    p.add_argument("--json", default=None, help="write the figures here; `ratio` is the slowest phase's share")
    return p.parse_args()


def main():
    args = parse_args()
    ceiling, bandwidth = harness.matmul_ceiling(), harness.read_bandwidth()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if base is None:
            run_experiment(os.path.join(REPO, "experiments", "pretrain.py") + ":runlocal", os.path.join(tmp, "s0"))
            base = os.path.join(tmp, "s0", "model")
        overrides = [f"--config.model.checkpoint={base}", *(f"--config.{kv}" for kv in args.set)]
        c = config_lib.load_config(args.config, overrides)
        trainer.validate(c)
        mesh = sharding.make_mesh(c.mesh.shape)
        train_records, _, _ = rollouts.load_splits(c)
        model, tokenizer = train_state.build_model(c.model, c.seed, c.tokenizer.path)
        rl, group_size, P = c.rl, c.rl.group_size, c.rl.prompts_per_step
        optimizer = train_state.make_optimizer(c.optim, rl.num_steps)
        graphdef, state, state_sh = train_state.create_train_state(model, optimizer, mesh, c.seed)
        ref_params = jax.tree.map(jnp.copy, state.params) if rl.beta > 0 else None
        data_it, _ = make_prompt_iterator(
            train_records, batch_size=P, seed=c.seed, fields=PromptFields(extras=("task", "meta"))
        )
        reward_fn = trainer.make_rewards(c.rewards, c.response_prefix, c.sampling.max_new_tokens)
        sample_cfg = rollouts.sampler_config(c, tokenizer)
        grpo_step = rollouts.make_grpo_step(c, graphdef, optimizer, mesh, state_sh)
        base_rng = jax.random.wrap_key_data(jax.device_get(state.rng))
        rows, lengths, decode_steps = [], [], []
        for step in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            records = next(data_it)
            prompt_ids = rollouts.encode_prompts(
                tokenizer, records, c.template, c.response_prefix, c.sampling.max_prompt_len
            )
            rollout = sampling.sample(
                graphdef, state.params, prompt_ids, jax.random.fold_in(base_rng, step), sample_cfg, mesh=mesh
            )
            jax.block_until_ready(rollout)
            t1 = time.perf_counter()
            completions = rollouts.decode_completions(tokenizer, rollout)
            t2 = time.perf_counter()
            group = [r for r in records for _ in range(group_size)]
            rb = reward_fn([r["question"] for r in group], completions, group, lengths=np.asarray(rollout.lengths_b))
            t3 = time.perf_counter()
            part = rollouts.Round(records, rollout, rb.rewards.reshape(P, group_size), rb.valid.reshape(P, group_size))
            _, batch, summary = rollouts.assemble_batch(c, [part], mesh, grpo_step.batch_shardings)
            jax.block_until_ready(batch)
            t4 = time.perf_counter()
            batch = rollouts.add_policy_logps(batch, grpo_step.logps, state.params, ref_params, mu=rl.mu, beta=rl.beta)
            jax.block_until_ready(batch)
            t5 = time.perf_counter()
            state, m = grpo_step.train_step(state, batch)
            jax.block_until_ready((state, m))
            t6 = time.perf_counter()
            jax.block_until_ready(grpo_step.logps(state.params, batch))  # one π_old or π_ref pass, on its own
            t7 = time.perf_counter()
            t = {
                "sample": t1 - t0,
                "decode": t2 - t1,
                "reward": t3 - t2,
                "advantages": t4 - t3,
                "logps": t5 - t4,
                "update": t6 - t5,
                "logps_one_pass": t7 - t6,
            }
            if step >= args.warmup:
                rows.append(t)
                lengths.append(float(summary.lengths_b.mean()))
                decode_steps.append(int(np.asarray(rollout.completion_tokens_bt).shape[1]))
        reward_fn.close()
        roofline = {
            "update": compiled_roofline(grpo_step.train_step, (state, batch), ceiling, bandwidth),
            "logps_one_pass": compiled_roofline(grpo_step.logps, (state.params, batch), ceiling, bandwidth),
            "sample": sample_roofline(model.cfg, rollout, decode_steps, ceiling, bandwidth),
        }
        b, s_len = np.asarray(batch["tokens_bs"]).shape
        p_rows, tp = np.asarray(rollout.prompt_tokens_pt).shape
        # tokens through the model in the update and a log-prob pass: every row's, or with the shared prompt
        # forward each prompt's once plus every completion's
        tc = np.asarray(batch["completion_bt"]).shape[1]
        fwd_tokens = p_rows * (s_len - tc) + b * tc if rl.shared_prompt_forward else b * s_len
        dense = {  # the model's own dense matmuls at each phase's token count, timed alone
            "update": harness.dense_rate(harness.dense_shapes(model.cfg, fwd_tokens, backward=True)),
            "logps_one_pass": harness.dense_rate(harness.dense_shapes(model.cfg, fwd_tokens)),
            "prefill": harness.dense_rate(harness.dense_shapes(model.cfg, p_rows * tp)),
            "decode_step": harness.dense_rate(harness.dense_shapes(model.cfg, b)),
        }
        steps = roofline["sample"]["decode_steps"]  # the sampler's dense matmuls: one prefill, then per decode step
        dense["sample"] = {
            "flops": dense["prefill"]["flops"] + steps * dense["decode_step"]["flops"],
            "seconds": dense["prefill"]["seconds"] + steps * dense["decode_step"]["seconds"],
        }
        dense["sample"]["flop_per_s"] = dense["sample"]["flops"] / dense["sample"]["seconds"]

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    phases = {
        "sample": med["sample"],
        "decode": med["decode"],
        "reward": med["reward"],
        "advantages": med["advantages"],
        "old+ref logps": med["logps"],
        "update": med["update"],
    }
    total = sum(phases.values())
    slowest = max(phases, key=phases.get)
    print(
        f"{args.config}: P={P} group_size={group_size} max_new_tokens={c.sampling.max_new_tokens}, "
        f"μ={rl.mu} β={rl.beta}; "
        f"medians of {len(rows)} steps (after {args.warmup} warm-up), mean completion "
        f"{statistics.mean(lengths):.1f} tokens"
    )
    print("| phase | ms | share |\n|---|---|---|")
    for k, v in phases.items():
        print(f"| {k} | {1e3 * v:.1f} | {v / total:.0%} |")
    print(f"| step | {1e3 * total:.1f} | 100% |")
    print(f"(one log-prob pass, as μ > 1 or β > 0 would add each: {1e3 * med['logps_one_pass']:.1f} ms)")
    print(f"\nroofline: f32 matmul ceiling {ceiling / 1e9:.1f} GFLOP/s, read bandwidth {bandwidth / 1e9:.2f} GB/s")
    print("| device phase | measured ms | roofline ms | bound | fraction |\n|---|---|---|---|---|")
    fractions = {}
    for name, key in (("sample", "sample"), ("update", "update"), ("one log-prob pass", "logps_one_pass")):
        r = roofline[key]
        fractions[key] = r["time_s"] / med[key]
        print(f"| {name} | {1e3 * med[key]:.1f} | {1e3 * r['time_s']:.1f} | {r['bound']} | {fractions[key]:.0%} |")
    print(
        "\nthe model's own dense matmuls (q, k, v, o, gate, up, down, LM head; backward's too for the update), "
        "timed alone at the phase's token count:"
    )
    print(
        "| phase | tokens | dense GFLOP/s | of the ceiling | dense ms | of the phase's time |\n"
        "|---|---|---|---|---|---|"
    )
    tokens = {"update": fwd_tokens, "logps_one_pass": fwd_tokens, "prefill": p_rows * tp, "decode_step": b}
    tokens["sample"] = p_rows * tp + roofline["sample"]["decode_steps"] * b
    for key, d in dense.items():
        measured = med[key] if key in med else None
        share = f"{d['seconds'] / measured:.0%}" if measured else "-"
        print(
            f"| {key} | {tokens[key]} | {d['flop_per_s'] / 1e9:.1f} | {d['flop_per_s'] / ceiling:.0%} | "
            f"{1e3 * d['seconds']:.1f} | {share} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "ratio": phases[slowest] / total,
                    "slowest": slowest,
                    "phases_s": phases,
                    "step_s": total,
                    "logps_one_pass_s": med["logps_one_pass"],
                    "roofline": roofline,
                    "roofline_fraction": fractions,
                    "dense_matmuls": {
                        k: dict(v, tokens=tokens[k], of_ceiling=v["flop_per_s"] / ceiling) for k, v in dense.items()
                    },
                    "matmul_ceiling_gflop_s": ceiling / 1e9,
                    "read_bandwidth_gb_s": bandwidth / 1e9,
                    "per_step": rows,
                    "completion_len_mean": lengths,
                    "settings": {
                        "config": args.config,
                        "P": P,
                        "group_size": group_size,
                        "max_new_tokens": c.sampling.max_new_tokens,
                        "mu": rl.mu,
                        "beta": rl.beta,
                        "overrides": args.set,
                        "shared_prompt_forward": bool(rl.shared_prompt_forward),
                        "model_dtype": c.model.dtype,
                        "jax": jax.__version__,
                        "cpus": os.cpu_count(),
                        "load_avg_1min": os.getloadavg()[0],
                        "steps": args.steps,
                        "warmup": args.warmup,
                    },
                },
                f,
                indent=2,
            )


def compiled_roofline(fn, args, ceiling, bandwidth) -> dict:
    """max(FLOPs / ceiling, bytes accessed / bandwidth) from XLA's cost analysis of `fn` compiled for `args`."""
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    compute, memory = flops / ceiling, nbytes / bandwidth
    return {
        "flops": flops,
        "bytes": nbytes,
        "time_s": max(compute, memory),
        "bound": "compute" if compute >= memory else "memory",
    }


def sample_roofline(cfg, rollout, decode_steps, ceiling, bandwidth) -> dict:
    """The static sampler's roofline for the median step: prefill of the P prompts once (compute), then
    `decode_steps` decode steps of all B rows, each max(compute, weights + KV read)."""
    p, tp = np.asarray(rollout.prompt_tokens_pt).shape
    b = np.asarray(rollout.completion_tokens_bt).shape[0]
    steps = int(statistics.median(decode_steps))
    n = cfg.num_params()
    itemsize = np.dtype(cfg.param_dtype).itemsize
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * np.dtype(cfg.dtype).itemsize
    attn_per_token = 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim  # q·k and p·v, per context position
    prefill = (2 * n * p * tp + attn_per_token * p * tp * tp / 2) / ceiling
    decode, bound_compute = 0.0, 0
    for t in range(steps):
        ctx = tp + t
        compute = (2 * n * b + attn_per_token * b * ctx) / ceiling
        memory = (n * itemsize + b * ctx * kv_per_token) / bandwidth
        decode += max(compute, memory)
        bound_compute += compute >= memory
    return {
        "prefill_s": prefill,
        "decode_s": decode,
        "decode_steps": steps,
        "time_s": prefill + decode,
        "bound": "compute" if bound_compute > steps / 2 else "memory",
    }


if __name__ == "__main__":
    main()
