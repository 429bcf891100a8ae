"""Before and after, side by side: one benchmark run alternately from two checkouts, reported as ratios.

A speed-up claimed for a change is measured here: `--base` is a git revision, checked out into a temporary
worktree; the working tree is the other side. The benchmark (any module under benchmarks/ that takes `--json`) runs
`--repeats` times for each side, alternating base, work, base, work, ... so that drift in the machine's speed hits
both alike, each run in a fresh process with the same benchmark (the working tree's) and arguments, in the side's
root (relative paths such as experiments/ are the side's), with the side's own `r1jax`: only the library differs. Each
JSON field named in `--fields` (dotted paths; `a.b` reads `json["a"]["b"]`) is reported as the median over runs
of each side, with min and max, and the ratio base / work (> 1: the working tree is faster for a time).

    python -m benchmarks.measure.ab --base HEAD~1 --fields step_ms_best -- benchmarks.measure.op_profile
    python -m benchmarks.measure.ab --base HEAD~1 --repeats 2 --fields phases_ms.update,phases_ms.sample \\
        -- benchmarks.measure.rl_step_breakdown --config experiments/r1_zero.py:tiny,headroom --base STAGE0/model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import harness

REPO = harness.REPO


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="git revision to compare the working tree against")
    p.add_argument("--repeats", type=int, default=3, help="runs per side, alternating")
    p.add_argument("--fields", required=True, help="comma-separated dotted JSON paths to report")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- MODULE ARGS... (a module under benchmarks/)")
    args = p.parse_args()
    args.command = [a for a in args.command if a != "--"] if args.command[:1] == ["--"] else args.command
    if not args.command or not args.command[0].startswith("benchmarks."):
        p.error(f"give the benchmark's module after --, e.g. -- benchmarks.measure.op_profile (got {args.command[:1]})")
    return args


def field(record: dict, path: str):
    for key in path.split("."):
        record = record[key]
    return float(record)


def run_side(root: str, command: list[str], out: str, scripts: str) -> dict:
    """One run of the benchmark module with `root`'s r1jax. `scripts` holds only a link to the working tree's
    benchmarks/, ahead of `root` on the path; PYTHONSAFEPATH keeps the working directory (`root`, which has a
    benchmarks/ of its own) off sys.path, here and in any process the benchmark starts."""
    path = os.pathsep.join(filter(None, [scripts, root, os.environ.get("PYTHONPATH", "")]))
    env = dict(os.environ, PYTHONPATH=path, PYTHONSAFEPATH="1")
    cmd = [sys.executable, "-m", command[0], *command[1:], "--json", out]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed in {root}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    with open(out) as f:
        return json.load(f)


def main():
    args = parse_args()
    fields = [f for f in args.fields.split(",") if f]
    load = harness.LoadMonitor(own_threads=os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        base_root, scripts = os.path.join(tmp, "base"), os.path.join(tmp, "scripts")
        os.mkdir(scripts)
        os.symlink(os.path.join(REPO, "benchmarks"), os.path.join(scripts, "benchmarks"))
        subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", base_root, args.base], check=True,
                       capture_output=True)
        try:
            runs = {"base": [], "work": []}
            for i in range(args.repeats):
                for side, root in (("base", base_root), ("work", REPO)):
                    record = run_side(root, args.command, os.path.join(tmp, f"{side}_{i}.json"), scripts)
                    runs[side].append({f: field(record, f) for f in fields})
                    print(f"run {i + 1}/{args.repeats} {side}: " + ", ".join(
                        f"{f}={v:.4g}" for f, v in runs[side][-1].items()), flush=True)
        finally:
            subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", base_root], capture_output=True)
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", args.base], capture_output=True, text=True)
    summary = {}
    print(f"\nbase = {args.base} ({rev.stdout.strip()}), work = the working tree; medians of {args.repeats} runs each")
    print("| field | base | work | base / work |\n|---|---|---|---|")
    for f in fields:
        b = [r[f] for r in runs["base"]]
        w = [r[f] for r in runs["work"]]
        summary[f] = {"base": harness.spread(b), "work": harness.spread(w),
                      "ratio": statistics.median(b) / statistics.median(w)}
        print(f"| {f} | {statistics.median(b):.4g} ({min(b):.4g}–{max(b):.4g}) | "
              f"{statistics.median(w):.4g} ({min(w):.4g}–{max(w):.4g}) | {summary[f]['ratio']:.2f} |")
    load_record = load.record()
    print(harness.loaded_banner(load_record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"base": args.base, "command": args.command, "repeats": args.repeats, "fields": summary,
                       "load_avg": load_record, "loaded": load_record["loaded"],
                       "threads": harness.thread_settings()}, f, indent=1)


if __name__ == "__main__":
    main()
