"""Pallas kernels with plain-XLA oracles, installed as `r1jax.kernels`.

- `grouped_logprob`: log π(target) (and entropy) per token from hidden states and the LM head.
- `kl`: exact per-token KL(π_p ‖ π_q) between two (hidden states, LM head) pairs.

Both take `implementation='auto' | 'xla' | 'chunked' | 'pallas'` (see their docstrings).
"""

from r1jax.kernels.grouped_logprob.api import grouped_logprob
from r1jax.kernels.kl.api import kl

__all__ = ["grouped_logprob", "kl"]
