"""Off-policy rollouts on the tiny task: asynchronous sampling (rl.max_staleness) and bf16 rollouts against an f32
trainer, each measured by held-out accuracy (test split, 95% bootstrap intervals over seeds × prompts) and step time.

    # one stage-0 base, then both experiments (CPU, 2 cores: about an hour in all)
    r1jax train --config experiments/pretrain.py:tiny --workdir /tmp/async/stage0
    python -m benchmarks.measure.async_rl --experiment staleness --base /tmp/async/stage0/model \\
        --json /tmp/async_staleness.json
    python -m benchmarks.measure.async_rl --experiment bf16 --base /tmp/async/stage0/model --json /tmp/async_bf16.json

  staleness   8 CPU devices (XLA's host-platform device count, set here): the last 4 sample, the first 4 train
              (rl.sampler_devices=4, mesh.shape=(4, 1, 1)); rl.max_staleness 0, 1, 2, and 1 and 2 with truncated
              importance sampling (TIS: w = π_old / π_sampler per token, capped at 2). The step time is reported as
              measured: on 2 CPU cores the 8 devices share the same two cores, so sampling and training cannot
              really run at once here and no speed-up is expected; on an accelerator they would.
  bf16        one device; the sampler in f32 (the reference), in bf16 without a correction (the mismatch is only
              measured) and in bf16 with truncated importance sampling (rl.sampler_is_correction, 'token_truncate',
              C_max 2: TIS). The trainer is f32 in all three.

Each run is experiments/r1_zero.py:tiny for --steps steps from --base with RL seed s (the base, the prompts and
the evaluation prompts are the same for every run); the final policy is evaluated on the `test` split, 64 prompts
× k = 4 at T = 0.6. Per configuration: pass@1, format rate and accuracy given format pooled over seeds with their
intervals (r1jax.evals.summarize), the median step time, and the mean sampler-trainer mismatch over the run
(rl/sampler/logp_diff_mean and kl_k3, from the trainer's health metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from benchmarks import harness

EXPERIMENTS = os.path.join(harness.REPO, "experiments")


# truncated importance sampling: token weights π_old / π_sampler capped at 2 (TRL's vllm_importance_sampling_*)
TIS = ["rl.sampler_is_correction=True", "rl.sampler_is_mode=token_truncate", "rl.sampler_is_clip_max=2.0"]


def configurations(experiment: str) -> dict[str, list[str]]:
    if experiment == "staleness":
        split = ["rl.sampler_devices=4", "mesh.shape=(4,1,1)"]
        runs = {f"staleness {s}": [*split, f"rl.max_staleness={s}"] for s in (0, 1, 2)}
        runs["staleness 1 + TIS"] = [*split, "rl.max_staleness=1", *TIS]
        runs["staleness 2 + TIS"] = [*split, "rl.max_staleness=2", *TIS]
        return runs
    return {
        "f32 sampler": [],
        "bf16 sampler, no correction": ["rl.sampler_dtype=bfloat16"],
        "bf16 sampler + TIS": ["rl.sampler_dtype=bfloat16", *TIS],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", choices=("staleness", "bf16"), required=True)
    p.add_argument("--base", required=True, help="a stage-0 export (experiments/pretrain.py:tiny)")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workdir", default="/tmp/async_rl")
    p.add_argument("--only", default="", help="comma-separated configuration names to run (default: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.experiment == "staleness":  # before jax is imported
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8".strip()

    import jax

    from r1jax import config_lib, evals
    from r1jax.trainers import grpo

    results = {"experiment": args.experiment, "devices": jax.device_count(), "steps": args.steps, "seeds": args.seeds,
               "base": args.base, "load_avg_before": os.getloadavg(), "configs": {}}
    chosen = configurations(args.experiment)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
    for name, overrides in chosen.items():
        per_seed, step_times, diffs, kls, walls = [], [], [], [], []
        for seed in range(args.seeds):
            workdir = os.path.join(args.workdir, args.experiment, name.replace(" ", "_").replace(",", ""), f"s{seed}")
            c = config_lib.load_config(
                os.path.join(EXPERIMENTS, "r1_zero.py") + ":tiny",
                [f"model.checkpoint={args.base}", f"rl.num_steps={args.steps}", f"seed={seed}", "eval.every=0",
                 "checkpoint.every=1000", *overrides],
            )
            t0 = time.perf_counter()
            grpo.train(c, workdir)
            walls.append(time.perf_counter() - t0)
            history = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl")) if line.strip()]
            steps = [r for r in history if "perf/step_time_s" in r]
            step_times += [r["perf/step_time_s"] for r in steps[1:]]  # the first step compiles
            diffs += [r["rl/sampler/logp_diff_mean"] for r in steps if "rl/sampler/logp_diff_mean" in r]
            kls += [r["rl/sampler/kl_k3"] for r in steps if "rl/sampler/kl_k3" in r]
            eval_cfg = c.copy_and_resolve_references()
            eval_cfg.mesh.shape = (-1, 1, 1)
            ev = evals.evaluate_model_dir(eval_cfg, os.path.join(workdir, "model"), per_prompt=True)
            per_seed.append(ev)
            print(f"[{name}] seed {seed}: pass@1 {ev['pass@1']:.3f}, step {statistics.median(step_times):.3f} s, "
                  f"wall {walls[-1]:.0f} s", flush=True)
        pooled = evals.summarize([evals.prompt_sums_from_json(r["per_prompt"]) for r in per_seed])
        results["configs"][name] = {
            "overrides": overrides,
            **{k: pooled[k] for k in ("pass@1", "pass@1_ci", "format_rate", "format_rate_ci",
                                      "accuracy_given_format", "accuracy_given_format_ci", "mean_length")},
            "pass@1_per_seed": [r["pass@1"] for r in per_seed],
            "step_time_median_s": statistics.median(step_times),
            "step_time_iqr_s": list(statistics.quantiles(step_times, n=4)[::2]) if len(step_times) > 1 else None,
            "sampler_logp_diff_mean": statistics.fmean(diffs) if diffs else None,
            "sampler_kl_k3_mean": statistics.fmean(kls) if kls else None,
            "wall_s_per_seed": walls,
            "num_prompts": per_seed[0]["num_prompts"], "k": per_seed[0]["k"],
        }
    results["load_avg_after"] = os.getloadavg()
    print(f"{'configuration':34s} {'pass@1 [95% CI]':24s} {'acc|format':10s} {'step s':>7s} {'|Δlogp|':>9s}")
    for name, r in results["configs"].items():
        ci = r["pass@1_ci"]
        diff = "—" if r["sampler_logp_diff_mean"] is None else f"{r['sampler_logp_diff_mean']:.2e}"
        print(f"{name:34s} {r['pass@1']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]    {r['accuracy_given_format']:.3f}"
              f"      {r['step_time_median_s']:7.3f} {diff:>9s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
