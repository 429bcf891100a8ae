"""What the re-checks of the headroom demo's models are: a guess re-checked, a step re-checked, or none.

`evals.reflection_rate` counts responses with a re-check phrase; this splits the responses of a demo seed's base
model (stage0) and R1-Zero policy by the form they take (arithmetic, the `tiny,headroom` presets), and for each
re-check whether it changed what came before it:

  guess, re-checked   "347+85=431. Wait, let me re-check: 7+5=12, ...": a one-step answer, then the columns
  step, re-checked    "7+5=12, write 2, carry 1. Wait, let me re-check: 7+5=12, ...": a column, then that column
                      again and the rest; "the step changed" counts those whose re-done column differs (a fix)
  direct              a one-step answer alone
  worked              the columns, no re-check

    python -m benchmarks.studies.reflection_kinds --workdir WORKDIR/seed_0 --split test --json /tmp/reflection.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re

from r1jax import config_lib, evals, rollouts, sharding, train_state

GUESS_RE = re.compile(r"\s*(?:<think>\s*)?\d+\+\d+=(\d+)\.\s*Wait, let me re-check:")
STEP_RE = re.compile(r"(\d+\+\d+(?:\+1)?=\d+)[^.]*\.\s*Wait, let me re-check:\s*(\d+\+\d+(?:\+1)?=\d+)")
DIRECT_RE = re.compile(r"\s*(?:<think>\s*)?\d+\+\d+=\d+\.")


def kinds(samples, records, task) -> dict:
    gold = {r["id"]: r for r in records}
    c = collections.Counter()
    for s in samples:
        text, ok = s["completion"], s["correct"]
        if m := GUESS_RE.match(text):
            guess_right = task.verify(m.group(1), gold[s["id"]])
            c["guess, re-checked"] += 1
            c["guess, re-checked: guess wrong"] += not guess_right
            c["guess, re-checked: guess wrong, answer right"] += (not guess_right) and ok
        elif m := STEP_RE.search(text):
            c["step, re-checked"] += 1
            c["step, re-checked: the step changed"] += m.group(1) != m.group(2)
        elif DIRECT_RE.match(text):
            c["direct"] += 1
        elif "re-check" in text:
            c["other re-check"] += 1
        else:
            c["worked"] += 1
    return {"samples": len(samples), **c}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a headroom demo seed's directory (holds stage0/ and r1_zero/)")
    p.add_argument("--split", default="test", choices=("validation", "test"))
    p.add_argument("--seed", type=int, default=0, help="the seed the demo ran with (the evaluator's rng)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cfg = config_lib.load_config("experiments/r1_zero.py:tiny,headroom", [f"eval.split={args.split}"])
    cfg.seed = args.seed
    mesh = sharding.make_mesh(cfg.mesh.shape)
    _, records, task = rollouts.load_splits(cfg)
    out = {}
    for name in ("stage0", "r1_zero"):
        cfg.model.checkpoint = os.path.join(args.workdir, name, "model")
        model, tokenizer = train_state.build_model(cfg.model, cfg.seed, cfg.tokenizer.path)
        graphdef, params, _ = train_state.split_model(model)
        evaluator = evals.Evaluator.from_config(cfg, graphdef, tokenizer, records, task, mesh)
        res = evaluator(params, return_samples=True)
        out[name] = {"reflection_rate": res["reflection_rate"], "pass@1": res["pass@1"],
                     **kinds(res["samples"], evaluator.records, task)}
        print(name, json.dumps(out[name]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
