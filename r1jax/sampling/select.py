"""Token selection, pure and testable on given logits: temperature, top-k, top-p or greedy, then one categorical
draw per row.

Randomness: row b uses key fold_in(fold_in(rng, b), t) at step t, so a row's sample depends only on (rng, b, its
logits), not on the batch size, the mesh, the scheduler, or whether its prefill was shared. A token is drawn by
inverse CDF over blocks of ids and then within a block (two uniforms per row and step), not by Gumbel-max, whose V
random numbers per row would dominate a decode step at V = 151,936.

Top-p at vocabulary scale: the nucleus is looked for among the `top_p_prefilter` most likely tokens (`lax.top_k`,
no sort of the vocabulary) and the vocabulary is sorted only for rows whose nucleus does not fit there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from r1jax.sampling.config import SamplingConfig


def process_logits(logits_bv: jax.Array, config: SamplingConfig) -> jax.Array:
    """Logits of the distribution sampled from: divided by T, then top-k, then top-p (HF's warper order).

    Removed tokens get -inf. Ties at the top-k / top-p boundary are all kept.
    """
    x = logits_bv.astype(jnp.float32) / config.temperature
    if config.top_k > 0 and config.top_k < x.shape[-1]:
        kth_b1 = jax.lax.top_k(x, config.top_k)[0][..., -1:]
        x = jnp.where(x < kth_b1, -jnp.inf, x)
    if config.top_p < 1.0:
        x = jnp.where(x < _nucleus_cutoff(x, config.top_p, config.top_p_prefilter), -jnp.inf, x)
    return x


def _nucleus_cutoff_of_sorted(sorted_bm: jax.Array, lse_b1: jax.Array, top_p: float) -> jax.Array:
    """Smallest kept logit (B, 1), given the m largest logits in descending order and the log-normaliser over the
    whole vocabulary: a token is kept iff the mass strictly before it is < top_p (the one crossing stays in)."""
    probs_bm = jnp.exp(sorted_bm - lse_b1)
    mass_before_bm = jnp.cumsum(probs_bm, axis=-1) - probs_bm
    return jnp.min(jnp.where(mass_before_bm < top_p, sorted_bm, jnp.inf), axis=-1, keepdims=True)


def _nucleus_cutoff(x_bv: jax.Array, top_p: float, prefilter: int) -> jax.Array:
    """Top-p cutoff without sorting the vocabulary: the nucleus is searched among the `prefilter` largest logits
    (`lax.top_k`), which is exact whenever their mass reaches top_p; rows where it does not (a flat distribution)
    take the cutoff from a full sort, computed only when some row of the batch needs it."""
    lse_b1 = jax.nn.logsumexp(x_bv, axis=-1, keepdims=True)
    full = lambda: _nucleus_cutoff_of_sorted(-jnp.sort(-x_bv, axis=-1), lse_b1, top_p)
    m = min(prefilter, x_bv.shape[-1])
    if m == x_bv.shape[-1]:
        return full()
    top_bm = jax.lax.top_k(x_bv, m)[0]
    cutoff_b1 = _nucleus_cutoff_of_sorted(top_bm, lse_b1, top_p)
    fits_b1 = jnp.sum(jnp.exp(top_bm - lse_b1), axis=-1, keepdims=True) >= top_p
    return jax.lax.cond(jnp.all(fits_b1), lambda: cutoff_b1, lambda: jnp.where(fits_b1, cutoff_b1, full()))


def select_tokens(logits_bv: jax.Array, keys_b: jax.Array, config: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """One token per row from f32 logits (B, V) with one PRNG key per row -> (tokens_b int32, logps_b f32).

    logps_b are under the distribution named by `config.logps_kind`.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if config.greedy:
        tokens_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        logp_bv = jax.nn.log_softmax(logits_bv, axis=-1)
        logps_b = jnp.take_along_axis(logp_bv, tokens_b[:, None], axis=-1)[:, 0]
    else:
        x_bv = process_logits(logits_bv, config)
        tokens_b, max_b, log_mass_b = _categorical(x_bv, keys_b)
        # (x - max) - log(mass), in log_softmax's order: the recorded log-probs match `logprobs.completion_logps`.
        logps_b = (jnp.take_along_axis(x_bv, tokens_b[:, None], axis=-1)[:, 0] - max_b) - log_mass_b
    return tokens_b, logps_b


_BLOCK = 128  # ids per block of the two-level inverse-CDF draw


def _inverse_cdf(w_bn: jax.Array, u_b: jax.Array) -> jax.Array:
    """Per row, the index i with cumsum(w)[i-1] <= u·sum(w) < cumsum(w)[i] (u in [0, 1)): a draw with probabilities
    w / sum(w). Never an index of weight 0: rounding past the end falls back to the last positive weight."""
    c_bn = jnp.cumsum(w_bn, axis=-1)
    i_b = jnp.sum(c_bn <= u_b[:, None] * c_bn[:, -1:], axis=-1)
    last_b = w_bn.shape[-1] - 1 - jnp.argmax((w_bn > 0)[:, ::-1], axis=-1)
    return jnp.minimum(i_b, last_b).astype(jnp.int32)


def _categorical(x_bv: jax.Array, keys_b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One draw per row from softmax(x_bv) (-inf entries are never drawn) -> (tokens_b, max_b, log_mass_b), where
    logsumexp(x_bv) = max_b + log_mass_b.

    Inverse CDF in two levels: a block of _BLOCK consecutive ids by its mass, then an id inside it, from two
    uniforms per row. The cost is one exp and a few adds per logit; a Gumbel-max draw would need V random numbers
    per row, which at V = 151,936 costs more than the rest of a small model's decode step.
    """
    b, v = x_bv.shape
    r = -(-v // _BLOCK)
    x_brc = jnp.pad(x_bv, ((0, 0), (0, r * _BLOCK - v)), constant_values=-jnp.inf).reshape(b, r, _BLOCK)
    max_b = jnp.max(x_bv, axis=-1)
    w_brc = jnp.exp(x_brc - max_b[:, None, None])
    mass_br = w_brc.sum(-1)
    u_b2 = jax.vmap(lambda k: jax.random.uniform(k, (2,), jnp.float32))(keys_b)
    block_b = _inverse_cdf(mass_br, u_b2[:, 0])
    w_bc = jnp.take_along_axis(w_brc, block_b[:, None, None], axis=1)[:, 0]
    tokens_b = block_b * _BLOCK + _inverse_cdf(w_bc, u_b2[:, 1])
    return tokens_b, max_b, jnp.log(mass_br.sum(-1))


def row_keys(rng: jax.Array, num_rows: int) -> jax.Array:
    """One key per row, fold_in(rng, b): a row's randomness does not depend on the batch it is in."""
    return jax.vmap(lambda b: jax.random.fold_in(rng, b))(jnp.arange(num_rows, dtype=jnp.uint32))


def step_keys(keys_b: jax.Array, t) -> jax.Array:
    """The keys of step t, fold_in(key_b, t): one scalar step for every row (the static scheduler)."""
    return jax.vmap(lambda k: jax.random.fold_in(k, t))(keys_b)
