"""SFT data: (prompt, response) text -> tokenized examples -> packed fixed-length rows, resumable.

One example is  [bos] + encode(prompt) + encode(response) + [eos], shifted
into next-token pairs (inputs = tokens[:-1], targets = tokens[1:]) *before*
packing, so no target ever comes from the next document. `loss_mask` is 1
exactly where the target is a response token or the EOS. Prompt and response
are encoded separately, so the token boundary between them is exact (a
tokenizer that would merge across it sees them apart; the loss is on the
response as the sampler will produce it, after the prompt).

Examples longer than `seq_len` pairs are truncated to their first `seq_len`
(counted in `num_truncated`; the EOS is then lost); one whose truncation
leaves no response token is dropped (`num_dropped`). Tokenization runs
eagerly when the dataset is built, like the validation in sources.py, so the
counts are known before training and iteration is cheap.

Packing is grain's first-fit packer over `num_packing_bins` rows at a time
(greedy: each example goes into the first row where it fits). A batch is a
dict of numpy arrays, B rows of T = seq_len:

    tokens_bt       int32  inputs, pad_id in padding
    targets_bt      int32  next tokens, pad_id in padding
    loss_mask_bt    int32  1 on response targets (incl. EOS), 0 elsewhere
    segment_ids_bt  int32  1, 2, ... per document in the row, 0 in padding
    positions_bt    int32  0-based position within its document

Attention must stay inside a segment: mask[q, k] = (seg[q] == seg[k]) & (k <= q).
The iterator's state (`get_state()`) is a JSON-serializable dict, as for prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from r1jax.data.pipeline import IN_MEMORY_READ, epochs
from r1jax.data.sources import RecordSource, from_records, get_field, get_id, load_files


@dataclasses.dataclass(frozen=True)
class SFTFields:
    """Field names of an SFT file; records become {'id', 'prompt', 'response'}."""

    prompt: str = "prompt"
    response: str = "response"
    id: str | None = "id"

    def convert(self, row: dict, default_id: str) -> dict:
        return {
            "id": get_id(row, self.id, default_id),
            "prompt": get_field(row, self.prompt, (str,), required=True),
            "response": get_field(row, self.response, (str,), required=True),
        }


@dataclasses.dataclass
class SFTExamples:
    """Tokenized examples in memory (a grain random-access source) and the counts of what was cut."""

    examples: list[dict[str, np.ndarray]]
    num_truncated: int = 0
    num_dropped: int = 0
    num_skipped: int = 0  # malformed rows skipped by the record source

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.examples[index]

    @property
    def stats(self) -> dict[str, int]:
        return {
            "num_examples": len(self.examples),
            "num_truncated": self.num_truncated,
            "num_dropped": self.num_dropped,
            "num_skipped": self.num_skipped,
            "num_loss_tokens": int(sum(e["loss_mask"].sum() for e in self.examples)),
        }


def tokenize_example(
    prompt: str, response: str, *, encode: Callable[[str], list[int]], eos_id: int, bos_id: int | None = None
) -> dict[str, np.ndarray]:
    """Next-token pairs of one example (untruncated): inputs, targets, loss_mask, each of length n-1."""
    prefix = ([] if bos_id is None else [bos_id]) + list(encode(prompt))
    tokens = np.asarray(prefix + list(encode(response)) + [eos_id], np.int32)
    # Target j is tokens[j+1]; it is a response token (or the EOS) iff j+1 >= len(prefix).
    loss_mask = (np.arange(1, len(tokens)) >= len(prefix)).astype(np.int32)
    return {"inputs": tokens[:-1], "targets": tokens[1:], "loss_mask": loss_mask}


def tokenize_records(
    records: Sequence[dict],
    *,
    encode: Callable[[str], list[int]],
    eos_id: int,
    bos_id: int | None = None,
    seq_len: int,
) -> SFTExamples:
    """Tokenizes {'prompt', 'response'} records, truncating to `seq_len` pairs."""
    out = SFTExamples(examples=[], num_skipped=records.num_skipped if isinstance(records, RecordSource) else 0)
    for record in records:
        example = tokenize_example(record["prompt"], record["response"], encode=encode, eos_id=eos_id, bos_id=bos_id)
        if len(example["inputs"]) > seq_len:
            out.num_truncated += 1
            example = {k: v[:seq_len] for k, v in example.items()}
            if not example["loss_mask"].any():
                out.num_dropped += 1
                continue
        out.examples.append(example)
    return out


def load_sft_records(
    data: str | Sequence[str] | Sequence[dict], fields: SFTFields = SFTFields(), *, on_error: str = "raise"
) -> RecordSource:
    """{'id','prompt','response'} records from files (paths) or from in-memory dicts."""
    if isinstance(data, str) or (data and all(isinstance(d, str) for d in data)):
        return load_files(data, fields.convert, on_error=on_error)
    return from_records(data, fields.convert, on_error=on_error)


def _to_batch(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "tokens_bt": packed["inputs"],
        "targets_bt": packed["targets"],
        "loss_mask_bt": packed["loss_mask"],
        "segment_ids_bt": packed["inputs_segment_ids"],
        "positions_bt": packed["inputs_positions"],
    }


def make_sft_dataset(
    examples: SFTExamples,
    *,
    seq_len: int,
    batch_size: int,
    pad_id: int,
    seed: int = 0,
    num_epochs: int | None = None,
    shuffle: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_packing_bins: int | None = None,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """Packed batches of B = batch_size rows of T = seq_len (see the module docstring for the keys)."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size={batch_size}, seq_len={seq_len}: both must be >= 1")
    too_long = [len(e["inputs"]) for e in examples.examples if len(e["inputs"]) > seq_len]
    if too_long:
        raise ValueError(
            f"seq_len={seq_len}: {len(too_long)} examples are longer (max {max(too_long)}); tokenize "
            "with the same seq_len"
        )
    ds = epochs(
        examples, seed=seed, num_epochs=num_epochs, shuffle=shuffle, shard_index=shard_index, shard_count=shard_count
    )
    length = {"inputs": seq_len, "targets": seq_len, "loss_mask": seq_len}
    ds = grain.experimental.FirstFitPackIterDataset(
        ds.to_iter_dataset(IN_MEMORY_READ),
        length_struct=length,
        # More bins pack tighter (a round of rows is emitted once an example fits in none of them)
        # but mix examples from further apart in the shuffled order.
        num_packing_bins=num_packing_bins or 4 * batch_size,
        seed=seed,
        shuffle_bins=shuffle,
        padding_struct={"inputs": pad_id, "targets": pad_id, "loss_mask": 0},
    )
    return ds.batch(batch_size, drop_remainder=drop_remainder).map(_to_batch)


def make_sft_iterator(
    data: str | Sequence[str] | Sequence[dict] | RecordSource,
    *,
    encode: Callable[[str], list[int]],
    eos_id: int,
    pad_id: int,
    bos_id: int | None = None,
    seq_len: int,
    batch_size: int,
    fields: SFTFields = SFTFields(),
    on_error: str = "raise",
    **dataset_kwargs: Any,
) -> tuple[grain.DatasetIterator, dict[str, int]]:
    """Reads, validates and tokenizes SFT data; returns (resumable iterator of packed batches, stats).

    `dataset_kwargs` go to `make_sft_dataset` (seed, num_epochs, shuffle, shard_*, num_packing_bins,
    drop_remainder).
    """
    records = data if isinstance(data, RecordSource) else load_sft_records(data, fields, on_error=on_error)
    examples = tokenize_records(records, encode=encode, eos_id=eos_id, bos_id=bos_id, seq_len=seq_len)
    ds = make_sft_dataset(examples, seq_len=seq_len, batch_size=batch_size, pad_id=pad_id, **dataset_kwargs)
    return iter(ds), examples.stats
