"""GRPO as pure functions: group advantages, the clipped policy loss, k3 KL, aggregation modes.

Paper: DeepSeek-R1 (arXiv 2501.12948) eq. 1-3, GRPO from DeepSeekMath. For a prompt q and G completions
o_1..o_G with rewards r_i,

    A_i   = (r_i - mean(r)) / (std(r) + eps)                                  (eq. 3)
    rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)
    L      = -1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-eps_low, 1+eps_high) A_i) - beta KL_it ]
    KL_it  = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1                        (k3 estimator)

Variants selected by name, each matched to TRL's `GRPOTrainer` (trl 1.16.0; the parity goldens in
tests/goldens/trl_grpo_goldens.npz are produced by TRL's own `_compute_loss`):

- `scale_rewards`: 'group' (eq. 3), 'batch' (group mean, std over the whole batch) or 'none' (Dr. GRPO: centring only).
  The std is the *unbiased* one (Bessel's correction, n-1), as TRL's `nanstd`.
- `loss_type` (how per-token losses become a scalar):
    'grpo'    per-sequence token mean, then mean over sequences (eq. 3's 1/G sum_i 1/|o_i| sum_t).
    'bnpo'    token mean over the (local) batch: sum(loss * mask) / sum(mask).
    'dr_grpo' sum(loss * mask) / (B * max_completion_length): a constant normaliser, no length bias.
    'dapo'    token mean over the whole generation batch. TRL divides by `num_items_in_batch` (tokens of the
              generation batch on all processes) rescaled by processes / accumulation steps; for one process and one
              step per generation that is sum(mask), so here 'dapo' equals 'bnpo' numerically. A trainer that
              splits a generation batch into micro-batches passes the batch's token count to `aggregate_loss`
              (`num_tokens=`) to get DAPO's global normaliser instead.
- `epsilon_low` / `epsilon_high`: DAPO clip-higher.
- `importance_sampling_level`: 'token' (rho per token) or 'sequence' (GSPO: one ratio per sequence, the geometric
  mean exp(mean_t log rho_it) over its unmasked tokens, as TRL's importance_sampling_level='sequence').
- `kl_bias_correction`: multiply the k3 term by the importance ratio rho (DeepSeek-V3.2's unbiased estimator, TRL's
  `use_bias_correction_kl`; R1 itself used plain k3). As in TRL, rho is not detached inside this product.

Simplifications relative to TRL: no entropy mask, off-policy sequence mask, vLLM importance correction, `delta`
clamp, or the cispo / sapo / vespo / luspo losses. Gradient-accumulation division is the trainer's job.

Numeric hyperparameters (beta, epsilons, max_completion_length) must be Python numbers: they are validated
eagerly and decide the structure of the computation, so bind them with `functools.partial` before `jax.jit`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


# ----------------------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------------------


def _check_rewards(rewards_pg, valid_pg):
    if rewards_pg.ndim != 2:
        raise ValueError(f"rewards_pg.shape={tuple(rewards_pg.shape)}: expected (P, G), prompts x samples per prompt")
    if valid_pg is not None and tuple(valid_pg.shape) != tuple(rewards_pg.shape):
        raise ValueError(
            f"valid_pg.shape={tuple(valid_pg.shape)} must equal rewards_pg.shape={tuple(rewards_pg.shape)}"
        )


def _zero_spread_pg(rewards_pg, valid_pg):
    """(P,) True where all valid rewards of a group are equal (or the group has no valid reward)."""
    hi = jnp.max(jnp.where(valid_pg, rewards_pg, -jnp.inf), axis=1)
    lo = jnp.min(jnp.where(valid_pg, rewards_pg, jnp.inf), axis=1)
    return hi <= lo


def group_advantages(rewards_pg, *, scale_rewards="group", eps=1e-4, valid_pg=None):
    """GRPO advantages A = (r - group mean) / (std + eps), shape (P, G).

    scale_rewards: 'group' divides by each group's std, 'batch' by the std of all rewards in the batch (the mean is
      still per group, as TRL), 'none' only centres (Dr. GRPO). std is unbiased (n-1), as TRL's `nanstd`.
    valid_pg: optional bool (P, G); False marks unscorable completions (a reward function raised or timed out). They
      are left out of their group's mean and std (and of the batch std) and get advantage exactly 0, as TRL does for
      rewards that are None for every reward function.
    Groups whose valid rewards are all equal get advantage exactly 0 (TRL gets round-off / (0 + eps) there), so
    zero-spread groups never push the policy, and eps=0 cannot divide by zero.
    """
    rewards_pg = jnp.asarray(rewards_pg)
    _check_rewards(rewards_pg, valid_pg)
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r}: expected one of {SCALE_REWARDS}")
    if rewards_pg.shape[1] < 2:
        raise ValueError(f"rewards_pg.shape={tuple(rewards_pg.shape)}: G=1, GRPO needs at least 2 samples per prompt")
    if not eps >= 0:
        raise ValueError(f"eps={eps}: must be >= 0")
    if not jnp.issubdtype(rewards_pg.dtype, jnp.floating):
        rewards_pg = rewards_pg.astype(jnp.float32)
    valid_pg = jnp.ones(rewards_pg.shape, bool) if valid_pg is None else jnp.asarray(valid_pg, bool)
    r_pg = jnp.where(valid_pg, rewards_pg, 0)  # invalid entries may hold NaN; keep them out of every sum

    n_p = valid_pg.sum(axis=1)
    mean_p = r_pg.sum(axis=1) / jnp.maximum(n_p, 1)
    centred_pg = jnp.where(valid_pg, r_pg - mean_p[:, None], 0)
    if scale_rewards == "group":
        var_p = jnp.sum(centred_pg**2, axis=1) / jnp.maximum(n_p - 1, 1)
        std_pg = jnp.sqrt(var_p)[:, None]
    elif scale_rewards == "batch":
        n = valid_pg.sum()
        dev = jnp.where(valid_pg, r_pg - r_pg.sum() / jnp.maximum(n, 1), 0)
        std_pg = jnp.sqrt(jnp.sum(dev**2) / jnp.maximum(n - 1, 1))
    if scale_rewards == "none":
        adv_pg = centred_pg
    else:
        denom = std_pg + eps
        adv_pg = centred_pg / jnp.where(denom > 0, denom, 1)  # denom is 0 only for zero-spread groups, zeroed below
    keep_pg = valid_pg & ~_zero_spread_pg(rewards_pg, valid_pg)[:, None]
    return jnp.where(keep_pg, adv_pg, 0)


def zero_spread_fraction(rewards_pg, valid_pg=None):
    """Fraction of groups whose (valid) rewards are all equal: they have zero advantage and carry no signal."""
    rewards_pg = jnp.asarray(rewards_pg)
    _check_rewards(rewards_pg, valid_pg)
    valid_pg = jnp.ones(rewards_pg.shape, bool) if valid_pg is None else jnp.asarray(valid_pg, bool)
    return jnp.mean(_zero_spread_pg(rewards_pg, valid_pg).astype(jnp.float32))


def keep_informative_groups(rewards_pg, valid_pg=None):
    """DAPO dynamic sampling: bool (P,), True for groups with at least two different (valid) rewards."""
    rewards_pg = jnp.asarray(rewards_pg)
    _check_rewards(rewards_pg, valid_pg)
    valid_pg = jnp.ones(rewards_pg.shape, bool) if valid_pg is None else jnp.asarray(valid_pg, bool)
    return ~_zero_spread_pg(rewards_pg, valid_pg)


# ----------------------------------------------------------------------------------------------------------------
# Masks and masked means
# ----------------------------------------------------------------------------------------------------------------


def masked_mean(x, mask, axis=None):
    """sum(x * mask) / max(sum(mask), 1) over `axis`; masked entries of x may be anything finite or not."""
    mask = jnp.asarray(mask).astype(x.dtype)
    total = jnp.sum(jnp.where(mask > 0, x * mask, 0), axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1)


def masked_seq_mean(x_bt, mask_bt):
    """(B,) per-sequence token mean; 0 for a sequence with no unmasked token."""
    return masked_mean(x_bt, mask_bt, axis=-1)


def is_terminated(tokens_bt, mask_bt, eos_ids):
    """(B,) True where the last unmasked token of a completion is one of `eos_ids` (TRL's test for truncation)."""
    mask_bt = jnp.asarray(mask_bt, bool)
    t = mask_bt.shape[-1]
    last_b = t - 1 - jnp.argmax(mask_bt[:, ::-1], axis=-1)  # index of the last True (argmax finds the first)
    last_tok_b = jnp.take_along_axis(tokens_bt, last_b[:, None], axis=-1)[:, 0]
    hit_b = jnp.isin(last_tok_b, jnp.asarray(eos_ids))
    return hit_b & mask_bt.any(axis=-1)


def mask_truncated_completions(mask_bt, terminated_b):
    """Zero the mask of completions that hit the length limit without EOS (DAPO overlong filtering)."""
    keep_b = jnp.asarray(terminated_b, bool)
    return jnp.where(keep_b[:, None], mask_bt, jnp.zeros_like(mask_bt))


# ----------------------------------------------------------------------------------------------------------------
# Policy loss
# ----------------------------------------------------------------------------------------------------------------


def aggregate_loss(per_token_loss_bt, mask_bt, loss_type="grpo", *, max_completion_length=None, num_tokens=None):
    """Reduce per-token losses to a scalar by `loss_type` (see the module docstring).

    num_tokens: only for 'dapo', the unmasked-token count of the whole generation batch when this call sees a
      micro-batch of it; None means this batch is the whole generation batch (one process, one step: TRL's value).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: expected one of {LOSS_TYPES}")
    mask_bt = mask_bt.astype(per_token_loss_bt.dtype)
    masked_bt = jnp.where(mask_bt > 0, per_token_loss_bt * mask_bt, 0)
    if loss_type == "grpo":
        return jnp.mean(masked_bt.sum(-1) / jnp.maximum(mask_bt.sum(-1), 1))
    if loss_type == "bnpo":
        return masked_bt.sum() / jnp.maximum(mask_bt.sum(), 1)
    if loss_type == "dr_grpo":
        if max_completion_length is None or max_completion_length <= 0:
            raise ValueError(f"max_completion_length={max_completion_length}: loss_type='dr_grpo' needs a positive int")
        return masked_bt.sum() / (mask_bt.shape[0] * max_completion_length)
    n = mask_bt.sum() if num_tokens is None else jnp.asarray(num_tokens, per_token_loss_bt.dtype)
    return masked_bt.sum() / jnp.maximum(n, 1)


def _check_policy_args(logps_bt, old_logps_bt, ref_logps_bt, advantages_b, mask_bt, **kw):
    if kw["loss_type"] not in LOSS_TYPES:
        raise ValueError(f"loss_type={kw['loss_type']!r}: expected one of {LOSS_TYPES}")
    if kw["importance_sampling_level"] not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"importance_sampling_level={kw['importance_sampling_level']!r}: expected one of "
            f"{IMPORTANCE_SAMPLING_LEVELS}"
        )
    # 1 - epsilon_low is the lower ratio bound and must stay positive; the upper bound 1 + epsilon_high is free.
    if not 0 < kw["epsilon_low"] < 1:
        raise ValueError(f"epsilon_low={kw['epsilon_low']}: must be in (0, 1)")
    if not 0 < kw["epsilon_high"] < math.inf:
        raise ValueError(f"epsilon_high={kw['epsilon_high']}: must be > 0 and finite")
    if not 0 <= kw["beta"] < math.inf:
        raise ValueError(f"beta={kw['beta']}: the KL coefficient must be >= 0 and finite")
    mcl = kw["max_completion_length"]
    if kw["loss_type"] == "dr_grpo" and (mcl is None or int(mcl) != mcl or mcl <= 0):
        raise ValueError(f"max_completion_length={mcl}: loss_type='dr_grpo' needs a positive int")
    if logps_bt.ndim != 2:
        raise ValueError(f"logps_bt.shape={tuple(logps_bt.shape)}: expected (B, T)")
    shape = tuple(logps_bt.shape)
    for name, x in (("old_logps_bt", old_logps_bt), ("ref_logps_bt", ref_logps_bt), ("mask_bt", mask_bt)):
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name}.shape={tuple(x.shape)} must equal logps_bt.shape={shape}")
    if tuple(advantages_b.shape) != shape[:1]:
        raise ValueError(f"advantages_b.shape={tuple(advantages_b.shape)}: expected ({shape[0]},), one per sequence")
    if kw["beta"] > 0 and ref_logps_bt is None:
        raise ValueError(f"beta={kw['beta']} > 0 needs ref_logps_bt (got None)")


def policy_loss(
    logps_bt,
    old_logps_bt,
    ref_logps_bt,
    advantages_b,
    mask_bt,
    *,
    loss_type="grpo",
    epsilon_low=0.2,
    epsilon_high=0.2,
    beta=0.0,
    max_completion_length=None,
    kl_bias_correction=False,
    importance_sampling_level="token",
):
    """GRPO clipped-surrogate loss (to minimise) plus beta * k3 KL, aggregated by `loss_type`.

    logps_bt: log pi_theta of the sampled tokens (B, T), the argument differentiated.
    old_logps_bt: log pi_old (B, T), or None for the on-policy case (mu = 1): then pi_old = stop_gradient(pi_theta),
      rho = 1 with gradient A * grad log pi_theta, as TRL.
    ref_logps_bt: log pi_ref (B, T); never read when beta == 0 (may be None).
    advantages_b: (B,) one advantage per completion (`group_advantages(...).reshape(-1)`).
    mask_bt: (B, T) bool or 0/1, True on completion tokens that count.
    Returns (loss, metrics) with metrics: 'clip_ratio/low_mean' (rho < 1-eps_low and A < 0), 'clip_ratio/high_mean'
    (rho > 1+eps_high and A > 0), 'clip_ratio/region_mean' (either), 'ratio_mean', 'pg_loss' (the loss without the
    KL term), 'tokens' (unmasked tokens) and, when beta > 0, 'kl' (masked token mean of the k3 term as it enters the
    loss, i.e. times rho under kl_bias_correction). At token level the fractions are masked token means; at sequence
    level they are means over all B sequences (TRL's convention; fully masked rows count, with rho = 1).
    """
    _check_policy_args(
        logps_bt,
        old_logps_bt,
        ref_logps_bt,
        advantages_b,
        mask_bt,
        loss_type=loss_type,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        beta=beta,
        max_completion_length=max_completion_length,
        importance_sampling_level=importance_sampling_level,
    )
    dtype = logps_bt.dtype
    m_bt = jnp.asarray(mask_bt).astype(dtype)
    on_bt = m_bt > 0
    if old_logps_bt is None:
        old_logps_bt = jax.lax.stop_gradient(logps_bt)
    # Padding may hold anything (even -inf); zero the log-ratio there so exp never sees it and gradients stay 0.
    log_ratio_bt = jnp.where(on_bt, logps_bt - old_logps_bt, 0)
    if importance_sampling_level == "token":
        log_w = log_ratio_bt  # (B, T)
    else:
        log_w = (log_ratio_bt * m_bt).sum(-1, keepdims=True) / jnp.maximum(m_bt.sum(-1, keepdims=True), 1)  # (B, 1)
    ratio = jnp.exp(log_w)
    adv = advantages_b.astype(dtype)[:, None]  # (B, 1)

    clipped = jnp.clip(ratio, 1 - epsilon_low, 1 + epsilon_high)
    pg_loss = -jnp.minimum(ratio * adv, clipped * adv)  # (B, T) or (B, 1)
    pg_loss_bt = jnp.broadcast_to(pg_loss, logps_bt.shape)
    per_token_loss_bt = pg_loss_bt
    metrics = {}
    if beta > 0:
        ref_minus_bt = jnp.where(on_bt, ref_logps_bt - logps_bt, 0)
        kl_bt = jnp.exp(ref_minus_bt) - ref_minus_bt - 1  # k3, >= 0, exactly 0 on padding
        if kl_bias_correction:
            kl_bt = kl_bt * ratio
        per_token_loss_bt = per_token_loss_bt + beta * kl_bt
        metrics["kl"] = masked_mean(kl_bt, m_bt)

    agg = dict(loss_type=loss_type, max_completion_length=max_completion_length)
    loss = aggregate_loss(per_token_loss_bt, m_bt, **agg)

    ratio = jax.lax.stop_gradient(ratio)
    low = ((ratio < 1 - epsilon_low) & (adv < 0)).astype(dtype)
    high = ((ratio > 1 + epsilon_high) & (adv > 0)).astype(dtype)
    region = jnp.maximum(low, high)
    if importance_sampling_level == "token":
        frac = lambda x: masked_mean(x, m_bt)
    else:
        frac = jnp.mean
    metrics.update(
        {
            "clip_ratio/low_mean": frac(low),
            "clip_ratio/high_mean": frac(high),
            "clip_ratio/region_mean": frac(region),
            "ratio_mean": frac(ratio),
            "pg_loss": jax.lax.stop_gradient(aggregate_loss(pg_loss_bt, m_bt, **agg)),
            "tokens": m_bt.sum(),
        }
    )
    return loss, metrics
