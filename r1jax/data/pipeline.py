"""The prompt pipeline for RL: per-host shard, per-epoch shuffle, repeat, batches of P prompts, resumable.

Built from grain's MapDataset, so every step is a pure function of the
element index: the iterator's whole state is the next batch index,
`it.get_state() == {'next_index': k}`, a JSON-serializable dict the trainer
stores next to the orbax checkpoint and hands back with `it.set_state(state)`
to continue exactly where it stopped. The state is only meaningful for a
pipeline built with the same source, seed, batch size and shard; the trainer
rebuilds it from the same config.

Order of operations (each host runs this on its own shard):

    records ─► shard [i::n] ─► shuffle(seed, reshuffled each epoch) ─► repeat(E) ─► batch(P) ─► iterator
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import jax

from r1jax.data.sources import PromptFields, RecordSource, load_prompts, prompts_from_records

# Records sit in host memory already; reader threads would only contend for the GIL.
IN_MEMORY_READ = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def host_shard(ds: grain.MapDataset, shard_index: int | None = None, shard_count: int | None = None):
    """This host's slice [index::count] of `ds`, all shards of equal length.

    Up to count-1 trailing records are dropped so that every host yields the
    same number of batches per epoch: a multi-host step is collective, and a
    host that ran out first would hang the others.
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index}, shard_count={shard_count}: need 0 <= index < count")
    usable = len(ds) - len(ds) % shard_count
    if usable == 0:
        raise ValueError(f"{len(ds)} records cannot fill shard_count={shard_count} shards")
    return ds[shard_index:usable:shard_count]


def epochs(
    source: Sequence[Any],
    *,
    seed: int,
    num_epochs: int | None = None,
    shuffle: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.MapDataset:
    """This host's records for `num_epochs` epochs (None: forever), each epoch in its own seeded order."""
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs}: expected >= 1 or None (repeat forever)")
    ds = host_shard(grain.MapDataset.source(source), shard_index, shard_count)
    if shuffle:
        # MapDataset.repeat folds the epoch number into the seed: a new order each epoch.
        ds = ds.shuffle(seed=seed)
    return ds.repeat(num_epochs)


def make_prompt_dataset(
    source: Sequence[dict],
    *,
    batch_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    shuffle: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """Batches of `batch_size` (P) prompt records, each batch a list of dicts."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected >= 1")
    ds = epochs(
        source, seed=seed, num_epochs=num_epochs, shuffle=shuffle, shard_index=shard_index, shard_count=shard_count
    )
    # Batches may straddle an epoch boundary; only the very last one can be short.
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
    return ds.to_iter_dataset(IN_MEMORY_READ)


def make_prompt_iterator(
    data: str | Sequence[str] | Sequence[dict] | RecordSource,
    *,
    batch_size: int,
    fields: PromptFields | None = None,
    on_error: str = "raise",
    seed: int = 0,
    num_epochs: int | None = None,
    shuffle: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
) -> tuple[grain.DatasetIterator, dict[str, int]]:
    """Reads and validates prompts; returns (resumable iterator over batches of records, source stats).

    `data` is a file path, a list of paths (JSONL / Parquet / ArrayRecord), a
    list of in-memory records (built-in tasks), or a RecordSource already
    loaded. Files are read and validated here, before anything compiles.
    """
    if isinstance(data, RecordSource):
        source = data
    elif isinstance(data, str) or (data and all(isinstance(d, str) for d in data)):
        source = load_prompts(data, fields or PromptFields(), on_error=on_error)
    else:
        source = prompts_from_records(data, fields or PromptFields(), on_error=on_error)
    ds = make_prompt_dataset(
        source,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        shuffle=shuffle,
        shard_index=shard_index,
        shard_count=shard_count,
        drop_remainder=drop_remainder,
    )
    return iter(ds), source.stats
