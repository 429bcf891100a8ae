"""The full R1 pipeline over several seeds, pooled: every stage's held-out metrics with 95% intervals over
seeds × prompts, and the paper's comparisons as paired differences with their intervals.

    python -m benchmarks.studies.pipeline_seeds --workdir /tmp/pipe --seeds 3 [--json PATH] [--config.x=y ...]

For each seed s it runs `r1jax pipeline --config experiments/pipeline.py:tiny --workdir WORKDIR/seed_<s>
--config.seed=<s>` in a fresh process (a finished seed is reused: the pipeline skips complete stages and cached
evaluations), then pools the stages' WORKDIR/seed_<s>/<stage>/eval.json (their per-prompt sums; every seed is
scored on the same `test` prompts) with r1jax.evals.summarize. A comparison "a vs b" on a metric is the pooled
difference a − b with its paired bootstrap interval (r1jax.evals.bootstrap_diff_ci): a difference whose interval
holds 0 is reported as "not a finding". Writes WORKDIR/pooled.md (and --json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks import harness
from r1jax import config_lib, evals

REPO = harness.REPO

COLUMNS = (  # the metrics of the pooled table, in order
    "pass@1", "format_rate", "accuracy_given_format", "cons@k", "mean_length", "language_consistency",
    "language_mixing",
)


def run_seed(workdir: str, seed: int, spec: str, overrides: list[str]) -> float:
    """Runs (or finishes) one seed's pipeline in a fresh process; returns its wall time."""
    cmd = [sys.executable, "-m", "r1jax.main", "pipeline", "--config", spec, "--workdir", workdir,
           f"--config.seed={seed}", *overrides]
    print("[pipeline_seeds] " + " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def pooled(workdirs: list[str], config) -> dict:
    """Per stage: pooled metrics with intervals; comparisons with paired-difference intervals; per-seed reports."""
    import numpy as np

    sums, stages = {}, {}
    for stage in config.stages:
        if config.plan[stage].export != "model":
            continue
        runs = []
        for w in workdirs:
            with open(os.path.join(w, stage, "eval.json")) as fh:
                runs.append(evals.prompt_sums_from_json(json.load(fh)["per_prompt"]))
        sums[stage] = runs
        stages[stage] = {"label": config.plan[stage].label, **evals.summarize(runs)}
        stages[stage]["per_seed_pass@1"] = [evals.ratio(*r["pass@1"]) for r in runs]

    def stacked(stage, name):
        return tuple(np.stack([r[name][i] for r in sums[stage]]) for i in (0, 1))

    comparisons = []
    for a, b, what, *metric in config.comparisons:
        name = metric[0] if metric else "pass@1"
        if a in sums and b in sums:
            lo, hi = evals.bootstrap_diff_ci(stacked(a, name), stacked(b, name))
            diff = stages[a][name] - stages[b][name]
            verdict = "not a finding (interval holds 0)" if lo <= 0 <= hi else ("a higher" if lo > 0 else "a lower")
            comparisons.append(dict(what=what, a=a, b=b, metric=name, a_value=stages[a][name],
                                    b_value=stages[b][name], diff=diff, diff_ci=[lo, hi], verdict=verdict))
    src = config.closer_to_source.source
    (da, *_), (db, *_) = config.closer_to_source.sides
    if all(s in sums for s in (src, da, db)):
        gaps = {s: abs(stages[s]["pass@1"] - stages[src]["pass@1"]) for s in (da, db)}
        comparisons.append(dict(what=f"closer to {src} (pass@1 {stages[src]['pass@1']:.3f})", gaps=gaps))
    reports = {}
    for stage in config.stages:
        if config.plan[stage].report:
            reports[stage] = []
            for w in workdirs:
                with open(os.path.join(w, stage, config.plan[stage].report)) as fh:
                    reports[stage].append(json.load(fh))
    walls = []
    for w in workdirs:
        with open(os.path.join(w, "results.json")) as fh:
            res = json.load(fh)
        walls.append({s: e.get("wall_time_s") for s, e in res["stages"].items()})
    return {"stages": stages, "comparisons": comparisons, "reports": reports, "stage_wall_s": walls}


def markdown(out: dict) -> str:
    head = ["stage", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for e in out["stages"].values():
        cells = [e["label"]]
        for k in COLUMNS:
            lo, hi = e[f"{k}_ci"]
            spec = ".1f" if k == "mean_length" else ".3f"
            cells.append(f"{e[k]:{spec}} [{lo:{spec}}, {hi:{spec}}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for c in out["comparisons"]:
        if "gaps" in c:
            lines.append(f"- {c['what']}: |Δ pass@1| " + ", ".join(f"{s} {g:.3f}" for s, g in c["gaps"].items()))
        else:
            lo, hi = c["diff_ci"]
            lines.append(f"- {c['what']}: {c['metric']} {c['a_value']:.3f} − {c['b_value']:.3f} = {c['diff']:+.3f} "
                         f"[{lo:+.3f}, {hi:+.3f}]: {c['verdict']}")
    for rm in out["reports"].get("reward_model", []):
        lines.append(f"- reward model held-out pairwise accuracy {rm['eval/pairwise_accuracy']:.3f} "
                     f"(before training {rm.get('eval_init/pairwise_accuracy', float('nan')):.3f}) on "
                     f"{rm['data/num_eval_pairs']} deduplicated pairs")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--config", default=os.path.join(REPO, "experiments", "pipeline.py") + ":tiny")
    p.add_argument("--json", default="")
    args, overrides = p.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad or args.seeds < 1:
        p.error(f"unknown arguments {bad}" if bad else f"--seeds={args.seeds}: must be >= 1")
    config = config_lib.load_config(args.config, [o[len("--config."):] for o in overrides])
    workdirs, walls = [], {}
    for s in range(args.seed, args.seed + args.seeds):
        w = os.path.join(os.path.abspath(args.workdir), f"seed_{s}")
        walls[s] = run_seed(w, s, args.config, overrides)
        workdirs.append(w)
    out = pooled(workdirs, config)
    out.update(seeds=list(range(args.seed, args.seed + args.seeds)), this_invocation_wall_s=walls,
               overrides=overrides, load_average_at_end=list(os.getloadavg()))
    text = markdown(out)
    print(text)
    with open(os.path.join(args.workdir, "pooled.md"), "w") as fh:
        fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
