"""`r1jax demo`: the built-in default end to end on a laptop CPU.

    stage 0  pretrain a tiny base model on 3-digit sums solved directly (often wrong), column by column, or
             guessed and then re-checked                                     (experiments/pretrain.py:tiny,headroom)
    eval     the base model on held-out prompts (r1jax.evals: pass@1 over k samples at T = 0.6, format rate,
             accuracy given format, lenient accuracy, cons@k, mean length, reflection rate; 95% intervals)
    stage 1  R1-Zero: GRPO with accuracy + format rewards                    (experiments/r1_zero.py:tiny,headroom)
    eval     the final policy on the same prompts

`--variant two-digit` runs the same stages on 2-digit sums (experiments/*.py:tiny), where the gain is the format.

`--seeds N` runs seeds 0..N-1 (from `--seed`), each a full demo in WORKDIR/seed_<s>/, and pools them: point
estimates over all seeds' samples, intervals by a bootstrap over seeds × prompts (r1jax.evals.bootstrap_ci).
A seed whose results exist (same overrides) is reused, in WORKDIR/seed_<s>/ or, from a one-seed run, in WORKDIR;
otherwise a second run in the same directory reuses the stage-0 model and the trainer resumes a finished stage 1.
Overrides go to a stage by prefix: `--config.pretrain.num_steps=100`, `--config.r1_zero.rl.num_steps=10`.

    WORKDIR/demo_results.json   base / final metrics with `<name>_ci`, length_ratio_last_first, k, num_prompts,
                                split, seeds, per_seed
    WORKDIR/demo_curves.png     reward, held-out accuracy, format rate, response length, reflection rate
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

from r1jax import config_lib, evals, host
from r1jax import metrics as metrics_lib
from r1jax.data import provenance
from r1jax.trainers import grpo as grpo_trainer
from r1jax.trainers import sft as sft_trainer

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
# The metrics demo_results.json reports for `base` and `final`, each with `<name>_ci` = [low, high].
RESULT_METRICS = (
    "pass@1", "format_rate", "accuracy_given_format", "lenient_accuracy", "cons@k", "mean_length", "reflection_rate",
)
SEED_RESULTS = "demo_seed_results.json"  # one seed's evaluations with their per-prompt sums (for pooling seeds)
LENGTH_KEY = "rl/completion_length_mean"  # the GRPO trainer's mean completion length of each step's rollouts
LENGTH_WINDOW = 10
CURVE_PANELS = {
    "reward": ["rl/reward_mean"],
    "held-out accuracy": ["eval/pass@1", "eval/accuracy_given_format", "eval/lenient_accuracy"],
    "format rate": ["eval/format_rate"],
    "response length (tokens)": [LENGTH_KEY, "eval/mean_length"],
    "reflection rate": ["eval/reflection_rate"],
}


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


def _json_safe(x):
    """NaN (e.g. accuracy given format when nothing was formatted) as null, so the JSON is standard."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def run_demo(workdir: str, *, seed: int = 0, seeds: int = 1, overrides=(), arg: str = "tiny,headroom") -> dict:
    """Runs (or reuses) the demo for `seeds` seeds from `seed`, writes demo_results.json and demo_curves.png,
    prints the before/after table with intervals, and returns the results. `arg` goes after each stage's experiment
    file: "tiny,headroom" (the default, 3-digit sums) or "" (the two-digit task)."""
    if seeds < 1:
        raise ValueError(f"seeds={seeds}: must be >= 1")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    seed_list = list(range(seed, seed + seeds))
    overrides = [o.removeprefix("--config.") for o in overrides]  # as the CLI and as run_demo's callers write them
    dirs = {s: _seed_dir(workdir, s, seeds, overrides, arg) for s in seed_list}
    runs = {s: _run_seed(dirs[s], s, overrides, arg) for s in seed_list}

    first = runs[seed_list[0]]
    results = {}
    for model in ("base", "final"):
        pooled = evals.summarize([evals.prompt_sums_from_json(r[model]["per_prompt"]) for r in runs.values()])
        results[model] = {n: pooled[n] for name in RESULT_METRICS for n in (name, f"{name}_ci")}
    ratios = [r["length_ratio_last_first"] for r in runs.values()]
    results.update({
        "length_ratio_last_first": sum(ratios) / len(ratios),  # the mean over seeds
        "length_window": first["length_window"],
        "k": first["k"],
        "temperature": first["temperature"],
        "num_prompts": first["num_prompts"],
        "split": first["split"],
        "seeds": seed_list,
        "per_seed": {
            str(s): {
                **{m: {n: r[m][n] for name in RESULT_METRICS for n in (name, f"{name}_ci")} for m in ("base", "final")},
                "length_ratio_last_first": r["length_ratio_last_first"],
                "wall_time_s": r["wall_time_s"],
                "steal_fraction": r.get("steal_fraction"),
                "workdir": dirs[s],
            }
            for s, r in runs.items()
        },
    })
    if seeds == 1:
        results["wall_time_s"] = first["wall_time_s"]
        results["steal_fraction"] = first.get("steal_fraction")
    results = _json_safe(results)
    with open(os.path.join(workdir, "demo_results.json"), "w") as f:
        json.dump(results, f, indent=1)

    histories = {}
    for s, r in runs.items():  # the base model's evaluation is each run's step 0
        base_point = {"step": 0, **{f"eval/{n}": v for n, v in r["base"].items() if isinstance(v, (int, float))}}
        histories[f"seed {s}"] = [base_point, *metrics_lib.read_history(os.path.join(dirs[s], "r1_zero"))]
    plot = metrics_lib.plot_panels(
        histories, CURVE_PANELS, os.path.join(workdir, "demo_curves.png"),
        title=f"R1-Zero on the built-in default{f' ({arg})' if arg else ''} (seeds {', '.join(map(str, seed_list))})",
    )
    if plot:
        shutil.copy(plot, os.path.join(dirs[seed_list[0]], "r1_zero", "tb", "demo_curves.png"))

    print()
    print(evals.markdown_table({"base (stage 0)": results["base"], "R1-Zero (stage 1)": results["final"]}))
    how = "95% bootstrap intervals over prompts" + (" and seeds" if seeds > 1 else "")
    print(f"\nk = {results['k']} samples per prompt at T = {results['temperature']}, {results['num_prompts']} "
          f"held-out prompts (split '{results['split']}'), seeds {seed_list}; {how}.")
    lr = results["length_ratio_last_first"]
    print(f"Mean completion length, last {results['length_window']} RL steps / first {results['length_window']}: "
          + ("n/a" if lr is None else f"{lr:.2f}"))
    for s in seed_list:
        print(f"TensorBoard logs: {os.path.join(dirs[s], 'stage0', 'tb')}  {os.path.join(dirs[s], 'r1_zero', 'tb')}")
    print(f"Curves (reward, accuracy, format, length, reflection): {plot}")
    print(f"Results: {os.path.join(workdir, 'demo_results.json')}")
    return results


def _finished(workdir: str, seed: int, overrides: list[str], arg: str) -> dict | None:
    """The saved results of the seed's run in `workdir` when they exist for the same seed and overrides."""
    path = os.path.join(workdir, SEED_RESULTS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    return saved if (saved["seed"], saved["overrides"], saved["arg"]) == (seed, overrides, arg) else None


def _seed_dir(workdir: str, seed: int, seeds: int, overrides: list[str], arg: str) -> str:
    """WORKDIR itself for one seed; WORKDIR/seed_<s> for several, except that a finished one-seed demo in
    WORKDIR (`r1jax demo` before `r1jax demo --seeds 3`) serves its seed when seed_<s> holds no results."""
    if seeds == 1:
        return workdir
    own = os.path.join(workdir, f"seed_{seed}")
    if _finished(own, seed, overrides, arg) is None and _finished(workdir, seed, overrides, arg) is not None:
        return workdir
    return own


def _run_seed(workdir: str, seed: int, overrides: list[str], arg: str) -> dict:
    """One full demo (stage 0, base eval, R1-Zero, final eval) in `workdir`, or its saved results when they
    exist for the same overrides; the evaluations keep their per-prompt sums."""
    os.makedirs(workdir, exist_ok=True)
    saved_path = os.path.join(workdir, SEED_RESULTS)
    saved = _finished(workdir, seed, overrides, arg)
    if saved is not None:
        print(f"[demo] seed {seed}: reusing the finished results in {saved_path}")
        return saved
    times, cpu_start = {}, host.cpu_times()
    suffix = f":{arg}" if arg else ""

    # -- stage 0 ------------------------------------------------------------------------------------------------
    pre_cfg = config_lib.load_config(_experiment("pretrain") + suffix, _stage_overrides(overrides, "pretrain"))
    pre_cfg.seed = seed
    stage0 = os.path.join(workdir, "stage0")
    base_model = os.path.join(stage0, "model")
    t = time.perf_counter()
    if os.path.exists(os.path.join(base_model, "config.json")):
        print(f"[demo] seed {seed}, stage 0: reusing the base model in {base_model}")
    else:
        print(f"[demo] seed {seed}, stage 0: tokenizer + pretraining a tiny base model on mixed-quality solutions")
        sft_trainer.train(pre_cfg, stage0)
    times["stage0_s"] = time.perf_counter() - t

    # -- stage 1 config (also defines the evaluation) ----------------------------------------------------------
    rl_cfg = config_lib.load_config(_experiment("r1_zero") + suffix, _stage_overrides(overrides, "r1_zero"))
    rl_cfg.seed = seed
    rl_cfg.model.checkpoint = base_model

    # -- base evaluation ---------------------------------------------------------------------------------------
    t = time.perf_counter()
    print(f"[demo] seed {seed}: evaluating the base model")
    base = evals.evaluate_model_dir(rl_cfg, base_model, per_prompt=True, manifest_dir=stage0)
    times["eval_base_s"] = time.perf_counter() - t

    # -- stage 1: R1-Zero --------------------------------------------------------------------------------------
    t = time.perf_counter()
    print(f"[demo] seed {seed}, stage 1: R1-Zero (GRPO, accuracy + format rewards)")
    rl_dir = os.path.join(workdir, "r1_zero")
    result = grpo_trainer.train(rl_cfg, rl_dir)
    # The trainer's own evaluation of its final parameters is the final evaluation: the same evaluator, prompts
    # and rng as `evaluate_model_dir` on the saved model, so it is not run twice; it ends with the RL stage's time.
    final = {k.removeprefix("eval/"): v for k, v in result.items() if k.startswith("eval/")}
    times["r1_zero_s"] = time.perf_counter() - t
    provenance.check_disjoint(workdir)  # no evaluated question was trained on (raises, naming them, if one was)

    ratio, window = metrics_lib.window_ratio(metrics_lib.read_history(rl_dir), LENGTH_KEY, LENGTH_WINDOW)
    out = _json_safe({
        "seed": seed,
        "overrides": overrides,
        "arg": arg,
        "base": base,
        "final": final,
        "k": rl_cfg.eval.num_samples,
        "temperature": rl_cfg.eval.temperature,
        "num_prompts": base["num_prompts"],
        "split": rl_cfg.eval.split,
        "length_ratio_last_first": ratio,
        "length_window": window,
        "wall_time_s": times,
        "steal_fraction": host.steal_fraction(cpu_start, host.cpu_times()),  # CPU time a VM's host took: slower walls
        "environment": provenance.environment(),
    })
    with open(saved_path, "w") as f:
        json.dump(out, f, indent=1)
    return out
