"""Group rollouts with a KV cache: P prompts, G samples each, one jitted decode loop per shape bucket.

The sampler of GRPO (DESIGN.md, "Data flow of one RL step"), shaped like `r1jax.kernels`:

    api.py         `sample` (prompts -> Rollout, on one process or many), `generate`, `kv_cache_bytes`
    config.py      `SamplingConfig` (how to sample) and `Rollout` (what comes back, with its `logps_kind`)
    select.py      token selection: temperature, top-k, top-p or greedy, one categorical draw per row
    decode.py      what the two engines share: `DecodeState`, the one stop rule, the static prefill
    static.py      engine 'static': all P·G rows decode as one batch until the longest stops
    continuous.py  engine 'continuous': `num_slots` rows, refilled with pending samples as samples end
    padding.py     host-side prompt padding, completion trimming, buckets
    reference.py   the oracle: greedy decoding without a KV cache

A sample's tokens depend only on (rng, its index, its logits): both engines, any mesh, shared or separate prefill
give the same tokens. The policy's log-prob forward that the trainers use lives beside the model
(`r1jax.models.logprobs`); at temperature T without truncation it reproduces the sampler's log-probs.
"""

from r1jax.sampling import decode
from r1jax.sampling.api import generate, kv_cache_bytes, num_compilations, rollout_program, sample
from r1jax.sampling.config import BUCKET_MODES, LOGPS_KINDS, SCHEDULERS, TRACE_COUNTS, Rollout, SamplingConfig
from r1jax.sampling.padding import bucket_length, pad_prompts, trim_completions
from r1jax.sampling.reference import no_cache_step, reference_generate
from r1jax.sampling.select import process_logits, row_keys, select_tokens
from r1jax.sampling.static import decode_logits

__all__ = [
    "BUCKET_MODES", "LOGPS_KINDS", "SCHEDULERS", "TRACE_COUNTS", "Rollout", "SamplingConfig", "bucket_length",
    "decode", "decode_logits", "generate", "kv_cache_bytes", "no_cache_step", "num_compilations", "pad_prompts",
    "process_logits", "reference_generate", "rollout_program", "row_keys", "sample", "select_tokens",
    "trim_completions",
]
