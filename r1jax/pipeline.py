"""`r1jax pipeline`: the stages of DeepSeek-R1 chained, each export feeding the next, and one results table.

The stages, their configs and how they connect are declared in experiments/pipeline.py: one sub-config per stage
(named after it), and under `plan.<stage>` the stage's experiment file, label, what it exports and which of its
config fields take which earlier stage's outputs. This module executes that declaration and names no stage: it
fills in the wired fields, runs each unfinished stage with its experiment file's ENTRY, evaluates every exported
model on the same held-out prompts (r1jax.evals: pass@1 over k samples, cons@k, greedy accuracy, format rate,
language consistency, mean length), and writes WORKDIR/results.md and WORKDIR/results.json.

    WORKDIR/<stage>/model/                   a 'model' or 'scorer' export: the stage is complete
    WORKDIR/<stage>/data.jsonl               a 'data' export (rejection sampling's set): the stage is complete
    WORKDIR/<stage>/pipeline_stage.json      wall time, wired inputs and final metrics of the run that finished it
    WORKDIR/<stage>/eval.json                the held-out evaluation of the stage's model (cached)

A re-run skips complete stages and cached evaluations; an unfinished stage is started again in its own
directory, where its trainer resumes from its checkpoints (rejection sampling from its finished chunks).
"""

from __future__ import annotations

import importlib
import json
import os
import time

import ml_collections

from r1jax import config_lib, evals, host
from r1jax import metrics as metrics_lib
from r1jax.data import provenance
from r1jax.models import config_from_hf
from r1jax.rewards.reward_model import is_exported

STAGE_FILE, EVAL_FILE = "pipeline_stage.json", "eval.json"
EXPORTS = ("model", "scorer", "data")  # what a stage leaves behind (`plan.<stage>.export`)
OUTPUTS = ("model", "tokenizer", "data", "wall_time_s")  # what a later stage's config field can take from it


def _model(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage, "model")


def _data_set(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage, "data.jsonl")


def is_complete(workdir: str, stage: str, export: str) -> bool:
    """Whether the stage's export is there (written atomically by its trainer, last)."""
    if export == "data":
        return os.path.exists(_data_set(workdir, stage))
    if export == "scorer":
        return is_exported(_model(workdir, stage))
    return os.path.exists(os.path.join(_model(workdir, stage), "config.json"))


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, default=str)
    os.replace(tmp, path)


def validate(c) -> None:
    """The declaration is consistent: every stage run has a plan, every input names a declared stage, a known
    output and an existing field; raised before any stage runs."""
    for stage in c.stages:
        if stage not in c.plan:
            raise ValueError(f"stages={tuple(c.stages)}: {stage!r} has no plan.{stage}; declared: {tuple(c.plan)}")
        spec = c.plan[stage]
        if spec.export not in EXPORTS:
            raise ValueError(f"plan.{stage}.export={spec.export!r}: expected one of {EXPORTS}")
        for field, source, output, *factor in spec.inputs:
            where = f"plan.{stage}.inputs {field!r}"
            if source not in c.plan:
                raise ValueError(f"{where}: source stage {source!r} is not declared ({tuple(c.plan)})")
            if output not in OUTPUTS:
                raise ValueError(f"{where}: output {output!r}: expected one of {OUTPUTS}")
            if (output == "wall_time_s") != bool(factor):
                raise ValueError(
                    f"{where}: ({source!r}, {output!r}, *{factor}): a factor field goes with 'wall_time_s'"
                )
            if factor and factor[0] not in c:
                raise ValueError(f"{where}: factor field {factor[0]!r} is not a pipeline config field")
            _field_parent(c[stage], field, where)


def _field_parent(cfg, field: str, where: str):
    """(the ConfigDict holding `field`, its last name)."""
    *path, name = field.split(".")
    node = cfg
    for part in path:
        node = node[part] if part in node else None
        if not isinstance(node, ml_collections.ConfigDict):
            raise ValueError(f"{where}: the stage's config has no field {field!r}")
    if name not in node:
        raise ValueError(f"{where}: the stage's config has no field {field!r}")
    return node, name


def _output(c, workdir: str, stage: str, field: str, source: str, output: str, *factor):
    """The value `source`'s `output` gives `stage`'s config field `field`."""
    if output == "model":
        return _model(workdir, source)
    if output == "tokenizer":
        return os.path.join(_model(workdir, source), "tokenizer.model")
    if output == "data":
        return _data_set(workdir, source)
    done = _read_json(os.path.join(workdir, source, STAGE_FILE))
    if done is None:
        raise RuntimeError(
            f"{stage}: {field} takes {source}'s wall time, but {workdir}/{source}/{STAGE_FILE} is missing; run the "
            f"{source} stage (delete WORKDIR/{source} to redo it)"
        )
    return float(c[factor[0]] * done["wall_time_s"])


def stage_config(c, stage: str, workdir: str) -> ml_collections.ConfigDict:
    """The stage's config (a copy) with the fields its plan wires to earlier stages' outputs filled in."""
    cfg = ml_collections.ConfigDict(c[stage].to_dict())
    cfg.seed = cfg.seed + c.seed  # the pipeline's seed shifts every stage's (all 0 in the presets)
    for field, *source in c.plan[stage].inputs:
        node, name = _field_parent(cfg, field, f"plan.{stage}.inputs {field!r}")
        value = _output(c, workdir, stage, field, *source)
        node[name] = (value,) if isinstance(node[name], tuple) else value  # e.g. data.files, a tuple of files
    return cfg


def wired_inputs(c, stage: str, cfg) -> dict:
    """The values the plan wired into the stage's config `cfg`, by field."""
    out = {}
    for field, *_ in c.plan[stage].inputs:
        node, name = _field_parent(cfg, field, f"plan.{stage}.inputs {field!r}")
        out[field] = node[name]
    return out


def _run_stage(c, stage: str, workdir: str) -> dict:
    cfg = stage_config(c, stage, workdir)
    module, _, fn = config_lib.load_module(c.plan[stage].experiment).ENTRY.partition(":")
    stage_dir = os.path.join(workdir, stage)
    t0 = time.perf_counter()
    result = getattr(importlib.import_module(module), fn)(cfg, stage_dir)
    wall = time.perf_counter() - t0
    if "preempted_at" in result:
        raise SystemExit(f"[pipeline] {stage}: preempted at step {result['preempted_at']}; re-run to resume")
    scalars = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    record = {"wall_time_s": wall, "inputs": wired_inputs(c, stage, cfg), "result": scalars}
    _write_json(os.path.join(stage_dir, STAGE_FILE), record)
    return record


def _num_params(model_dir: str) -> int | None:
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return config_from_hf(json.load(fh)).num_params()


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "load_average_1_5_15": list(os.getloadavg())}


def _last_step(stage_dir: str) -> int | None:
    steps = [h["step"] for h in metrics_lib.read_history(stage_dir)]
    return max(steps) if steps else None


def run(config, workdir: str) -> dict:
    """Runs the unfinished stages of `config.stages`, evaluates every exported model, writes the results table."""
    c = config
    validate(c)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    t_start, machine_start, cpu_start = time.perf_counter(), _machine(), host.cpu_times()
    ran = []
    for stage in c.stages:
        if is_complete(workdir, stage, c.plan[stage].export):
            print(f"[pipeline] {stage}: complete, skipped")
            continue
        print(f"[pipeline] {stage}: {c.plan[stage].label}")
        _run_stage(c, stage, workdir)
        ran.append(stage)

    rows = {}
    eval_cfg = ml_collections.ConfigDict(c.eval.to_dict())
    eval_cfg.seed = eval_cfg.seed + c.seed
    for stage in c.stages:
        if c.plan[stage].export != "model":
            continue
        path = os.path.join(workdir, stage, EVAL_FILE)
        metrics = _read_json(path)
        if metrics is None:
            print(f"[pipeline] evaluating {stage}")
            metrics = {
                k: v
                for k, v in evals.evaluate_model_dir(  # per-prompt sums kept: several seeds pool into one interval
                    eval_cfg, _model(workdir, stage), per_prompt=True, manifest_dir=os.path.join(workdir, stage)
                ).items()
                if k != "samples"
            }
            metrics = {k: float(v) if hasattr(v, "item") else v for k, v in metrics.items()}
            _write_json(path, metrics)
        rows[stage] = metrics

    # Every stage wrote the questions it trained and evaluated on; a held-out question that some stage trained on
    # makes the table meaningless, so the run stops here, naming the questions and the stages.
    data_check = provenance.check_disjoint(workdir)
    results = {
        "stages": {},
        "data_check": data_check,
        "eval": {
            "k": c.eval.eval.num_samples,
            "num_prompts": c.eval.eval.num_prompts,
            "temperature": c.eval.eval.temperature,
            "top_p": c.eval.eval.top_p,
            "task": c.eval.data.task,
        },
    }
    for stage in c.stages:
        done = _read_json(os.path.join(workdir, stage, STAGE_FILE)) or {}
        entry = {
            "label": c.plan[stage].label,
            "wall_time_s": done.get("wall_time_s"),
            "num_params": _num_params(_model(workdir, stage)),
            **rows.get(stage, {}),
        }
        budget = [(field, source) for field, source, output, *_ in c.plan[stage].inputs if output == "wall_time_s"]
        if budget:  # a stage run for an earlier stage's wall time: its budget and how many steps it got
            field, source = budget[0]
            entry["time_budget_s"] = done.get("inputs", {}).get(field)
            entry["time_budget_from"] = source
            entry["steps"] = _last_step(os.path.join(workdir, stage))
        results["stages"][stage] = entry
    for stage in c.stages:
        if c.plan[stage].report:
            results[stage] = _read_json(os.path.join(workdir, stage, c.plan[stage].report))
    results["comparisons"] = comparisons(rows, c)
    results["run"] = {
        "this_invocation_wall_time_s": time.perf_counter() - t_start,
        "stages_run": ran,
        "machine_at_start": machine_start,
        "machine_at_end": _machine(),
        # the share of CPU time the hypervisor gave other guests during this invocation: wall times scale with it
        "steal_fraction": host.steal_fraction(cpu_start, host.cpu_times()),
        "environment": provenance.environment(),
    }
    _write_json(os.path.join(workdir, "results.json"), results)
    text = results_markdown(results, c)
    with open(os.path.join(workdir, "results.md"), "w") as fh:
        fh.write(text)
    print(text)
    return {"stages_run": ",".join(ran), **{f"{s}/pass@1": m["pass@1"] for s, m in rows.items()}}


def comparisons(rows: dict, c) -> list[str]:
    """Plain-language lines for the declared comparisons (`comparisons`, `closer_to_source`: paper 4.1), stating
    which side is better; a line whose stages were not evaluated is left out."""
    out = []
    for a, b, what, *metric in c.comparisons:  # (a, b, what[, metric]); pass@1 unless a metric is named
        name = metric[0] if metric else "pass@1"
        if a in rows and b in rows and name in rows[a] and name in rows[b]:
            pa, pb = rows[a][name], rows[b][name]
            if name == "pass@1":
                verdict = "better than" if pa > pb else "equal to" if pa == pb else "NOT better than"
            else:
                verdict = "higher than" if pa > pb else "equal to" if pa == pb else "lower than"
            out.append(f"{what}: {c.plan[a].label} {name} {pa:.3f} is {verdict} {c.plan[b].label} {name} {pb:.3f}")
    src, ((a, name_a, who_a), (b, name_b, who_b)) = c.closer_to_source.source, c.closer_to_source.sides
    if all(s in rows for s in (src, a, b)):
        p = rows[src]["pass@1"]
        gap_a, gap_b = abs(rows[a]["pass@1"] - p), abs(rows[b]["pass@1"] - p)
        closer = name_a if gap_a < gap_b else name_b if gap_b < gap_a else "neither"
        out.append(
            f"closer to the data's source ({c.plan[src].label}, pass@1 {p:.3f}): {who_a} |Δ| {gap_a:.3f}, "
            f"{who_b} |Δ| {gap_b:.3f} → {closer}"
        )
    return out


def _data_set_lines(report: dict) -> list[str]:
    """A 'data' export's report (rejection sampling's stats.json): kept fractions and the rows written."""
    kept = ", ".join(f"{k} {v['kept_fraction']:.2f}" for k, v in report.items() if "kept_fraction" in v)
    data = report["data"]
    return [
        f"Rejection sampling, kept fraction per filter (in order): {kept}; "
        f"{data['num_reasoning']} reasoning + {data['num_non_reasoning']} non-reasoning rows."
    ]


def _reward_model_lines(report: dict) -> list[str]:
    """A 'scorer' export's report (its results.json): held-out pairwise accuracy before and after."""
    init = report.get("eval_init/pairwise_accuracy")
    return [
        f"Reward model, held-out pairwise accuracy: {report['eval/pairwise_accuracy']:.3f}"
        + (f" (before training {init:.3f})" if init is not None else "")
        + f" on {report['data/num_eval_pairs']} pairs."
    ]


REPORT_LINES = {"data": _data_set_lines, "scorer": _reward_model_lines}  # by export kind


def results_markdown(results: dict, c) -> str:
    cols = list(evals.METRICS)
    head = ["stage", "params", *cols, "stage wall s"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    fmt = lambda v, spec=".3f": "" if v is None else format(v, spec) if isinstance(v, float) else str(v)
    for e in results["stages"].values():
        cells = [e["label"], fmt(e.get("num_params"), ",")]
        cells += [fmt(e.get(k)) if k != "mean_length" else fmt(e.get(k), ".1f") for k in cols]
        cells.append(fmt(e.get("wall_time_s"), ".0f"))
        lines.append("| " + " | ".join(cells) + " |")
    ev = results["eval"]
    lines += [
        "",
        f"Held-out {ev['task']} prompts: {ev['num_prompts']}; pass@1 averaged over k = {ev['k']} samples "
        f"at T = {ev['temperature']}, top-p = {ev['top_p']}; cons@{ev['k']} by majority vote.",
    ]
    for stage in results["stages"]:
        report, kind = results.get(stage), c.plan[stage].export
        if c.plan[stage].report and report and kind in REPORT_LINES:
            lines += ["", *REPORT_LINES[kind](report)]
    if results["comparisons"]:
        lines += [""] + [f"- {x}" for x in results["comparisons"]]
    for e in results["stages"].values():
        if e.get("time_budget_s") is not None:
            lines.append(
                f"- {e['label']}: budget {e['time_budget_s']:.0f} s ({e['time_budget_from']}'s stage wall time), "
                f"{e.get('steps')} steps"
            )
    run = results["run"]
    lines += [
        "",
        f"This invocation: {run['this_invocation_wall_time_s']:.0f} s, stages run: "
        f"{', '.join(run['stages_run']) or 'none'}; {run['machine_at_start']['cpus']} CPUs, load average "
        f"{run['machine_at_start']['load_average_1_5_15'][0]:.1f} at start, "
        f"{run['machine_at_end']['load_average_1_5_15'][0]:.1f} at end"
        + ("" if run.get("steal_fraction") is None else f", hypervisor steal {run['steal_fraction']:.0%}")
        + ".",
    ]
    return "\n".join(lines) + "\n"
