"""Data sets as researchers have them on disk: named row formats and the file layouts they come in.

A user points `data.train_files` / `data.eval_files` at what they downloaded and names its format with
`data.format`; nothing is converted by hand and nothing is fetched:

    format    | fields read (case-insensitive)             | gold answer                      | solution
    --------- | ------------------------------------------ | -------------------------------- | ---------------------
    jsonl     | the configured question / answer / id      | the answer field                 | -
    gsm8k     | question, answer                           | after '#### ' ('1,234' -> 1234)  | before '####', <<>> cut
    math      | problem, solution (answer, level, type)    | `answer`, else the last \\boxed{} | solution
    aime      | problem or question, answer (solution, id) | answer (an integer, '023' -> 23) | solution if present
    countdown | target, nums (TinyZero) or numbers         | scored by the countdown verifier | -

Layouts, told apart by what is on disk (`resolve_files`):
- single files: `.jsonl`, `.json` (JSON lines, as `Dataset.to_json` writes), `.parquet`, `.arrow`, ArrayRecord;
- a `datasets` `save_to_disk` directory (`state.json` + Arrow stream shards), or a `DatasetDict` directory
  (`dataset_dict.json` + one such directory per split; `split` picks one);
- a Hub export: a directory of Parquet / JSONL shards named `<split>-00000-of-0000N.<ext>` (possibly under
  `data/` or a config folder such as `main/`); `split` keeps the shards of that split.

Records come out as the prompt pipeline carries them — {'id', 'question', 'answer', 'tests', 'language',
'solution', 'task', 'meta'} — with a malformed row named by file and line (`sources.DataError`), as for every
other source. `task` is '' for free-form math (scored by math-verify equivalence) and 'countdown' for
countdown rows (scored by the expression verifier against the row's numbers and target).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Sequence

from r1jax.data import sources
from r1jax.data.tasks.countdown import question_text

_CALC_RE = re.compile(r"<<[^<>]*>>")
_INT_RE = re.compile(r"^[+-]?\d+$")
SHARD_EXTENSIONS = (".parquet", ".jsonl", ".json", ".arrow")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if absent or unclosed."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


# ----------------------------------------------------------------------------- row formats


def _field(row: dict, *names: str, types=(str,), required: bool = True):
    """The first of `names` present in the row, matched case-insensitively (AIME dumps use 'Problem', 'Answer')."""
    lower = {k.lower(): k for k in row}
    for name in names:
        if name.lower() in lower:
            return sources.get_field(row, lower[name.lower()], types, required=required)
    if required:
        raise sources.RowError(f"none of the fields {list(names)} present (row has keys {sorted(row)})")
    return None


def _record(row: dict, default_id: str, question: str, answer: str, solution: str = "", **extra) -> dict:
    return {
        "id": sources.get_id(row, next((k for k in row if k.lower() in ("id", "unique_id")), None), default_id),
        "question": question,
        "answer": answer,
        "tests": None,
        "language": None,
        "solution": solution,
        "task": extra.pop("task", ""),
        "meta": extra,
    }


def gsm8k_row(row: dict, default_id: str) -> dict:
    """GSM8K: the answer field is the worked solution, then '#### <final answer>'."""
    text = _field(row, "answer")
    if "####" not in text:
        raise sources.RowError(f"field 'answer' has no '#### <final answer>' line: {text[-80:]!r}")
    work, gold = text.rsplit("####", 1)
    gold = gold.strip().replace(",", "")
    if not gold:
        raise sources.RowError("field 'answer' has an empty final answer after '####'")
    solution = _CALC_RE.sub("", work).strip()
    return _record(row, default_id, _field(row, "question"), gold, solution)


def math_row(row: dict, default_id: str) -> dict:
    """MATH / MATH-500: 'problem' and 'solution' with a \\boxed{} answer ('answer' when the set provides it)."""
    solution = _field(row, "solution", required=False) or ""
    gold = _field(row, "answer", types=(str, int, float), required=False)
    gold = last_boxed(solution) if gold is None or str(gold).strip() == "" else str(gold).strip()
    if not gold:
        raise sources.RowError("no 'answer' field and no \\boxed{} answer in 'solution'")
    meta = {k: row[k] for k in ("level", "type", "subject") if row.get(k) is not None}
    return _record(row, default_id, _field(row, "problem", "question"), gold, solution, **meta)


def aime_row(row: dict, default_id: str) -> dict:
    """AIME (and other integer-answer competition JSONL): problem/question, an integer answer 0-999."""
    gold = str(_field(row, "answer", types=(str, int))).strip()
    boxed = last_boxed(gold)
    gold = boxed if boxed is not None else gold
    if not _INT_RE.match(gold):
        raise sources.RowError(f"field 'answer' is not an integer: {gold!r:.40}")
    solution = _field(row, "solution", required=False) or ""
    return _record(row, default_id, _field(row, "problem", "question"), str(int(gold)), solution)


def countdown_row(row: dict, default_id: str) -> dict:
    """Countdown as TinyZero ships it: {'target': int, 'nums': [int, ...]}, scored by the countdown verifier."""
    target = _field(row, "target", types=(int,))
    numbers = _field(row, "nums", "numbers", types=(list,))
    if not numbers or not all(isinstance(x, int) and not isinstance(x, bool) for x in numbers):
        raise sources.RowError(f"field 'nums' must be a non-empty list of integers, got {numbers!r:.80}")
    # TinyZero's rule: every number used exactly once (carried in the record, so the verifier applies it).
    return _record(
        row, default_id, question_text(numbers, target), str(target), task="countdown", numbers=numbers,
        target=target, require_all=True,
    )


def chat_turns(row: dict) -> tuple[str, str]:
    """(first user message, the assistant message after it) of a chat row: `messages` with role / content (as
    OpenR1-Math and most SFT sets) or ShareGPT `conversations` with from / value (as Bespoke-Stratos)."""
    turns = _field(row, "messages", "conversations", types=(list,))
    pairs = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise sources.RowError(f"a chat turn is not an object: {turn!r:.80}")
        role = turn.get("role", turn.get("from"))
        pairs.append(({"human": "user", "gpt": "assistant"}.get(role, role), turn.get("content", turn.get("value"))))
    roles = [r for r, _ in pairs]
    if "user" not in roles or "assistant" not in roles[roles.index("user"):]:
        raise sources.RowError(f"a chat row needs a user turn followed by an assistant turn, got roles {roles}")
    i = roles.index("user")
    j = roles.index("assistant", i)
    if not isinstance(pairs[i][1], str) or not isinstance(pairs[j][1], str):
        raise sources.RowError("chat turns must have string content")
    return pairs[i][1], pairs[j][1]


def load_traces(paths: str | Sequence[str], template_fn: Callable[[str], str], *, on_error: str = "raise"):
    """SFT records {'id', 'prompt', 'response'} from chat-format reasoning traces (distillation data as users have
    it); the prompt is the user's question put through `template_fn` (the run's prompt template), the response the
    assistant's reasoning and answer as written."""
    paths = [paths] if isinstance(paths, str) else list(paths)

    def convert(row: dict, default_id: str) -> dict:
        question, response = chat_turns(row)
        return {"id": sources.get_id(row, "id", default_id), "prompt": template_fn(question), "response": response}

    return sources.load_files([f for p in paths for f in resolve_files(p)], convert, on_error=on_error)


FORMATS: dict[str, Callable[[dict, str], dict] | None] = {
    "jsonl": None,  # the configured field names (sources.PromptFields)
    "gsm8k": gsm8k_row,
    "math": math_row,
    "aime": aime_row,
    "countdown": countdown_row,
}


def check_format(name: str) -> None:
    if name not in FORMATS:
        raise ValueError(f"data.format={name!r}: expected one of {sorted(FORMATS)}")


# ----------------------------------------------------------------------------- layouts on disk


def _save_to_disk_files(directory: str) -> list[str]:
    with open(os.path.join(directory, "state.json"), encoding="utf-8") as f:
        state = json.load(f)
    files = [os.path.join(directory, d["filename"]) for d in state.get("_data_files", [])]
    if not files:
        raise ValueError(f"{directory}: state.json lists no data files")
    return files


def _shard_split(path: str) -> str:
    """'data/train-00000-of-00002.parquet' -> 'train'; 'test.jsonl' -> 'test'."""
    return re.split(r"[-.]", os.path.basename(path), maxsplit=1)[0]


def resolve_files(path: str, split: str | None = None) -> list[str]:
    """The data files behind `path` (a file or one of the directory layouts in the module docstring), in order."""
    if not os.path.isdir(path):
        if not os.path.exists(path):
            raise ValueError(f"data file {path!r}: no such file or directory")
        return [path]
    if os.path.exists(os.path.join(path, "dataset_dict.json")):
        with open(os.path.join(path, "dataset_dict.json"), encoding="utf-8") as f:
            splits = json.load(f)["splits"]
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            raise ValueError(f"{path}: a DatasetDict with splits {splits}; choose one with data.split (got {split!r})")
        return _save_to_disk_files(os.path.join(path, split))
    if os.path.exists(os.path.join(path, "state.json")):
        return _save_to_disk_files(path)
    shards = sorted(
        p for ext in SHARD_EXTENSIONS for p in glob.glob(os.path.join(path, "**", "*" + ext), recursive=True)
    )
    if split is not None:
        shards = [p for p in shards if _shard_split(p) == split]
    if not shards:
        raise ValueError(f"{path}: no {'/'.join(SHARD_EXTENSIONS)} files" + (f" of split {split!r}" if split else ""))
    return shards


def load(
    paths: str | Sequence[str],
    fmt: str = "jsonl",
    *,
    split: str | None = None,
    fields: sources.PromptFields | None = None,
    on_error: str = "raise",
    levels: Sequence[int] = (),
) -> sources.RecordSource:
    """Prompt records from files or directories in a named format (see the module docstring).

    levels: for 'math', keep only rows of these difficulty levels ('Level 3' and 3 both count as 3).
    """
    check_format(fmt)
    paths = [paths] if isinstance(paths, str) else list(paths)
    files = [f for p in paths for f in resolve_files(p, split)]
    convert = FORMATS[fmt] or (fields or sources.PromptFields()).convert
    source = sources.load_files(files, convert, on_error=on_error)
    if levels:
        if fmt != "math":
            raise ValueError(f"levels={tuple(levels)}: only the 'math' format has levels, not {fmt!r}")
        source.records = [r for r in source.records if math_level(r) in set(levels)]
    return source


def math_level(record: dict) -> int | None:
    """The MATH difficulty level of a record ('Level 3' or 3 -> 3; None when the row has none)."""
    found = re.search(r"\d+", str(record.get("meta", {}).get("level", "")))
    return int(found.group()) if found else None


# ----------------------------------------------------------------------------- sample files in the real layouts
# Small files in each set's real format and layout, for the recipes' tests and the guide. The rows are made up here
# (arithmetic word problems and fractions), not copies of the public sets; their shape is the sets' shape.

_NAMES = ("Ava", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana")


def _gsm8k_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        name, a, b, price = _NAMES[i % len(_NAMES)], 12 + 7 * i, 30 + 11 * i, 3 + i % 5
        total = (a + b) * price
        rows.append({
            "question": f"{name} picks {a} apples in the morning and {b} in the afternoon, and sells each apple for "
            f"${price}. How many dollars does {name} make?",
            "answer": f"{name} picks {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n"
            f"{name} makes {a + b} * {price} = <<{a + b}*{price}={total}>>{total} dollars.\n#### {total:,}",
        })
    return rows


def _math_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        p, q = 1 + i % 3, 2 + i % 3 + (i % 3 == 0)
        rows.append({
            "problem": f"Simplify $\\frac{{{2 * p * (i + 1)}}}{{{2 * q * (i + 1)}}}$.",
            "solution": f"Dividing numerator and denominator by ${2 * (i + 1)}$ gives "
            f"$\\boxed{{\\frac{{{p}}}{{{q}}}}}$.",
            "answer": f"\\frac{{{p}}}{{{q}}}",
            "subject": "Prealgebra",
            "level": 1 + i % 5,
            "unique_id": f"test/prealgebra/{100 + i}.json",
        })
    return rows


def _aime_rows(n: int) -> list[dict]:
    return [
        {"ID": f"2024-I-{i + 1}", "Problem": f"Find the remainder when ${7 + i}^{{{3 + i}}}$ is divided by $1000$.",
         "Solution": f"Direct computation gives $\\boxed{{{pow(7 + i, 3 + i, 1000):03d}}}$.",
         "Answer": f"{pow(7 + i, 3 + i, 1000):03d}"}
        for i in range(n)
    ]


def _countdown_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        nums = [2 + i % 7, 3 + i % 5, 10 + i % 9]
        rows.append({"target": nums[0] * nums[1] + nums[2], "nums": nums})
    return rows


def _trace_rows(n: int) -> list[dict]:
    """Chat rows as OpenR1-Math ships them (`messages`), half as ShareGPT (`conversations`), as trace sets mix."""
    rows = []
    for i, r in enumerate(_gsm8k_rows(n)):
        work, gold = r["answer"].rsplit("####", 1)
        answer = f"<think>\n{_CALC_RE.sub('', work).strip()}\nWait, let me check the sum again: it holds.\n</think>\n" \
            f"The answer is $\\boxed{{{gold.strip().replace(',', '')}}}$."
        if i % 2:
            turns = [{"from": "human", "value": r["question"]}, {"from": "gpt", "value": answer}]
            rows.append({"conversations": turns})
        else:
            rows.append({"messages": [{"role": "user", "content": r["question"]},
                                      {"role": "assistant", "content": answer}]})
    return rows


def _write_arrow_dir(directory: str, rows: list[dict]) -> None:
    """A `datasets` `save_to_disk` directory: one Arrow stream shard and the state.json that lists it."""
    import pyarrow as pa

    os.makedirs(directory, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(os.path.join(directory, "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    with open(os.path.join(directory, "state.json"), "w", encoding="utf-8") as f:
        json.dump({"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_split": None}, f)


def _write_jsonl(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_samples(directory: str, n: int = 16) -> dict[str, str]:
    """Writes small sample sets in their real layouts under `directory`; returns {name: path} for `load`.

    gsm8k:     a Hub export, `gsm8k/main/{train,test}-00000-of-00001.parquet` (load with split='train'/'test')
    math:      a `DatasetDict.save_to_disk` directory with train and test splits (`math/`)
    math500:   MATH-500's `test.jsonl`
    aime:      an AIME 2024 JSONL (`aime_2024.jsonl`; ID / Problem / Solution / Answer)
    countdown: TinyZero's Countdown as Parquet (`countdown/train-00000-of-00001.parquet`)
    traces:    chat-format reasoning traces, JSONL (`traces/train.jsonl`; load with `load_traces`)
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {}
    rows = _gsm8k_rows(2 * n)
    for split, part in (("train", rows[:n]), ("test", rows[n:])):
        shard = os.path.join(directory, "gsm8k", "main", f"{split}-00000-of-00001.parquet")
        os.makedirs(os.path.dirname(shard), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part), shard)
    out["gsm8k"] = os.path.join(directory, "gsm8k")
    rows = _math_rows(2 * n)
    for split, part in (("train", rows[:n]), ("test", rows[n:])):
        # MATH's own train/test rows have no 'answer' field: the gold answer is the solution's \\boxed{}.
        _write_arrow_dir(os.path.join(directory, "math", split), [{k: r[k] for k in r if k != "answer"} for r in part])
    with open(os.path.join(directory, "math", "dataset_dict.json"), "w", encoding="utf-8") as f:
        json.dump({"splits": ["train", "test"]}, f)
    out["math"] = os.path.join(directory, "math")
    _write_jsonl(os.path.join(directory, "math500", "test.jsonl"), rows[n:])
    out["math500"] = os.path.join(directory, "math500", "test.jsonl")
    _write_jsonl(os.path.join(directory, "aime_2024.jsonl"), _aime_rows(n))
    out["aime"] = os.path.join(directory, "aime_2024.jsonl")
    os.makedirs(os.path.join(directory, "countdown"), exist_ok=True)
    shard = os.path.join(directory, "countdown", "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(_countdown_rows(n)), shard)
    out["countdown"] = os.path.join(directory, "countdown")
    _write_jsonl(os.path.join(directory, "traces", "train.jsonl"), _trace_rows(n))
    out["traces"] = os.path.join(directory, "traces")
    return out
