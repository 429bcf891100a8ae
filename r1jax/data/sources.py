"""Record sources: local JSONL / Parquet / ArrayRecord files and in-memory lists, validated up front.

Every source is read and validated once, eagerly, when it is built, and the
validated records are held in memory. This costs one pass over the files
(seconds for the ~10^5 prompts this project trains on) and buys two things:
a malformed row fails the run before the trainer compiles anything, and the
pipeline can shuffle by random access without touching the files again.
Corpora that do not fit in host memory would need a lazy source; none here do.

A malformed row (undecodable JSON, a missing field, a value of the wrong type,
a duplicate id) raises `DataError` naming the file and the 1-based line (JSONL)
or row (Parquet, ArrayRecord). With `on_error='skip'` the row is dropped and
counted in `RecordSource.num_skipped`, with the first messages kept in
`RecordSource.skipped` for the log.

Ids: a record's id is the file's id field when the row has one, else
"<file basename>:<0-based row index>" (for JSONL the row index is the line
index, so blank lines keep later ids stable).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain

ON_ERROR = ("raise", "skip")
MAX_KEPT_MESSAGES = 100  # skipped-row messages kept for the log; the count is exact regardless


class DataError(ValueError):
    """A malformed row; the message starts with '<file>:<line>: '."""


class _RowError(Exception):
    """Raised by converters; the loader adds file and line to the message."""


RowError = _RowError  # the public name, for converters defined elsewhere (r1jax.data.formats)


# ----------------------------------------------------------------------------- field schemas


def get_field(row: dict, name: str, types: tuple[type, ...], *, required: bool) -> Any:
    """Returns row[name] checked against `types`; None when absent and not required."""
    if name not in row or row[name] is None:
        if required:
            raise _RowError(f"field {name!r} missing (row has keys {sorted(row)})")
        return None
    value = row[name]
    # bool is an int subclass; a True/False answer is almost surely a broken column.
    if not isinstance(value, types) or isinstance(value, bool):
        expected = "/".join(t.__name__ for t in types)
        raise _RowError(f"field {name!r} has type {type(value).__name__}, expected {expected}: {value!r:.80}")
    return value


def get_id(row: dict, name: str | None, default_id: str) -> str:
    if name is None or row.get(name) is None:
        return default_id
    return str(get_field(row, name, (str, int), required=True))


@dataclasses.dataclass(frozen=True)
class PromptFields:
    """Field names of a prompt file; records become {'id','question','answer','tests','language', *extras}.

    `answer=None` is for sets without reference answers (code graded by tests);
    such records get answer ''. `tests`, `language` and `extras` are optional
    per row (None when absent); `extras` are copied verbatim, e.g. ('task',)
    for the built-in tasks so rewards can pick their verifier.
    """

    question: str = "question"
    answer: str | None = "answer"
    tests: str | None = None
    language: str | None = None
    id: str | None = "id"
    extras: tuple[str, ...] = ()

    def convert(self, row: dict, default_id: str) -> dict:
        answer = "" if self.answer is None else get_field(row, self.answer, (str, int, float), required=True)
        record = {
            "id": get_id(row, self.id, default_id),
            "question": get_field(row, self.question, (str,), required=True),
            # Numeric answers (common in math sets) become strings; verifiers parse text.
            "answer": str(answer),
            "tests": None if self.tests is None else get_field(row, self.tests, (list, dict, str), required=False),
            "language": None if self.language is None else get_field(row, self.language, (str,), required=False),
        }
        record.update({k: row.get(k) for k in self.extras})
        return record


# ----------------------------------------------------------------------------- file readers


def _read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            if line.strip():
                yield index, _decode_json(line)


def _read_parquet(path: str) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    yield from enumerate(pq.read_table(path).to_pylist())


def _read_arrow(path: str) -> Iterator[tuple[int, Any]]:
    """Arrow IPC files: the stream format `datasets.save_to_disk` writes, or the random-access file format."""
    import pyarrow as pa

    with pa.memory_map(path) as f:
        try:
            table = pa.ipc.open_stream(f).read_all()
        except pa.ArrowInvalid:
            table = pa.ipc.open_file(f).read_all()
    yield from enumerate(table.to_pylist())


def _read_array_record(path: str) -> Iterator[tuple[int, Any]]:
    source = grain.sources.ArrayRecordDataSource([path])
    for index in range(len(source)):
        yield index, _decode_json(source[index])


def _decode_json(data: str | bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return _RowError(f"undecodable JSON ({e}): {data[:80]!r}")


READERS = {
    ".jsonl": _read_jsonl,
    ".json": _read_jsonl,  # JSON lines, as `datasets.Dataset.to_json` writes them
    ".parquet": _read_parquet,
    ".arrow": _read_arrow,
    ".array_record": _read_array_record,
    ".arrayrecord": _read_array_record,
}


def reader_for(path: str) -> Callable[[str], Iterator[tuple[int, Any]]]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in READERS:
        raise ValueError(f"data file {path!r}: unknown extension {ext!r}, expected one of {sorted(READERS)}")
    return READERS[ext]


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass
class RecordSource:
    """Validated records in memory; a grain random-access source (len + getitem)."""

    records: list[dict]
    num_skipped: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.records[index]

    @property
    def stats(self) -> dict[str, int]:
        return {"num_records": len(self.records), "num_skipped": self.num_skipped}


Converter = Callable[[dict, str], dict]


def _build(rows: Iterator[tuple[str, int, str, Any]], convert: Converter, on_error: str) -> RecordSource:
    """rows: (where, line, default_id, raw row or _RowError)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}")
    source = RecordSource(records=[])
    seen: dict[str, str] = {}  # id -> where it was first seen
    for where, line, default_id, row in rows:
        try:
            if isinstance(row, _RowError):
                raise row
            if not isinstance(row, dict):
                raise _RowError(f"expected a JSON object, got {type(row).__name__}: {row!r:.80}")
            record = convert(row, default_id)
            if record["id"] in seen:
                raise _RowError(f"duplicate id {record['id']!r} (first at {seen[record['id']]})")
        except _RowError as e:
            message = f"{where}:{line}: {e}"
            if on_error == "raise":
                raise DataError(message) from None
            source.num_skipped += 1
            if len(source.skipped) < MAX_KEPT_MESSAGES:
                source.skipped.append(message)
            continue
        seen[record["id"]] = f"{where}:{line}"
        source.records.append(record)
    return source


def load_files(paths: str | Sequence[str], convert: Converter, *, on_error: str = "raise") -> RecordSource:
    """Reads and validates JSONL / Parquet / ArrayRecord files (chosen by extension), in the given order."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if not paths:
        raise ValueError("data files: empty list")
    readers = [reader_for(p) for p in paths]  # fail on a bad extension before reading anything

    def rows():
        for path, read in zip(paths, readers):
            base = os.path.basename(path)
            for index, row in read(path):
                yield path, index + 1, f"{base}:{index}", row

    return _build(rows(), convert, on_error)


def from_records(records: Sequence[Any], convert: Converter, *, name: str = "memory", on_error: str = "raise"):
    """An in-memory source (e.g. built-in tasks) from dicts, dataclasses or named tuples."""

    def as_dict(r):
        if dataclasses.is_dataclass(r) and not isinstance(r, type):
            return dataclasses.asdict(r)
        return r._asdict() if hasattr(r, "_asdict") else r

    rows = ((name, i + 1, f"{name}:{i}", as_dict(r)) for i, r in enumerate(records))
    return _build(rows, convert, on_error)


def load_prompts(paths: str | Sequence[str], fields: PromptFields = PromptFields(), *, on_error: str = "raise"):
    """Prompt records {'id','question','answer','tests','language'} from files."""
    return load_files(paths, fields.convert, on_error=on_error)


def prompts_from_records(records: Sequence[Any], fields: PromptFields = PromptFields(), **kwargs) -> RecordSource:
    """Prompt records from an in-memory list of dicts or dataclasses (built-in tasks)."""
    return from_records(records, fields.convert, **kwargs)
