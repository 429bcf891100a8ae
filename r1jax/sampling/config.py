"""What the sampler is told and what it returns: `SamplingConfig` (frozen, a static argument of the jitted
rollout) and `Rollout` (P prompts × G completions, a pytree).

Log-probs recorded by the sampler (`Rollout.logps_kind`):
  'raw'        the model's own distribution softmax(logits): temperature 1 without top-k/top-p, and also greedy
               decoding (whose sampling distribution is a point mass, so the raw log-probs are the useful ones).
               Equal to `r1jax.models.logprobs.completion_logps(..., temperature=1)`.
  'tempered'   softmax(logits / T) with T != 1 and no truncation; equal to `completion_logps(..., temperature=T)`.
  'truncated'  the renormalised top-k / top-p distribution actually sampled from; no forward pass reproduces it,
               so a trainer that needs pi_old should recompute with `completion_logps` instead.
"""

from __future__ import annotations

import collections
import dataclasses

import jax
from flax import struct

BUCKET_MODES = ("pow2", "multiple")
LOGPS_KINDS = ("raw", "tempered", "truncated")
SCHEDULERS = ("static", "continuous")

# Incremented when a rollout or the reference decoder is traced (i.e. compiled for a new shape / config); tests read
# it to check that a stream of batches of varying lengths compiles a bounded number of times.
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Frozen and hashable: it is a static argument of the jitted rollout."""

    num_samples: int = 1  # G, samples per prompt
    max_new_tokens: int = 64  # completion buffer length; a row that reaches it unstopped is `truncated`
    temperature: float = 1.0  # T > 0; ignored when greedy
    top_p: float = 1.0  # nucleus: smallest set of tokens with mass >= top_p (1.0 = off)
    top_k: int = 0  # keep the k most likely tokens (0 = off)
    top_p_prefilter: int = 256  # top-p looks for the nucleus among this many most likely tokens (full sort if not)
    greedy: bool = False  # argmax instead of sampling
    eos_id: int | None = None  # stops a row; included in the completion mask
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # token-id sequences that stop a row (included in the mask)
    pad_id: int = 0  # fills prompt padding and completion slots after a row stops
    prompt_bucket: int = 32  # prompts are padded to a bucketed length: the minimum / the granularity
    completion_bucket: int = 0  # >0: trim the completion axis to a bucketed max(lengths) on the host (0 = keep all)
    bucket_mode: str = "pow2"  # 'pow2': bucket * 2^k; 'multiple': a multiple of the bucket
    share_prefill: bool = True  # False prefills each of the G copies separately (G× FLOPs; tests and benchmarks)
    scheduler: str = "static"  # 'static': one batch of P·G rows; 'continuous': num_slots rows refilled as rows stop
    num_slots: int = 0  # continuous: decode slots (0 = P·G, i.e. no refills); must be 0 for 'static'

    def __post_init__(self):
        if self.num_samples < 1:
            raise ValueError(f"sampling.num_samples={self.num_samples}: need at least 1 sample per prompt")
        if self.max_new_tokens < 1:
            raise ValueError(f"sampling.max_new_tokens={self.max_new_tokens}: must be at least 1")
        if not self.greedy and not self.temperature > 0:
            raise ValueError(f"sampling.temperature={self.temperature}: must be > 0 unless greedy=True")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p={self.top_p}: must be in (0, 1]")
        if self.top_p_prefilter < 1:
            raise ValueError(f"sampling.top_p_prefilter={self.top_p_prefilter}: must be >= 1")
        if self.top_k < 0:
            raise ValueError(f"sampling.top_k={self.top_k}: must be >= 0 (0 = off)")
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError(f"sampling.stop_sequences={self.stop_sequences}: empty stop sequence")
        if not all(isinstance(s, tuple) for s in self.stop_sequences):
            raise ValueError(f"sampling.stop_sequences={self.stop_sequences}: must be a tuple of tuples (hashable)")
        if self.pad_id < 0:
            raise ValueError(f"sampling.pad_id={self.pad_id}: must be a non-negative token id")
        if self.prompt_bucket < 1 or self.completion_bucket < 0:
            raise ValueError(
                f"sampling.prompt_bucket={self.prompt_bucket}, completion_bucket={self.completion_bucket}: "
                "prompt_bucket must be >= 1 and completion_bucket >= 0"
            )
        if self.bucket_mode not in BUCKET_MODES:
            raise ValueError(f"sampling.bucket_mode={self.bucket_mode!r}: expected one of {BUCKET_MODES}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"sampling.scheduler={self.scheduler!r}: expected one of {SCHEDULERS}")
        if self.num_slots < 0:
            raise ValueError(f"sampling.num_slots={self.num_slots}: must be >= 0 (0 = one slot per sample)")
        if self.num_slots and self.scheduler == "static":
            raise ValueError(
                f"sampling.num_slots={self.num_slots} with sampling.scheduler='static': slots are a setting of the "
                "'continuous' scheduler (the static one decodes all P·G rows at once)"
            )

    def replace(self, **kw) -> SamplingConfig:
        return dataclasses.replace(self, **kw)

    @property
    def logps_kind(self) -> str:
        """Which distribution the sampler's log-probs are under (see the module docstring)."""
        if self.greedy or (self.top_k == 0 and self.top_p == 1.0 and self.temperature == 1.0):
            return "raw"
        if self.top_k == 0 and self.top_p == 1.0:
            return "tempered"
        return "truncated"


@struct.dataclass
class Rollout:
    """P prompts × G completions. Row b = p * G + g; B = P * G; T = max_new_tokens (or its trimmed bucket)."""

    prompt_tokens_pt: jax.Array  # int32 (P, Tp), left-padded with pad_id
    prompt_mask_pt: jax.Array  # bool (P, Tp), True on real prompt tokens
    completion_tokens_bt: jax.Array  # int32 (B, T), pad_id after the row stopped
    completion_mask_bt: jax.Array  # bool (B, T), True up to and including the EOS / last stop-sequence token
    lengths_b: jax.Array  # int32 (B,), completion_mask_bt.sum(1)
    logps_bt: jax.Array  # f32 (B, T), log-prob of each sampled token (0 where masked); see logps_kind
    group_b: jax.Array  # int32 (B,), prompt index p of each row
    truncated_b: jax.Array  # bool (B,), no EOS / stop sequence within max_new_tokens
    logps_kind: str = struct.field(pytree_node=False, default="raw")  # 'raw' | 'tempered' | 'truncated'

    @property
    def num_samples(self) -> int:
        return self.completion_tokens_bt.shape[0] // self.prompt_tokens_pt.shape[0]
