"""GRPO as pure functions: group advantages, the k3 KL, aggregation of per-token losses, importance corrections for
rollouts that came from another policy than the trainer's, and per-step health metrics. The policy loss that puts them
together, with its surrogates (clipped, CISPO, SAPO, VESPO, ...) as a registry under one frozen loss config, is
r1jax/losses.py.

Papers. DeepSeek-R1 (arXiv 2501.12948) eq. 1 writes GRPO with one ratio per *sequence* and a 1/G sum over the group:

    J = 1/G sum_i [ min(s_i A_i, clip(s_i, 1-eps, 1+eps) A_i) - beta D_KL(pi_theta || pi_ref) ]          (R1 eq. 1)
    s_i = pi_theta(o_i | q) / pi_old(o_i | q),   A_i = (r_i - mean(r)) / std(r)                          (R1 eq. 3)

The per-token form with a per-sequence token mean is DeepSeekMath's GRPO (arXiv 2402.03300 eq. 3), which is what
TRL implements and what `loss_type='grpo'` (with the default `importance_sampling_level='token'`) computes:

    rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)
    L      = -1/G sum_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1-eps_low, 1+eps_high) A_i) - beta KL_it ]
    KL_it  = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1                        (k3 estimator, per token)

The setting closest to R1's eq. 1 is `importance_sampling_level='sequence'` with `loss_type='grpo'`: one ratio per
sequence, applied to all its tokens, and a 1/G mean over sequences. It is not identical: the ratio is GSPO's length-
normalised exp(mean_t log rho_it) = s_i^(1/|o_i|) (R1 writes s_i itself), and the KL term stays the per-token k3 mean
(R1 writes a k3 of sequence probabilities). The R1 stage presets (experiments/r1_zero.py, reasoning_rl.py,
general_rl.py) use `loss_type='dapo'`, `importance_sampling_level='token'`, mu = 1: with mu = 1 every ratio is 1 in
value and both levels give the same loss and gradient (kl_bias_correction off, as there), and token-level aggregation
keeps long completions from getting an |o_i|-times smaller update per token (the reason given in
experiments/r1_zero.py; 'grpo' is one override away). The recipes follow their papers: r1_zero_gsm8k.py 'grpo'
(SimpleRL-Zoo), dr_grpo_math.py 'dr_grpo'.

Everything here is matched to TRL's `GRPOTrainer` (trl 1.16.0; the parity goldens in tests/goldens/trl_grpo_goldens.npz
are produced by TRL's own code, see tests/goldens/make_trl_goldens.py).

- `scale_rewards` (advantages): 'group' (eq. 3), 'batch' (group mean, std over the whole batch) or 'none' (Dr. GRPO:
  centring only). The std is the *unbiased* one (Bessel's correction, n-1), as TRL's `nanstd`.
- Aggregations (`aggregate_loss`; each loss type names one, r1jax/losses.py):
    'grpo'    per-sequence token mean, then mean over sequences (DeepSeekMath's 1/G sum_i 1/|o_i|).
    'bnpo'    token mean over the (local) batch: sum(loss * mask) / sum(mask).
    'dr_grpo' sum(loss * mask) / (B * max_completion_length): a constant normaliser, no length bias.
    'dapo'    token mean over the whole generation batch. TRL divides by `num_items_in_batch` (tokens of the
              generation batch on all processes) rescaled by processes / accumulation steps; for one process and one
              step per generation that is sum(mask), so here 'dapo' equals 'bnpo' numerically. A trainer that splits
              a generation batch into micro-batches passes the batch's token count (`num_tokens=`) to get DAPO's
              global normaliser instead.
    'luspo'   per-sequence token *sum*, then mean over sequences (LUSPO, arXiv 2602.05261: each sequence's loss
              scaled by its length, which undoes GSPO's length normalisation).

Rollout-policy corrections (the sampler's log-probs `sampler_logps_bt`, i.e. `Rollout.logps_bt`, differ from the
trainer's pi_old when rollouts are stale, sampled in lower precision, or through other kernels). TRL applies them to
vLLM rollouts; the option names (fields of losses.LossConfig) map one to one, with `sampler_` in place of `vllm_`:

    r1jax                         TRL                                   paper symbol
    sampler_is_correction         vllm_importance_sampling_correction   (on / off; default True, as TRL)
    sampler_is_mode               vllm_importance_sampling_mode         default 'sequence_mask', as TRL
    sampler_is_clip_min           vllm_importance_sampling_clip_min     C_min (default None: no lower bound)
    sampler_is_clip_max           vllm_importance_sampling_clip_max     C_max (default 3.0; TRL's deprecated `_cap`)
    off_policy_mask_threshold     off_policy_mask_threshold             delta of DeepSeek-V3.2 eq. 9 (None: off)
    top_entropy_quantile          top_entropy_quantile                  rho of "Beyond the 80/20 rule" (1.0: off)

  The weight w = pi_old / pi_sampler (pi_old: the trainer's log-probs of the batch before this update, `old_logps_bt`,
  or the current ones detached when that is None) is a constant that multiplies the policy term of every token
  (not the KL term), in one of four modes:
    'token_truncate'    TIS: w_t = clip(pi_old / pi_sampler, C_min, C_max) per token.
    'token_mask'        per-token masking, w_t = ratio inside [C_min, C_max] and 0 outside; with both bounds set
                        (e.g. [0.5, 5]) this is IcePop's token mask.
    'sequence_truncate' one ratio per sequence, exp(sum_t log(pi_old / pi_sampler)) (a product, not a mean, as TRL),
                        clipped to [C_min, C_max].
    'sequence_mask'     MIS: that sequence ratio, or 0 for the whole sequence when it leaves [C_min, C_max].
  The correction applies only when `sampler_logps_bt` is given (TRL: only with use_vllm); log-probs that are NaN (a
  token the sampler could not score) give ratio 1, as TRL.
  `off_policy_mask_threshold` (OPSM, DeepSeek-V3.2 eq. 9): a sequence with A < 0 whose mean over tokens of
  log pi_sampler - log pi_theta (pi_sampler falls back to pi_old without sampler log-probs) exceeds delta is dropped
  from the policy term. `top_entropy_quantile` = rho keeps in the policy term only tokens whose entropy (from the
  log-prob kernel, `entropy_bt`) is at least the (1 - rho) quantile (linear interpolation, as torch.quantile) of the
  batch's unmasked token entropies; rho = 0 keeps the top token(s) only.

Health metrics (`losses.health_metrics` puts them together): the sampler-trainer log-prob mismatch (mean and max
|log pi_old - log pi_sampler|, and the k1 and k3 estimates of KL(pi_sampler || pi_old) from the sampled tokens), the
importance weights after correction (mean, min, max over tokens, or over sequences in sequence modes, as TRL's
`sampling/importance_sampling_ratio/*`) with the fraction truncated or masked, the fraction of sequences the
off-policy mask drops, and the share of tokens trained under entropy selection.

Gradient-accumulation division is the trainer's job.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

SCALE_REWARDS = ("group", "batch", "none")
SAMPLER_IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
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
# Masked means
# ----------------------------------------------------------------------------------------------------------------


def masked_mean(x, mask, axis=None):
    """sum(x * mask) / max(sum(mask), 1) over `axis`; masked entries of x may be anything finite or not."""
    mask = jnp.asarray(mask).astype(x.dtype)
    total = jnp.sum(jnp.where(mask > 0, x * mask, 0), axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1)


# ----------------------------------------------------------------------------------------------------------------
# KL and aggregation
# ----------------------------------------------------------------------------------------------------------------


def k3_kl(ref_logps_bt, logps_bt, on_bt):
    """Per-token k3 estimate of KL(pi_theta || pi_ref), pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 (B, T): >= 0,
    exactly 0 on padding (where the log-probs may hold anything)."""
    ref_minus_bt = jnp.where(on_bt, ref_logps_bt - logps_bt, 0)
    return jnp.exp(ref_minus_bt) - ref_minus_bt - 1


def _sequence_mean(masked_bt, mask_bt, **_):
    return jnp.mean(masked_bt.sum(-1) / jnp.maximum(mask_bt.sum(-1), 1))


def _batch_token_mean(masked_bt, mask_bt, **_):
    return masked_bt.sum() / jnp.maximum(mask_bt.sum(), 1)


def _constant_normaliser(masked_bt, mask_bt, *, max_completion_length, **_):
    if max_completion_length is None or max_completion_length <= 0:
        raise ValueError(f"max_completion_length={max_completion_length}: loss_type='dr_grpo' needs a positive int")
    return masked_bt.sum() / (mask_bt.shape[0] * max_completion_length)


def _generation_token_mean(masked_bt, mask_bt, *, num_tokens, **_):
    n = mask_bt.sum() if num_tokens is None else jnp.asarray(num_tokens, masked_bt.dtype)
    return masked_bt.sum() / jnp.maximum(n, 1)


def _sequence_sum(masked_bt, mask_bt, **_):
    return jnp.mean(masked_bt.sum(-1))


# name -> reduce(masked per-token loss (B, T), mask (B, T), max_completion_length=, num_tokens=) -> scalar
AGGREGATIONS = {
    "grpo": _sequence_mean,
    "bnpo": _batch_token_mean,
    "dr_grpo": _constant_normaliser,
    "dapo": _generation_token_mean,
    "luspo": _sequence_sum,
}


def aggregate_loss(per_token_loss_bt, mask_bt, aggregation="grpo", *, max_completion_length=None, num_tokens=None):
    """Reduce per-token losses to a scalar by `aggregation`, one of AGGREGATIONS (see the module docstring).

    num_tokens: only for 'dapo', the unmasked-token count of the whole generation batch when this call sees a
      micro-batch of it; None means this batch is the whole generation batch (one process, one step: TRL's value).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}: expected one of {tuple(AGGREGATIONS)}")
    mask_bt = mask_bt.astype(per_token_loss_bt.dtype)
    masked_bt = jnp.where(mask_bt > 0, per_token_loss_bt * mask_bt, 0)
    return AGGREGATIONS[aggregation](
        masked_bt, mask_bt, max_completion_length=max_completion_length, num_tokens=num_tokens
    )


# ----------------------------------------------------------------------------------------------------------------
# Rollout-policy corrections (pure; the masks and weights are constants of the loss)
# ----------------------------------------------------------------------------------------------------------------


def sampler_log_ratio(old_logps_bt, sampler_logps_bt, mask_bt):
    """log(pi_old / pi_sampler) per token (B, T), 0 on padding and where the sampler's log-prob is NaN (TRL)."""
    on_bt = jnp.asarray(mask_bt) > 0
    diff_bt = jnp.where(on_bt, old_logps_bt - sampler_logps_bt, 0)
    return jnp.where(jnp.isnan(diff_bt), 0, diff_bt)


def sampler_importance_weights(
    old_logps_bt, sampler_logps_bt, mask_bt, *, mode="sequence_mask", clip_min=None, clip_max=3.0
):
    """Importance weights w for the gap between the trainer's pi_old and the sampler (see the module docstring).

    Returns (weights, ratio): (B, T) for token modes, (B, 1) for sequence modes; `ratio` before truncation or
    masking. Sequence modes use exp(sum_t log(pi_old / pi_sampler)), the probability ratio of the whole sequence.
    """
    if mode not in SAMPLER_IS_MODES:
        raise ValueError(f"sampler_is_mode={mode!r}: expected one of {SAMPLER_IS_MODES}")
    log_ratio = jax.lax.stop_gradient(sampler_log_ratio(old_logps_bt, sampler_logps_bt, mask_bt))
    if mode.startswith("sequence"):
        log_ratio = log_ratio.sum(-1, keepdims=True)  # (B, 1)
    ratio = jnp.exp(log_ratio)
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    if mode.endswith("_truncate"):
        weights = jnp.clip(ratio, lo, hi)
    else:
        weights = jnp.where((ratio < lo) | (ratio > hi), 0, ratio)
    return weights, ratio


def off_policy_sequence_mask(advantages_b, logps_bt, behaviour_logps_bt, mask_bt, threshold):
    """DeepSeek-V3.2 eq. 9: (B, 1), 0 for a sequence with A < 0 whose mean of log pi_behaviour - log pi_theta over
    its tokens exceeds `threshold` (delta), else 1. pi_theta is detached; NaN log-probs count as no evidence (0)."""
    m_bt = jnp.asarray(mask_bt).astype(logps_bt.dtype)
    kl_bt = jnp.where(m_bt > 0, behaviour_logps_bt - jax.lax.stop_gradient(logps_bt), 0)
    kl_bt = jnp.where(jnp.isnan(kl_bt), 0, kl_bt)
    mean_kl_b1 = kl_bt.sum(-1, keepdims=True) / jnp.maximum(m_bt.sum(-1, keepdims=True), 1)
    keep_b1 = (advantages_b[:, None] >= 0) | (mean_kl_b1 <= threshold)
    return keep_b1.astype(logps_bt.dtype)


def high_entropy_mask(entropy_bt, mask_bt, top_entropy_quantile):
    """Bool (B, T): unmasked tokens whose entropy is >= the (1 - rho) quantile of the unmasked entropies (linear
    interpolation, as TRL's torch.quantile), rho = top_entropy_quantile; all False when no token is unmasked."""
    on_bt = jnp.asarray(mask_bt) > 0
    ent_bt = jax.lax.stop_gradient(entropy_bt)
    threshold = jnp.nanquantile(jnp.where(on_bt, ent_bt, jnp.nan), 1 - top_entropy_quantile)  # NaN if none
    return (jnp.where(on_bt, ent_bt, 0) >= threshold) & on_bt


# ----------------------------------------------------------------------------------------------------------------
# Health metrics (pure; flat dicts of scalars)
# ----------------------------------------------------------------------------------------------------------------


def logp_mismatch_metrics(trainer_logps_bt, sampler_logps_bt, mask_bt):
    """Sampler-trainer log-prob mismatch on the sampled tokens, NaN log-probs left out (as TRL's metric).

    'sampler/logp_diff_mean' / '_max': mean and max |log pi_trainer - log pi_sampler| (TRL's
    sampling/sampling_logp_difference/*); 'sampler/kl_k1' and 'sampler/kl_k3': the k1 (mean of log pi_s - log pi_t)
    and k3 (mean of e^x - x - 1, x = log pi_t - log pi_s, always >= 0) estimates of KL(pi_sampler || pi_trainer),
    unbiased because the tokens were drawn from the sampler.
    """
    x_bt = jax.lax.stop_gradient(trainer_logps_bt) - sampler_logps_bt
    on_bt = (jnp.asarray(mask_bt) > 0) & ~jnp.isnan(x_bt)
    x_bt = jnp.where(on_bt, x_bt, 0)
    return {
        "sampler/logp_diff_mean": masked_mean(jnp.abs(x_bt), on_bt),
        "sampler/logp_diff_max": jnp.max(jnp.abs(x_bt)),  # 0 when nothing is unmasked, as TRL
        "sampler/kl_k1": masked_mean(-x_bt, on_bt),
        # expm1: e^x - 1 - x cancels to 0 in f32 for the ~1e-7 gaps of a sampler that shares the trainer's code
        "sampler/kl_k3": masked_mean(jnp.expm1(x_bt) - x_bt, on_bt),
    }


def importance_weight_metrics(weights, ratio, mask_bt, *, mode):
    """Statistics of the weights after correction (TRL's sampling/importance_sampling_ratio/{mean,min,max}: over the
    unmasked tokens in token modes, over all B sequences in sequence modes) and the fraction of them truncated
    ('sampler/is_truncated_fraction') or masked ('sampler/is_masked_fraction'), by mode."""
    if mode.startswith("sequence"):
        on = jnp.ones(weights.shape, bool)
    else:
        on = jnp.asarray(mask_bt) > 0
    w = jnp.where(on, weights, 0)
    n = jnp.sum(on)
    changed = (weights != ratio) & on
    kind = "truncated" if mode.endswith("_truncate") else "masked"
    return {
        "sampler/is_weight_mean": jnp.where(n > 0, w.sum() / jnp.maximum(n, 1), 0),
        "sampler/is_weight_min": jnp.where(n > 0, jnp.min(jnp.where(on, weights, jnp.inf)), 0),
        "sampler/is_weight_max": jnp.where(n > 0, jnp.max(jnp.where(on, weights, -jnp.inf)), 0),
        f"sampler/is_{kind}_fraction": changed.sum() / jnp.maximum(n, 1),
    }


def selection_metrics(mask_bt, *, off_policy_mask_b1=None, entropy_mask_bt=None):
    """'off_policy_mask/dropped_fraction': sequences (with at least one token) the off-policy mask drops;
    'entropy_mask/trained_fraction': the share of unmasked tokens trained under entropy selection."""
    on_bt = jnp.asarray(mask_bt) > 0
    out = {}
    if off_policy_mask_b1 is not None:
        has_tokens_b = on_bt.any(-1)
        out["off_policy_mask/dropped_fraction"] = masked_mean(
            (off_policy_mask_b1[:, 0] == 0).astype(jnp.float32), has_tokens_b
        )
    if entropy_mask_bt is not None:
        out["entropy_mask/trained_fraction"] = (entropy_mask_bt & on_bt).sum() / jnp.maximum(on_bt.sum(), 1)
    return out


