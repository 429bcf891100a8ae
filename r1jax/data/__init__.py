"""Data: prompt sources (JSONL / Parquet / ArrayRecord / in-memory), the grain prompt pipeline, SFT packing.

Built-in tasks live in `r1jax.data.tasks`.
"""

from r1jax.data.pipeline import epochs, host_shard, make_prompt_dataset, make_prompt_iterator
from r1jax.data.sft import (
    SFTExamples,
    SFTFields,
    load_sft_records,
    make_sft_dataset,
    make_sft_iterator,
    tokenize_example,
    tokenize_records,
)
from r1jax.data.sources import (
    DataError,
    PromptFields,
    RecordSource,
    from_records,
    load_files,
    load_prompts,
    prompts_from_records,
)

__all__ = [
    "DataError",
    "PromptFields",
    "RecordSource",
    "SFTExamples",
    "SFTFields",
    "epochs",
    "from_records",
    "host_shard",
    "load_files",
    "load_prompts",
    "load_sft_records",
    "make_prompt_dataset",
    "make_prompt_iterator",
    "make_sft_dataset",
    "make_sft_iterator",
    "prompts_from_records",
    "tokenize_example",
    "tokenize_records",
]
