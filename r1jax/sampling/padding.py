"""Host-side shapes: prompts left-padded to a bucketed length, completions trimmed to a bucketed width, and
completions cut at EOS for text. Bucketing keeps the number of compiled shapes small."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from r1jax.sampling.config import Rollout, SamplingConfig


def bucket_length(n: int, bucket: int, mode: str = "pow2") -> int:
    """Smallest bucketed length >= n: bucket * 2^k ('pow2') or a multiple of bucket ('multiple')."""
    if mode == "pow2":
        size = bucket
        while size < n:
            size *= 2
        return size
    return max(1, -(-n // bucket)) * bucket


def pad_prompts(prompts: Sequence[Sequence[int]], config: SamplingConfig) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token-id lists to a bucketed length -> (tokens_pt int32, mask_pt bool), numpy on the host."""
    if len(prompts) == 0:
        raise ValueError("prompts=[]: need at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompts[{lengths.index(0)}] is empty: every prompt needs at least one token")
    tp = bucket_length(max(lengths), config.prompt_bucket, config.bucket_mode)
    tokens_pt = np.full((len(prompts), tp), config.pad_id, np.int32)
    mask_pt = np.zeros((len(prompts), tp), bool)
    for i, p in enumerate(prompts):
        tokens_pt[i, tp - len(p) :] = p
        mask_pt[i, tp - len(p) :] = True
    return tokens_pt, mask_pt


def trim_completions(rollout: Rollout, config: SamplingConfig) -> Rollout:
    """Cut the completion axis to the bucketed longest completion (one host sync), so the trainer's forward skips
    the all-padding tail while compiling for only a few widths."""
    longest = int(jax.device_get(rollout.lengths_b.max()))
    width = min(bucket_length(longest, config.completion_bucket, config.bucket_mode), config.max_new_tokens)
    cut = lambda x: x[:, :width]
    return rollout.replace(
        completion_tokens_bt=cut(rollout.completion_tokens_bt),
        completion_mask_bt=cut(rollout.completion_mask_bt),
        logps_bt=cut(rollout.logps_bt),
    )


def cut_at_eos(tokens: Sequence[int], eos_id: int | None) -> list[int]:
    """A completion's token ids up to its first EOS (excluded), as Python ints."""
    tokens = [int(x) for x in tokens]
    return tokens[: tokens.index(eos_id)] if eos_id is not None and eos_id in tokens else tokens
