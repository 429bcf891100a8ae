"""Content splits and provenance: which problems a stage may see, and a record of the ones it saw.

Splits. Every built-in problem belongs to exactly one of `train`, `validation` and `test`, decided by a stable
hash (sha256) of its canonical text, never by the seed that generated it:

    normalise_question("What is  12 + 34 ?")  ->  "what is 12+34"
    split_of("what is 12+34")                 ->  "train" | "validation" | "test"   (80 / 10 / 10)

so two stages that generate with different seeds still agree on the split of every problem, and a problem drawn
for evaluation can never be in a training set, however many are drawn. Tasks may canonicalise further before
hashing (arithmetic puts the operands of + and * in order, so 12+34 and 34+12 share a split); see
`r1jax.data.tasks.base.split_key`. Training stages draw from `train`; presets are chosen on `validation`; the
numbers that are reported come from `test`.

Normalisation (`normalise_question`, the one definition used everywhere): Unicode NFKC, the math signs × ÷ −
as * / -, lower case, runs of whitespace collapsed to one space, no space around the operators and brackets
+ - * / = ^ < > ( ) [ ] { } and before , ; : ? !, and no trailing . ? ! or space.

Provenance. Each stage writes `WORKDIR/<stage>/data_manifest.jsonl`, one line per distinct question it trained
or evaluated on:

    {"question": <normalised text>, "sha256": <hex of it>, "split": "train", "role": "train", "count": 3,
     "sources": {"rl_prompts": 3}}

written from the places where stages load their data (`record`). `check_disjoint(workdir)` reads every manifest
under a workdir and raises `ContaminationError`, naming the questions and the stages, when a question some
stage evaluated on is one that some stage trained on.

Reproducibility. The same command and seed give the same bytes on hosts that agree on `environment()`: the versions
of the numerical libraries, the CPU model and its widest vector instruction set (XLA:CPU compiles for the host: the
ISA, the CPU model LLVM tunes for and FMA contraction change which float32 roundings happen, so another CPU drifts
from the same seed after a few hundred steps; README says what reproduces across machines), and the number of
schedulable cores, which XLA on CPU uses to partition its loops (a different count changes float rounding;
measured: stage 0 on 1 core and on 2 cores ends with different parameters). The count is read when JAX starts, so a
process pinned to N cores (`taskset -c 0,1 r1jax demo`) computes what an N-core machine computes (checked for N =
1: `taskset -c 0` and `os.sched_setaffinity` before JAX starts give the same parameters). Results files record the
environment, so two tables can be compared knowingly.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import unicodedata
from collections.abc import Iterable, Sequence

from r1jax.tokenizer import strip_template

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
ROLES = ("train", "eval")
MANIFEST = "data_manifest.jsonl"

_SIGNS = str.maketrans({"×": "*", "÷": "/", "−": "-"})
_AROUND = re.compile(r"\s*([-+*/=^<>()\[\]{}])\s*")
_BEFORE = re.compile(r"\s+([,;:?!])")
_SPACE = re.compile(r"\s+")


def normalise_question(text: str) -> str:
    """The canonical text of a question (see the module docstring): what splits hash and manifests store."""
    t = unicodedata.normalize("NFKC", str(text)).translate(_SIGNS).lower()
    t = _SPACE.sub(" ", t).strip()
    t = _AROUND.sub(r"\1", t)
    t = _BEFORE.sub(r"\1", t)
    return t.rstrip(".?! ")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def question_sha256(question: str) -> str:
    """sha256 (hex) of the normalised question."""
    return sha256_hex(normalise_question(question))


def check_split(split: str, field: str = "split") -> str:
    if split not in SPLITS:
        raise ValueError(f"{field}={split!r}: expected one of {SPLITS}")
    return split


def hash_fraction(key: str) -> float:
    """The first 8 bytes of sha256(key) as a fraction of 2^64, in [0, 1): stable across machines, Python versions
    and processes (unlike `hash`)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_of(key: str) -> str:
    """The split of a problem, from its canonical key (normalised question text, or a task's finer key):
    `hash_fraction(key)` falls in train [0, 0.8), validation [0.8, 0.9) or test [0.9, 1)."""
    u = hash_fraction(key)
    edge = 0.0
    for name in SPLITS:
        edge += SPLIT_FRACTIONS[name]
        if u < edge:
            return name
    return SPLITS[-1]


def question_split(question: str) -> str:
    """The split of a question keyed by its normalised text alone (general prompts, user files)."""
    return split_of(normalise_question(question))


def questions_of(records: Iterable[dict], *, field: str = "question", template: str | None = None) -> list[str]:
    """The question of each record: `field`, with the prompt template taken off when `template` is given (SFT
    records hold templated prompts)."""
    if template is None:
        return [r[field] for r in records]
    return [strip_template(r[field], template) for r in records]


def dedupe_against(records: Sequence[dict], reference: Iterable[str], *, field: str = "question", what: str = ""):
    """(records whose normalised `field` is not among the normalised `reference` texts, number removed).

    For evaluation files checked against the training data: the count is logged, so a held-out set that
    shrank is visible.
    """
    seen = {normalise_question(q) for q in reference}
    kept = [r for r in records if normalise_question(r[field]) not in seen]
    removed = len(records) - len(kept)
    if removed:
        log.warning("%s: removed %d of %d records whose %s is also in the training data", what or "evaluation data",
                    removed, len(records), field)
    return kept, removed


# ----------------------------------------------------------------------------- manifests


def manifest_path(stage_dir: str) -> str:
    return os.path.join(stage_dir, MANIFEST)


def read_manifest(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def record(stage_dir: str, questions: Iterable[str], *, split: str, role: str, source: str = "data") -> str:
    """Adds one data set (its questions, one entry per occurrence) to `stage_dir`'s manifest; returns its path.

    A line per (normalised question, split, role) holds the total `count` and its breakdown by data set,
    `sources` ({'rl_prompts': 3, 'general': 1}). Recording a `source` again (a resumed run loads its data
    again) replaces that source's counts instead of adding to them. Written atomically.
    """
    check_split(split)
    if role not in ROLES:
        raise ValueError(f"role={role!r}: expected one of {ROLES}")
    os.makedirs(stage_dir, exist_ok=True)
    path = manifest_path(stage_dir)
    entries: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in read_manifest(path) if os.path.exists(path) else []:
        sources = {k: v for k, v in r["sources"].items() if (r["split"], r["role"], k) != (split, role, source)}
        if sources:
            entries[(r["question"], r["split"], r["role"])] = sources
    for q, n in collections.Counter(normalise_question(q) for q in questions).items():
        entries.setdefault((q, split, role), {})[source] = n
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for (q, sp, ro), sources in sorted(entries.items()):
            row = {"question": q, "sha256": sha256_hex(q), "split": sp, "role": ro, "count": sum(sources.values()),
                   "sources": dict(sorted(sources.items()))}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def find_manifests(workdir: str) -> list[str]:
    """Every manifest under `workdir` (the workdir's own and its stages'), in sorted order."""
    found = []
    for root, dirs, files in os.walk(workdir):
        dirs.sort()
        if MANIFEST in files:
            found.append(os.path.join(root, MANIFEST))
    return sorted(found)


class ContaminationError(RuntimeError):
    """A question that some stage evaluated on is one that some stage trained on."""

    def __init__(self, message: str, overlap: dict[str, dict[str, list[str]]]):
        super().__init__(message)
        self.overlap = overlap  # normalised question -> {'train': [stages], 'eval': [stages]}


def check_disjoint(workdir: str, *, max_listed: int = 10) -> dict:
    """Raises ContaminationError if any evaluated question of any manifest under `workdir` was trained on.

    Questions are compared by sha256 of their normalised text. Returns a summary {'manifests', 'train_questions',
    'eval_questions'} when the sets are disjoint; raises ValueError when there is no manifest to check.
    """
    paths = find_manifests(workdir)
    if not paths:
        raise ValueError(f"check_disjoint: no {MANIFEST} under {workdir}")
    where = {"train": collections.defaultdict(set), "eval": collections.defaultdict(set)}
    text = {}
    for path in paths:
        stage = os.path.relpath(os.path.dirname(path), workdir)
        for r in read_manifest(path):
            where[r["role"]][r["sha256"]].add(stage)
            text[r["sha256"]] = r["question"]
    shared = sorted(set(where["train"]) & set(where["eval"]), key=lambda h: text[h])
    if shared:
        overlap = {
            text[h]: {"train": sorted(where["train"][h]), "eval": sorted(where["eval"][h])} for h in shared
        }
        listed = "; ".join(
            f"{q!r} (trained in {', '.join(v['train'])}; evaluated in {', '.join(v['eval'])})"
            for q, v in list(overlap.items())[:max_listed]
        )
        more = f" and {len(shared) - max_listed} more" if len(shared) > max_listed else ""
        raise ContaminationError(
            f"{len(shared)} evaluation questions under {workdir} were also trained on: {listed}{more}", overlap
        )
    return {"manifests": len(paths), "train_questions": len(where["train"]), "eval_questions": len(where["eval"])}


# ----------------------------------------------------------------------------- environment

# /proc/cpuinfo flag -> XLA's name for the ISA (`--xla_cpu_max_isa`), widest first
_ISA_LADDER = (("avx512f", "AVX512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4_2"), ("asimd", "NEON"))
_VERSIONED = ("jax", "jaxlib", "flax", "optax", "grain", "sentencepiece", "numpy", "math-verify")


def environment() -> dict:
    """What the numbers of a run depend on besides the command and the seed (see the module docstring)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cpu, flags = platform.processor(), set()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return {
        "versions": versions,
        "cpu": cpu,
        "isa": next((name for flag, name in _ISA_LADDER if flag in flags), None),  # the widest XLA:CPU may use
        "machine": platform.machine(),
        "schedulable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
