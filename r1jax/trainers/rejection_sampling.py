"""Rejection sampling (paper 2.3.3, stage 4 data): sample M completions per prompt, keep the correct, readable ones.

    prompts ─► M samples each from the stage-3 policy (r1jax.sampling.sample, chunks of P prompts)
            ─► samples/chunk_*.jsonl (one file per chunk: a re-run resumes after the last finished chunk)
            ─► filters, in order:  correct → format → language → paragraph → code → duplicate
            ─► + non-reasoning data (built-in general prompts, or files)
            ─► WORKDIR/data.jsonl  {id, prompt, response, source}   (the SFT data set; written last, atomically)
               WORKDIR/stats.json  kept fraction per filter

The filters follow the paper: only correct answers are kept (here by the rule-based verifier; the paper also
asks DeepSeek-V3 to judge answers that rules cannot check), and chains of thought with mixed languages, long
paragraphs or code blocks are dropped. Duplicates (the same response to the same prompt, whitespace aside) are
kept once. The paper mixes ~600k reasoning with ~200k non-reasoning samples; `non_reasoning.fraction` sets that
share of the final set (0.25 as in the paper).

The `prompt` field holds the templated prompt, as the SFT trainer (`data.source='files'`) expects.
"""

from __future__ import annotations

import json
import os
import random
import re
import time

import jax
import ml_collections
import numpy as np

from r1jax import sampling, sharding, train_state
from r1jax.data import preferences, provenance
from r1jax.data import tasks as tasks_lib
from r1jax.data.sft import SFTFields, load_sft_records
from r1jax.data.sources import PromptFields, load_prompts
from r1jax.rewards import RewardSpec, format_ok, language_consistency, make_reward_fn, think_text
from r1jax.rollouts import decode_completions, encode_prompts
from r1jax.tokenizer import apply_template

FILTERS = ("correct", "format", "language", "paragraph", "code", "duplicate")
_PARAGRAPH_RE = re.compile(r"\n\s*\n")


def rejection_sampling_config() -> ml_collections.ConfigDict:
    """Every field the rejection sampler reads, with defaults; experiment files change values, never add fields."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = train_state.model_config()  # model.checkpoint: the stage-3 (reasoning RL) policy
    c.tokenizer = train_state.tokenizer_config()
    c.template = "r1_zero"
    c.response_prefix = ""  # text forced at the start of every completion (as in the RL stage)
    c.data = ml_collections.ConfigDict()
    c.data.task = "arithmetic"  # built-in task, also the verifier of files' answers
    c.data.difficulty = 1
    c.data.num_prompts = 1024  # built-in task: prompts to sample from
    c.data.seed = 5  # a draw of its own from the train split (splits are by content: r1jax.data.provenance)
    c.data.files = ()  # prompt files (question / answer fields) instead of the built-in task
    c.data.question_field = "question"
    c.data.answer_field = "answer"
    c.data.id_field = "id"
    c.data.on_error = "raise"
    c.sampling = ml_collections.ConfigDict()
    c.sampling.num_samples = 4  # M, completions per prompt
    c.sampling.prompts_per_batch = 32  # P, prompts per sampler call (one compilation; the last chunk is padded)
    c.sampling.temperature = 0.6  # the paper's sampling setting for R1 generations
    c.sampling.top_p = 0.95
    c.sampling.max_new_tokens = 256
    c.sampling.max_prompt_len = 256
    c.sampling.scheduler = "static"  # 'continuous': decode slots refilled as samples stop (r1jax.sampling)
    c.sampling.num_slots = 0  # continuous decode slots (0 = P·M)
    c.rewards = ml_collections.ConfigDict()
    c.rewards.answer_extract = ("answer_tag",)
    c.rewards.format_mode = "strict"
    c.rewards.timeout_s = 10.0
    c.rewards.num_processes = 2
    c.filters = ml_collections.ConfigDict()
    c.filters.require_format = True  # keep only completions in the output format
    c.filters.language = "en"  # target language of the chain of thought
    c.filters.min_language_consistency = 0.95  # below: a mixed-language chain of thought
    c.filters.max_paragraph_words = 200  # a paragraph (blank-line separated) longer than this is unreadable
    c.filters.reject_code_blocks = True  # drop chains of thought holding ``` code blocks
    c.filters.max_per_prompt = 0  # > 0: keep at most this many distinct responses per prompt
    c.non_reasoning = ml_collections.ConfigDict()
    c.non_reasoning.source = "builtin"  # 'builtin' (r1jax.data.preferences general prompts) | 'files' | 'none'
    c.non_reasoning.fraction = 0.25  # builtin: share of the final set (paper: 200k of 800k)
    c.non_reasoning.min_examples = 0  # builtin: at least this many (a set that keeps no reasoning sample)
    c.non_reasoning.seed = 11
    c.non_reasoning.files = ()  # SFT files (prompt / response fields; prompts already templated)
    c.non_reasoning.prompt_field = "prompt"
    c.non_reasoning.response_field = "response"
    c.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1)})
    return c


def validate(c) -> None:
    if not c.model.checkpoint:
        raise ValueError("model.checkpoint='': rejection sampling needs the stage-3 policy (--config.model.checkpoint)")
    if c.sampling.num_samples < 1:
        raise ValueError(f"sampling.num_samples={c.sampling.num_samples}: must be >= 1")
    if c.sampling.prompts_per_batch < 1:
        raise ValueError(f"sampling.prompts_per_batch={c.sampling.prompts_per_batch}: must be >= 1")
    if c.sampling.scheduler not in sampling.SCHEDULERS:
        raise ValueError(f"sampling.scheduler={c.sampling.scheduler!r}: expected one of {sampling.SCHEDULERS}")
    if c.sampling.num_slots < 0 or (c.sampling.num_slots and c.sampling.scheduler != "continuous"):
        raise ValueError(
            f"sampling.num_slots={c.sampling.num_slots}: must be >= 0, and 0 unless sampling.scheduler='continuous'"
        )
    if not 0 <= c.filters.min_language_consistency <= 1:
        raise ValueError(f"filters.min_language_consistency={c.filters.min_language_consistency}: must be in [0, 1]")
    if c.filters.max_paragraph_words < 1:
        raise ValueError(f"filters.max_paragraph_words={c.filters.max_paragraph_words}: must be >= 1")
    if c.non_reasoning.source not in ("builtin", "files", "none"):
        raise ValueError(f"non_reasoning.source={c.non_reasoning.source!r}: expected 'builtin', 'files' or 'none'")
    if not 0 <= c.non_reasoning.fraction < 1:
        raise ValueError(f"non_reasoning.fraction={c.non_reasoning.fraction}: must be in [0, 1)")
    if c.non_reasoning.source == "files" and not c.non_reasoning.files:
        raise ValueError("non_reasoning.files=(): non_reasoning.source='files' needs at least one file")
    for f in tuple(c.data.files) + tuple(c.non_reasoning.files):
        if not os.path.exists(f):
            raise ValueError(f"data.files / non_reasoning.files: no such file {f!r}")


# ---------------------------------------------------------------------------------------------------------------
# Filters (pure; each takes one completion, True = drop)


def _cot(completion: str, prefix: str = "") -> str:
    cot = think_text(completion, prefix)
    return prefix + completion if cot is None else cot


def is_mixed_language(completion: str, *, language: str = "en", threshold: float = 0.95, prefix: str = "") -> bool:
    """The chain of thought has less than `threshold` of its letter units in the target language's script."""
    return language_consistency(_cot(completion, prefix), language) < threshold


def has_overlong_paragraph(completion: str, *, max_words: int, prefix: str = "") -> bool:
    """Some blank-line-separated paragraph of the chain of thought has more than `max_words` words."""
    return any(len(p.split()) > max_words for p in _PARAGRAPH_RE.split(_cot(completion, prefix)))


def has_code_block(completion: str, *, prefix: str = "") -> bool:
    """The chain of thought holds a fenced code block."""
    return "```" in _cot(completion, prefix)


def _normalise(text: str) -> str:
    return " ".join(text.split())


def filter_samples(samples: list[dict], f, *, prefix: str = "", format_mode: str = "strict"):
    """(kept samples, stats). `samples`: {prompt_id, prompt, response, correct}; `f`: the `filters` config.

    stats[name] = {'in', 'kept', 'kept_fraction'} for each filter of FILTERS in order, plus the totals.
    """
    checks = {
        "correct": lambda s: not s["correct"],
        "format": lambda s: f.require_format and not format_ok(prefix + s["response"], format_mode),
        "language": lambda s: is_mixed_language(
            s["response"], language=f.language, threshold=f.min_language_consistency, prefix=prefix
        ),
        "paragraph": lambda s: has_overlong_paragraph(s["response"], max_words=f.max_paragraph_words, prefix=prefix),
        "code": lambda s: f.reject_code_blocks and has_code_block(s["response"], prefix=prefix),
    }
    stats, current = {}, list(samples)
    for name in FILTERS:
        before = len(current)
        if name == "duplicate":
            seen, kept, per_prompt = set(), [], {}
            for s in current:
                key = (s["prompt_id"], _normalise(s["response"]))
                full = f.max_per_prompt and per_prompt.get(s["prompt_id"], 0) >= f.max_per_prompt
                if key in seen or full:
                    continue
                seen.add(key)
                per_prompt[s["prompt_id"]] = per_prompt.get(s["prompt_id"], 0) + 1
                kept.append(s)
            current = kept
        else:
            current = [s for s in current if not checks[name](s)]
        stats[name] = {"in": before, "kept": len(current), "kept_fraction": len(current) / before if before else 0.0}
    stats["total"] = {
        "in": len(samples),
        "kept": len(current),
        "kept_fraction": len(current) / len(samples) if samples else 0.0,
        "prompts": len({s["prompt_id"] for s in samples}),
        "prompts_with_a_kept_sample": len({s["prompt_id"] for s in current}),
    }
    return current, stats


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def load_prompt_records(c, workdir: str | None = None) -> list[dict]:
    """The prompts to sample from (built-in tasks: train split only); with `workdir`, recorded in its manifest."""
    if c.data.files:
        fields = PromptFields(question=c.data.question_field, answer=c.data.answer_field, id=c.data.id_field)
        records = list(load_prompts(list(c.data.files), fields, on_error=c.data.on_error))
    else:
        task = tasks_lib.get_task(c.data.task)
        generated = task.generate(c.data.num_prompts, seed=c.data.seed, difficulty=c.data.difficulty, split="train")
        records = [e.to_dict() for e in generated]
    if workdir is not None:
        provenance.record(workdir, provenance.questions_of(records), split="train", role="train", source="prompts")
    return records


def _write_jsonl(path: str, rows) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def sample_all(c, records: list[dict], workdir: str) -> list[dict]:
    """M completions per prompt, scored; chunks already on disk (an earlier, interrupted run) are read back."""
    chunk_dir = os.path.join(workdir, "samples")
    os.makedirs(chunk_dir, exist_ok=True)
    P, M = c.sampling.prompts_per_batch, c.sampling.num_samples
    chunks = [records[i : i + P] for i in range(0, len(records), P)]
    paths = [os.path.join(chunk_dir, f"chunk_{i:05d}.jsonl") for i in range(len(chunks))]
    todo = [i for i, p in enumerate(paths) if not os.path.exists(p)]
    if todo:
        mesh = sharding.make_mesh(c.mesh.shape)
        model, tokenizer = train_state.build_model(c.model, c.seed, c.tokenizer.path)
        need = c.sampling.max_prompt_len + c.sampling.max_new_tokens
        if need > model.cfg.max_seq_len:
            raise ValueError(
                f"sampling.max_prompt_len + sampling.max_new_tokens = {need} exceeds the model's context "
                f"max_seq_len={model.cfg.max_seq_len}"
            )
        graphdef, params, _ = train_state.split_model(model)
        params = jax.device_put(params, sharding.replicated(mesh))
        cfg = sampling.SamplingConfig(
            num_samples=M,
            max_new_tokens=c.sampling.max_new_tokens,
            temperature=c.sampling.temperature,
            top_p=c.sampling.top_p,
            eos_id=tokenizer.eos_id,
            pad_id=tokenizer.pad_id,
            scheduler=c.sampling.scheduler,
            num_slots=c.sampling.num_slots,
        )
        accuracy = make_reward_fn(
            [
                RewardSpec(
                    "accuracy",
                    timeout_s=c.rewards.timeout_s,
                    kwargs={"extract": tuple(c.rewards.answer_extract), "prefix": c.response_prefix},
                )
            ],
            num_processes=c.rewards.num_processes,
        )
        base_rng = jax.random.PRNGKey(c.seed)
        try:
            for i in todo:
                chunk = chunks[i]
                padded = chunk + [chunk[0]] * (P - len(chunk))  # one shape for every chunk: one compilation
                ids = encode_prompts(tokenizer, padded, c.template, c.response_prefix, c.sampling.max_prompt_len)
                rollout = sampling.sample(graphdef, params, ids, jax.random.fold_in(base_rng, i), cfg, mesh=mesh)
                n = len(chunk) * M
                completions = decode_completions(tokenizer, rollout)[:n]
                recs = [r for r in chunk for _ in range(M)]
                scored = accuracy([r["question"] for r in recs], completions, recs)
                lengths = np.asarray(rollout.lengths_b)[:n]
                _write_jsonl(
                    paths[i],
                    [
                        {
                            "prompt_id": r["id"],
                            "question": r["question"],
                            "response": comp,
                            "correct": bool(ok == 1.0),
                            "length": int(n_tok),
                        }
                        for r, comp, ok, n_tok in zip(recs, completions, scored.per_reward["accuracy"], lengths)
                    ],
                )
        finally:
            accuracy.close()
    return [s for p in paths for s in _read_jsonl(p)]


def non_reasoning_records(c, num_reasoning: int, workdir: str | None = None) -> list[dict]:
    """The non-reasoning SFT rows (built-in general prompts: train split only); with `workdir`, their questions
    are recorded in its manifest."""
    nr = c.non_reasoning
    rows = []
    if nr.source == "files":
        fields = SFTFields(prompt=nr.prompt_field, response=nr.response_field)
        rows = [
            {"id": r["id"], "prompt": r["prompt"], "response": r["response"]}
            for r in load_sft_records(list(nr.files), fields)
        ]
    elif nr.source == "builtin":
        n = max(int(round(nr.fraction / (1 - nr.fraction) * num_reasoning)), nr.min_examples)
        rows = preferences.non_reasoning_records(n, seed=nr.seed, template=c.template, split="train")
    if workdir is not None:
        questions = provenance.questions_of(rows, field="prompt", template=c.template)
        provenance.record(workdir, questions, split="train", role="train", source="non_reasoning")
    return rows


def run(config, workdir: str) -> dict:
    """Samples, filters and writes WORKDIR/data.jsonl and WORKDIR/stats.json; returns the statistics."""
    validate(config)
    c = config
    os.makedirs(workdir, exist_ok=True)
    t0 = time.perf_counter()
    records = load_prompt_records(c, workdir)  # also writes WORKDIR/data_manifest.jsonl
    samples = sample_all(c, records, workdir)
    for s in samples:
        s["prompt"] = apply_template(s["question"], c.template)
    kept, stats = filter_samples(samples, c.filters, prefix=c.response_prefix, format_mode=c.rewards.format_mode)
    reasoning = [
        {
            "id": f"rs-{i}-{s['prompt_id']}",
            "prompt": s["prompt"],
            "response": c.response_prefix + s["response"],
            "source": "reasoning",
        }
        for i, s in enumerate(kept)
    ]
    general = [r | {"source": "non_reasoning"} for r in non_reasoning_records(c, len(reasoning), workdir)]
    rows = reasoning + general
    random.Random(c.seed).shuffle(rows)
    if not rows:
        raise RuntimeError(
            f"rejection sampling kept no sample of {len(samples)} and there is no non-reasoning data: "
            f"filter statistics {json.dumps(stats)}"
        )
    lengths = np.array([s["length"] for s in samples], np.float64)
    stats["data"] = {
        "num_reasoning": len(reasoning),
        "num_non_reasoning": len(general),
        "num_rows": len(rows),
        "mean_sample_length": float(lengths.mean()) if len(lengths) else 0.0,
        "accuracy_of_samples": float(np.mean([s["correct"] for s in samples])) if samples else 0.0,
        "wall_time_s": time.perf_counter() - t0,
    }
    with open(os.path.join(workdir, "stats.json"), "w") as fh:
        json.dump(stats, fh, indent=1)
    _write_jsonl(os.path.join(workdir, "data.jsonl"), rows)  # last: its presence marks the stage complete
    flat = {f"filter/{k}/kept_fraction": v["kept_fraction"] for k, v in stats.items() if "kept_fraction" in v}
    return flat | {f"data/{k}": v for k, v in stats["data"].items()}
