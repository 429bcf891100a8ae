"""`r1jax demo`: the built-in default end to end on a laptop CPU.

    stage 0  pretrain a tiny base model on mixed-quality worked solutions   (experiments/pretrain.py:tiny)
    eval     the base model on held-out prompts (pass@1 over k samples at T = 0.6, cons@k, greedy, format)
    stage 1  R1-Zero: GRPO with accuracy + format rewards                    (experiments/r1_zero.py:tiny)
    eval     the final policy on the same prompts

A second run in the same workdir reuses the stage-0 model (and a finished stage 1). Overrides go to a stage by
prefix: `--config.pretrain.num_steps=100`, `--config.r1_zero.rl.num_steps=10`.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from r1jax import config_lib, evals
from r1jax import metrics as metrics_lib

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def _experiment(name: str) -> str:
    """experiments/<name>.py, from a source checkout or, for a regular install, the package's copy."""
    path = os.path.join(EXPERIMENTS, f"{name}.py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"experiment file {path} not found: run the demo from an r1jax source checkout")
    return path


def _stage_overrides(overrides, stage: str) -> list[str]:
    out = []
    for o in overrides:
        o = o.removeprefix("--config.")
        if o.startswith(stage + "."):
            out.append(o[len(stage) + 1 :])
        elif not o.startswith(("pretrain.", "r1_zero.")):
            raise ValueError(f"demo override --config.{o}: prefix it with 'pretrain.' or 'r1_zero.'")
    return out


def run_demo(workdir: str, *, seed: int = 0, overrides=(), arg: str = "") -> dict:
    from r1jax.trainers import grpo as grpo_trainer
    from r1jax.trainers import sft as sft_trainer

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    times = {}
    suffix = f":{arg}" if arg else ""

    # -- stage 0 ------------------------------------------------------------------------------------------------
    pre_cfg = config_lib.load_config(_experiment("pretrain") + suffix, _stage_overrides(overrides, "pretrain"))
    pre_cfg.seed = seed
    stage0 = os.path.join(workdir, "stage0")
    base_model = os.path.join(stage0, "model")
    t = time.perf_counter()
    if os.path.exists(os.path.join(base_model, "config.json")):
        print(f"[demo] stage 0: reusing the base model in {base_model}")
    else:
        print("[demo] stage 0: tokenizer + pretraining a tiny base model on mixed-quality worked solutions")
        sft_trainer.train(pre_cfg, stage0)
    times["stage0_s"] = time.perf_counter() - t

    # -- stage 1 config (also defines the evaluation) ----------------------------------------------------------
    rl_cfg = config_lib.load_config(_experiment("r1_zero") + suffix, _stage_overrides(overrides, "r1_zero"))
    rl_cfg.seed = seed
    rl_cfg.model.checkpoint = base_model

    # -- base evaluation ---------------------------------------------------------------------------------------
    t = time.perf_counter()
    print("[demo] evaluating the base model")
    base = evals.evaluate_model_dir(rl_cfg, base_model)
    times["eval_base_s"] = time.perf_counter() - t

    # -- stage 1: R1-Zero --------------------------------------------------------------------------------------
    t = time.perf_counter()
    print("[demo] stage 1: R1-Zero (GRPO, accuracy + format rewards)")
    rl_dir = os.path.join(workdir, "r1_zero")
    grpo_trainer.train(rl_cfg, rl_dir)
    times["r1_zero_s"] = time.perf_counter() - t

    t = time.perf_counter()
    print("[demo] evaluating the final policy")
    final = evals.evaluate_model_dir(rl_cfg, os.path.join(rl_dir, "model"))
    times["eval_final_s"] = time.perf_counter() - t

    keys = evals.METRICS
    results = {
        "base": {k: base[k] for k in keys},
        "final": {k: final[k] for k in keys},
        "k": rl_cfg.eval.num_samples,
        "num_prompts": base["num_prompts"],
        "seed": seed,
        "wall_time_s": times,
    }
    with open(os.path.join(workdir, "demo_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    base_point = {"step": 0, **{f"eval/{k}": v for k, v in base.items() if np.ndim(v) == 0}}  # the base at step 0
    plot = metrics_lib.plot_curves(
        [base_point, *metrics_lib.read_history(rl_dir)], ["rl/reward_mean", "eval/pass@1", "eval/format_rate"],
        os.path.join(workdir, "demo_curves.png"), title="R1-Zero on the built-in default",
    )
    if plot:
        shutil.copy(plot, os.path.join(rl_dir, "tb", "demo_curves.png"))
    print()
    print(evals.markdown_table({"base (stage 0)": base, "R1-Zero (stage 1)": final}))
    print(f"\nk = {results['k']} samples per prompt at T = {rl_cfg.eval.temperature}, "
          f"{results['num_prompts']} held-out prompts; wall time {sum(times.values()):.0f} s")
    print(f"TensorBoard logs: {os.path.join(stage0, 'tb')}  {os.path.join(rl_dir, 'tb')}")
    print(f"Reward / held-out accuracy plot: {plot}")
    print(f"Results: {os.path.join(workdir, 'demo_results.json')}")
    return results
