"""`r1jax pipeline`: the stages of DeepSeek-R1 chained, each export feeding the next, and one results table.

The stages and their configs are declared in experiments/pipeline.py (one sub-config per stage, named after
it); this module fills in the paths that connect them, runs what is not finished, evaluates every model on the
same held-out prompts (r1jax.evals: pass@1 over k samples, cons@k, greedy accuracy, format rate, language
consistency, mean length), and writes WORKDIR/results.md and WORKDIR/results.json.

    WORKDIR/<stage>/model/            the stage's export (HF directory + tokenizer): the stage is complete
    WORKDIR/rejection_sampling/data.jsonl    (the data-set stage's completion marker)
    WORKDIR/<stage>/pipeline_stage.json      wall time and final metrics of the run that finished the stage
    WORKDIR/<stage>/eval.json                the held-out evaluation of the stage's model (cached)

A re-run skips complete stages and cached evaluations; an unfinished stage is started again in its own
directory, where its trainer resumes from its checkpoints (rejection sampling from its finished chunks).

The student comparison follows the paper's section 4.1: the same small base model (`student_base`) is either
distilled (SFT on the teacher's curated samples) or trained by R1-Zero-style RL for the same wall time as the
distillation took; the table reports both, whichever is better.
"""

from __future__ import annotations

import json
import os
import time

import ml_collections

from r1jax import evals

LABELS = {
    "stage0": "0 base (pretrained)",
    "r1_zero": "1 R1-Zero",
    "cold_start": "2 cold start SFT",
    "reasoning_rl": "3 reasoning RL",
    "rejection_sampling": "4a rejection sampling (data)",
    "rejection_sft": "4 rejection-sampling SFT",
    "reward_model": "5a reward model",
    "general_rl": "5 all-scenario RL = R1 (teacher)",
    "student_base": "6a student base",
    "distill": "6 distilled student",
    "student_rl": "6b student, R1-Zero RL (distill's wall time)",
}
ENTRIES = {
    "stage0": "r1jax.trainers.sft:train",
    "r1_zero": "r1jax.trainers.grpo:train",
    "cold_start": "r1jax.trainers.sft:train",
    "reasoning_rl": "r1jax.trainers.grpo:train",
    "rejection_sampling": "r1jax.trainers.rejection_sampling:run",
    "rejection_sft": "r1jax.trainers.sft:train",
    "reward_model": "r1jax.trainers.reward_model:train",
    "general_rl": "r1jax.trainers.grpo:train",
    "student_base": "r1jax.trainers.sft:train",
    "distill": "r1jax.trainers.distill:train",
    "student_rl": "r1jax.trainers.grpo:train",
}
NOT_EVALUATED = ("rejection_sampling", "reward_model")
STAGE_FILE, EVAL_FILE = "pipeline_stage.json", "eval.json"


def _model(workdir: str, stage: str) -> str:
    return os.path.join(workdir, stage, "model")


def _data_set(workdir: str) -> str:
    return os.path.join(workdir, "rejection_sampling", "data.jsonl")


def is_complete(workdir: str, stage: str) -> bool:
    """Whether the stage's export is there (written atomically by its trainer, last)."""
    if stage == "rejection_sampling":
        return os.path.exists(_data_set(workdir))
    if stage == "reward_model":
        from r1jax.trainers.reward_model import is_exported

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


def stage_config(c, stage: str, workdir: str) -> ml_collections.ConfigDict:
    """The stage's config (a copy) with the paths to the exports it starts from."""
    cfg = ml_collections.ConfigDict(c[stage].to_dict())
    m = lambda s: _model(workdir, s)
    starts_from = {
        "r1_zero": "stage0",
        "cold_start": "stage0",
        "reasoning_rl": "cold_start",
        "rejection_sampling": "reasoning_rl",
        "rejection_sft": "stage0",
        "reward_model": "rejection_sft",
        "general_rl": "rejection_sft",
        "distill": "student_base",
        "student_rl": "student_base",
    }
    if stage in starts_from:
        cfg.model.checkpoint = m(starts_from[stage])
    if stage in ("rejection_sft", "distill"):
        cfg.data.files = (_data_set(workdir),)
    if stage == "general_rl":
        cfg.rewards.reward_model = m("reward_model")
    if stage == "student_base":
        cfg.tokenizer.path = os.path.join(m("stage0"), "tokenizer.model")  # the student shares the teacher's
    if stage == "distill":
        cfg.teacher.checkpoint = m("general_rl")
    if stage == "student_rl":
        done = _read_json(os.path.join(workdir, "distill", STAGE_FILE))
        if done is None:
            raise RuntimeError(
                f"student_rl: its wall-time budget is distill's, but {workdir}/distill/{STAGE_FILE} is missing; "
                "run the distill stage (delete WORKDIR/distill to redo it)"
            )
        cfg.rl.max_time_s = float(c.student_rl_time_factor * done["wall_time_s"])
    return cfg


def _run_stage(c, stage: str, workdir: str) -> dict:
    import importlib

    cfg = stage_config(c, stage, workdir)
    module, _, fn = ENTRIES[stage].partition(":")
    stage_dir = os.path.join(workdir, stage)
    t0 = time.perf_counter()
    result = getattr(importlib.import_module(module), fn)(cfg, stage_dir)
    wall = time.perf_counter() - t0
    if "preempted_at" in result:
        raise SystemExit(f"[pipeline] {stage}: preempted at step {result['preempted_at']}; re-run to resume")
    scalars = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    record = {"wall_time_s": wall, "result": scalars}
    if stage == "student_rl":
        record["max_time_s"] = cfg.rl.max_time_s
    _write_json(os.path.join(stage_dir, STAGE_FILE), record)
    return record


def _num_params(model_dir: str) -> int | None:
    path = os.path.join(model_dir, "config.json")
    if not os.path.exists(path):
        return None
    from r1jax.models import config_from_hf

    with open(path) as fh:
        return config_from_hf(json.load(fh)).num_params()


def _machine() -> dict:
    return {"cpus": os.cpu_count(), "load_average_1_5_15": list(os.getloadavg())}


def run(config, workdir: str) -> dict:
    """Runs the unfinished stages of `config.stages`, evaluates every model, writes the results table."""
    c = config
    unknown = [s for s in c.stages if s not in ENTRIES]
    if unknown:
        raise ValueError(f"stages={tuple(c.stages)}: unknown {unknown}; expected names from {tuple(ENTRIES)}")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    t_start, machine_start = time.perf_counter(), _machine()
    ran = []
    for stage in c.stages:
        if is_complete(workdir, stage):
            print(f"[pipeline] {stage}: complete, skipped")
            continue
        print(f"[pipeline] {stage}: {LABELS[stage]}")
        _run_stage(c, stage, workdir)
        ran.append(stage)

    rows = {}
    for stage in c.stages:
        if stage in NOT_EVALUATED:
            continue
        path = os.path.join(workdir, stage, EVAL_FILE)
        metrics = _read_json(path)
        if metrics is None:
            print(f"[pipeline] evaluating {stage}")
            metrics = {
                k: v for k, v in evals.evaluate_model_dir(c.eval, _model(workdir, stage)).items() if k != "samples"
            }
            metrics = {k: float(v) if hasattr(v, "item") else v for k, v in metrics.items()}
            _write_json(path, metrics)
        rows[stage] = metrics

    results = {
        "stages": {},
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
            "label": LABELS[stage],
            "wall_time_s": done.get("wall_time_s"),
            "num_params": _num_params(_model(workdir, stage)),
            **rows.get(stage, {}),
        }
        if stage == "student_rl":
            entry["max_time_s"] = done.get("max_time_s")
            entry["rl_steps"] = _last_step(os.path.join(workdir, stage))
        results["stages"][stage] = entry
    if "rejection_sampling" in c.stages:
        results["rejection_sampling"] = _read_json(os.path.join(workdir, "rejection_sampling", "stats.json"))
    if "reward_model" in c.stages:
        results["reward_model"] = _read_json(os.path.join(workdir, "reward_model", "results.json"))
    results["comparisons"] = comparisons(rows)
    results["run"] = {
        "this_invocation_wall_time_s": time.perf_counter() - t_start,
        "stages_run": ran,
        "machine_at_start": machine_start,
        "machine_at_end": _machine(),
    }
    _write_json(os.path.join(workdir, "results.json"), results)
    text = results_markdown(results)
    with open(os.path.join(workdir, "results.md"), "w") as fh:
        fh.write(text)
    print(text)
    return {"stages_run": ",".join(ran), **{f"{s}/pass@1": m["pass@1"] for s, m in rows.items()}}


def _last_step(stage_dir: str) -> int | None:
    from r1jax import metrics as metrics_lib

    history = metrics_lib.read_history(stage_dir)
    steps = [h["step"] for h in history if "rl/reward_mean" in h]
    return max(steps) if steps else None


def comparisons(rows: dict) -> list[str]:
    """Plain-language lines for the student rows (paper 4.1), stating which side is better."""
    out = []

    def line(a, b, what):
        if a in rows and b in rows:
            pa, pb = rows[a]["pass@1"], rows[b]["pass@1"]
            verdict = "better than" if pa > pb else "equal to" if pa == pb else "NOT better than"
            out.append(f"{what}: {LABELS[a]} pass@1 {pa:.3f} is {verdict} {LABELS[b]} pass@1 {pb:.3f}")

    line("distill", "general_rl", "student vs teacher")
    line("distill", "student_rl", "distillation vs RL on the student (same wall time)")
    line("distill", "student_base", "distillation vs the student's base")
    # The distillation set is sampled from the stage-3 checkpoint (paper 2.3.3 / 2.4), so that is the pass@1 a
    # distilled student approaches; the paper's 4.1 question is which student gets closer to it.
    if all(s in rows for s in ("reasoning_rl", "distill", "student_rl")):
        src = rows["reasoning_rl"]["pass@1"]
        gap_d, gap_r = abs(rows["distill"]["pass@1"] - src), abs(rows["student_rl"]["pass@1"] - src)
        closer = "distillation" if gap_d < gap_r else "RL" if gap_r < gap_d else "neither"
        out.append(
            f"closer to the data's source ({LABELS['reasoning_rl']}, pass@1 {src:.3f}): distilled student "
            f"|Δ| {gap_d:.3f}, RL student |Δ| {gap_r:.3f} → {closer}"
        )
    return out


def results_markdown(results: dict) -> str:
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
    rs = results.get("rejection_sampling")
    if rs:
        kept = ", ".join(f"{k} {v['kept_fraction']:.2f}" for k, v in rs.items() if "kept_fraction" in v)
        data = rs["data"]
        lines += [
            "",
            f"Rejection sampling, kept fraction per filter (in order): {kept}; "
            f"{data['num_reasoning']} reasoning + {data['num_non_reasoning']} non-reasoning rows.",
        ]
    rm = results.get("reward_model")
    if rm:
        init = rm.get("eval_init/pairwise_accuracy")
        lines += [
            "",
            f"Reward model, held-out pairwise accuracy: {rm['eval/pairwise_accuracy']:.3f}"
            + (f" (before training {init:.3f})" if init is not None else "")
            + f" on {rm['data/num_eval_pairs']} pairs.",
        ]
    if results["comparisons"]:
        lines += [""] + [f"- {x}" for x in results["comparisons"]]
    srl = results["stages"].get("student_rl")
    if srl and srl.get("max_time_s") is not None:
        lines += [
            f"- student RL budget {srl['max_time_s']:.0f} s (distill's stage wall time), "
            f"{srl.get('rl_steps')} GRPO steps"
        ]
    run = results["run"]
    lines += [
        "",
        f"This invocation: {run['this_invocation_wall_time_s']:.0f} s, stages run: "
        f"{', '.join(run['stages_run']) or 'none'}; {run['machine_at_start']['cpus']} CPUs, load average "
        f"{run['machine_at_start']['load_average_1_5_15'][0]:.1f} at start, "
        f"{run['machine_at_end']['load_average_1_5_15'][0]:.1f} at end.",
    ]
    return "\n".join(lines) + "\n"
