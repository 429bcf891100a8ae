"""Sweeps: an experiment file's `sweep(add)` expanded into runs, each in its own workdir, run one after another
here or printed as the commands that start each run on every worker of a TPU VM slice; and one results table.

An experiment file declares its sweep as data next to `get_config` (big_vision style):

    def sweep(add):
        for lr in (3e-5, 1e-4, 3e-4):
            add(**{"optim.learning_rate": lr})            # or add({"optim.learning_rate": lr}); name="..." optional

    r1jax sweep --config experiments/r1_zero.py:tiny --workdir /tmp/sw --config.model.checkpoint=/tmp/stage0/model
    r1jax sweep --config experiments/r1_zero.py:qwen2.5-1.5b --workdir gs://bucket/sw \\
        --print-launch tpu --tpu-name my-v5e-8 --zone us-west4-a --remote-dir r1jax
    r1jax results --workdir /tmp/sw

Each run is `r1jax train --config FILE:ARG --workdir DIR/<run-name> --config.<field>=<value> ...`, the sweep's
overrides after the ones given on the sweep's command line. Locally every run is a fresh process (a failed run
leaves the others going; rerunning the sweep resumes unfinished runs from their checkpoints). `DIR/sweep.json`
lists the runs, their overrides and exit codes; `results` reads it and each run's metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any

from r1jax import config_lib
from r1jax import metrics as metrics_lib

MANIFEST = "sweep.json"
RESULTS = "results.md"
# Columns of `r1jax results` when --keys is not given: those that any run logged, in this order.
DEFAULT_KEYS = (
    "rl/reward_mean",
    "eval/pass@1",
    "eval/cons@k",
    "eval/greedy_accuracy",
    "rl/completion_length_mean",
    "sft/loss",
    "perf/step_time_s",
)


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    overrides: tuple[tuple[str, Any], ...]  # (dotted config field, value), in the order sweep(add) gave them

    def override_args(self) -> list[str]:
        return [f"--config.{k}={format_value(v)}" for k, v in self.overrides]


def format_value(v) -> str:
    """A value as `--config.x=` text that config_lib casts back to the field's type."""
    if isinstance(v, (tuple, list)):
        return repr(tuple(v))
    return str(v)


def run_name(overrides) -> str:
    """`rl.group_size=4,optim.learning_rate=0.0001`: readable, unique per override set, safe as a directory name."""
    text = ",".join(f"{k}={format_value(v)}" for k, v in overrides) or "base"
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)


def expand(config_spec: str, common_overrides=()) -> list[Run]:
    """The runs of `FILE:ARG`'s `sweep(add)`, each checked against the locked config before anything runs."""
    path = config_spec.partition(":")[0]
    module = config_lib.load_module(path)
    if not callable(getattr(module, "sweep", None)):
        raise ValueError(f"--config {path}: the experiment file defines no sweep(add)")
    runs: list[Run] = []

    def add(*dicts, name: str | None = None, **kwargs):
        merged: dict[str, Any] = {}
        for d in dicts:
            if not isinstance(d, dict):
                raise TypeError(f"sweep(add): add() takes dicts of overrides and keyword overrides, got {d!r}")
            merged.update(d)
        merged.update(kwargs)
        items = tuple((k.removeprefix("config."), v) for k, v in merged.items())
        runs.append(Run(name or run_name(items), items))

    module.sweep(add)
    if not runs:
        raise ValueError(f"--config {path}: sweep(add) added no runs")
    names = [r.name for r in runs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"sweep(add) in {path}: run names {dupes} occur twice; pass name= to add()")
    for r in runs:  # a typo in a sweep fails here, naming the run, not hours later
        try:
            config_lib.load_config(config_spec, list(common_overrides) + r.override_args())
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"sweep run {r.name!r}: {e}") from e
    return runs


def train_argv(config_spec: str, run_dir: str, run: Run, common_overrides=()) -> list[str]:
    """`r1jax train` arguments of one run (without the program name)."""
    return ["train", "--config", config_spec, "--workdir", run_dir, *common_overrides, *run.override_args()]


def launch_commands(
    config_spec: str,
    workdir: str,
    runs: list[Run],
    *,
    target: str,
    common_overrides=(),
    tpu_name: str = "",
    zone: str = "",
    remote_dir: str = "",
) -> list[str]:
    """One shell command per run. 'local': `r1jax train ...`; 'tpu': a gcloud ssh that starts that command on
    every worker of the slice at once (each worker is one jax process; jax.distributed auto-detects the slice)."""
    if target not in ("local", "tpu"):
        raise ValueError(f"--print-launch={target!r}: expected 'local' or 'tpu'")
    if target == "tpu" and not (tpu_name and zone):
        raise ValueError(f"--print-launch=tpu needs --tpu-name and --zone (got {tpu_name!r}, {zone!r})")
    out = []
    for r in runs:
        cmd = shlex.join(["r1jax", *train_argv(config_spec, _join(workdir, r.name), r, common_overrides)])
        if target == "tpu":
            if remote_dir:
                cmd = f"cd {shlex.quote(remote_dir)} && {cmd}"
            cmd = (
                f"gcloud compute tpus tpu-vm ssh {shlex.quote(tpu_name)} --zone={shlex.quote(zone)} --worker=all "
                f"--command={shlex.quote(cmd)}"
            )
        out.append(cmd)
    return out


def _join(workdir: str, name: str) -> str:
    return workdir.rstrip("/") + "/" + name  # also for gs:// paths, which os.path.join handles only by accident


def write_manifest(workdir: str, config_spec: str, runs: list[Run], common_overrides, status: dict) -> str:
    path = os.path.join(workdir, MANIFEST)
    record = {
        "config": config_spec,
        "common_overrides": list(common_overrides),
        "runs": [
            {"name": r.name, "overrides": [[k, v] for k, v in r.overrides], **status.get(r.name, {})} for r in runs
        ],
    }
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1, default=str)
    os.replace(path + ".tmp", path)
    return path


def run_local(config_spec: str, workdir: str, runs: list[Run], common_overrides=(), *, python=None, env=None):
    """Runs one after another, each `python -m r1jax.main train ...` in a fresh process with its output in
    DIR/<run>/log.txt. Returns {name: {'returncode', 'seconds'}}; the manifest is updated after every run."""
    os.makedirs(workdir, exist_ok=True)
    status: dict[str, dict] = {}
    write_manifest(workdir, config_spec, runs, common_overrides, status)
    for i, r in enumerate(runs):
        run_dir = os.path.join(workdir, r.name)
        os.makedirs(run_dir, exist_ok=True)
        argv = [python or sys.executable, "-m", "r1jax.main", *train_argv(config_spec, run_dir, r, common_overrides)]
        print(f"[sweep {i + 1}/{len(runs)}] {r.name}: {shlex.join(argv[2:])}", flush=True)
        t0 = time.perf_counter()
        with open(os.path.join(run_dir, "log.txt"), "a") as log_file:
            rc = subprocess.call(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        status[r.name] = {"returncode": rc, "seconds": round(time.perf_counter() - t0, 1)}
        if rc:
            print(f"[sweep] {r.name} failed (exit {rc}); see {os.path.join(run_dir, 'log.txt')}", flush=True)
        write_manifest(workdir, config_spec, runs, common_overrides, status)
    return status


# ---------------------------------------------------------------------------------------------------------------
# Results


def final_metrics(run_dir: str) -> dict:
    """The last logged value of every metric of a run (with 'step': the last step), {} without metrics.jsonl."""
    out: dict = {}
    for record in metrics_lib.read_history(run_dir):
        out.update(record)
    return out


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def results_table(workdir: str, keys=None) -> str:
    """A Markdown table, one row per run (the manifest's order, else every subdirectory with metrics.jsonl):
    the run, its overrides, its last step, and the final value of each metric in `keys`."""
    manifest_path = os.path.join(workdir, MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        entries = [(r["name"], dict(r["overrides"]), r.get("returncode")) for r in manifest["runs"]]
    else:
        names = sorted(d for d in os.listdir(workdir) if os.path.exists(os.path.join(workdir, d, "metrics.jsonl")))
        entries = [(n, {}, None) for n in names]
    if not entries:
        raise ValueError(f"--workdir {workdir}: no sweep.json and no run directories with metrics.jsonl")
    finals = {name: final_metrics(os.path.join(workdir, name)) for name, _, _ in entries}
    if keys:
        keys = list(keys)
    else:
        keys = [k for k in DEFAULT_KEYS if any(k in m for m in finals.values())]
        if not keys:  # an experiment with its own metric names: all of them, in name order
            keys = sorted({k for m in finals.values() for k in m if k != "step"})
    override_keys = list(dict.fromkeys(k for _, o, _ in entries for k in o))
    header = ["run", *override_keys, "step", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, overrides, rc in entries:
        m = finals[name]
        status = name if rc in (None, 0) else f"{name} (exit {rc})"
        row = [status, *[_fmt(overrides.get(k)) for k in override_keys], _fmt(m.get("step"))]
        row += [_fmt(m.get(k)) for k in keys]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
