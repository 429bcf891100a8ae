"""GRPO as pure functions: group advantages, policy losses, k3 KL, aggregation modes, importance corrections for
rollouts that came from another policy than the trainer's, and per-step health metrics.

Papers. DeepSeek-R1 (arXiv 2501.12948) eq. 1 writes GRPO with one ratio per *sequence* and a 1/G sum over the group:

    J = 1/G sum_i [ min(s_i A_i, clip(s_i, 1-eps, 1+eps) A_i) - beta D_KL(pi_theta || pi_ref) ]          (R1 eq. 1)
    s_i = pi_theta(o_i | q) / pi_old(o_i | q),   A_i = (r_i - mean(r)) / std(r)                          (R1 eq. 3)

The per-token form with a per-sequence token mean is DeepSeekMath's GRPO (arXiv 2402.03300 eq. 3), which is what
TRL implements and what `loss_type='grpo'` (with the default `importance_sampling_level='token'`) computes here:

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

Variants selected by name, each matched to TRL's `GRPOTrainer` (trl 1.16.0; the parity goldens in
tests/goldens/trl_grpo_goldens.npz are produced by TRL's own code, see tests/goldens/make_trl_goldens.py):

- `scale_rewards`: 'group' (eq. 3), 'batch' (group mean, std over the whole batch) or 'none' (Dr. GRPO: centring only).
  The std is the *unbiased* one (Bessel's correction, n-1), as TRL's `nanstd`.
- `loss_type` (the surrogate and how per-token losses become a scalar):
    'grpo'    clipped surrogate; per-sequence token mean, then mean over sequences (DeepSeekMath's 1/G sum_i 1/|o_i|).
    'bnpo'    clipped surrogate; token mean over the (local) batch: sum(loss * mask) / sum(mask).
    'dr_grpo' clipped surrogate; sum(loss * mask) / (B * max_completion_length): a constant normaliser, no length bias.
    'dapo'    clipped surrogate; token mean over the whole generation batch. TRL divides by `num_items_in_batch`
              (tokens of the generation batch on all processes) rescaled by processes / accumulation steps; for one
              process and one step per generation that is sum(mask), so here 'dapo' equals 'bnpo' numerically. A
              trainer that splits a generation batch into micro-batches passes the batch's token count to
              `aggregate_loss` (`num_tokens=`) to get DAPO's global normaliser instead.
    'cispo'   CISPO (MiniMax-M1, arXiv 2506.13585): -sg(min(rho, eps_max)) A log pi_theta, the ratio truncated and
              detached instead of the update clipped, so clipped tokens still pass a gradient; aggregated as 'dapo'.
              As in TRL, `epsilon_high` *is* eps_max, the cap on the ratio itself (ScaleRL, arXiv 2510.13786,
              recommends 5.0), so it must be >= 1 here; `epsilon_low` is not used.
    'sapo'    SAPO (arXiv 2511.20347): -(4 / tau) sigmoid(tau (rho - 1)) A, a smooth gate instead of the hard clip,
              tau = `sapo_temperature_pos` (tau_pos) where A > 0 else `sapo_temperature_neg` (tau_neg); aggregated as
              'grpo'. The epsilons are not used.
- `epsilon_low` / `epsilon_high`: DAPO clip-higher.
- `importance_sampling_level`: 'token' (rho per token) or 'sequence' (GSPO: one ratio per sequence, the geometric
  mean exp(mean_t log rho_it) over its unmasked tokens, as TRL's importance_sampling_level='sequence').
- `kl_bias_correction`: multiply the k3 term by the importance ratio rho (DeepSeek-V3.2's unbiased estimator, TRL's
  `use_bias_correction_kl`; R1 itself used plain k3). As in TRL, rho is not detached inside this product.

Rollout-policy corrections (the sampler's log-probs `sampler_logps_bt`, i.e. `Rollout.logps_bt`, differ from the
trainer's pi_old when rollouts are stale, sampled in lower precision, or through other kernels). TRL applies them to
vLLM rollouts; the option names map one to one, with `sampler_` in place of `vllm_`:

    r1jax                         TRL                                   paper symbol
    sampler_is_correction         vllm_importance_sampling_correction   (on / off; default True, as TRL)
    sampler_is_mode               vllm_importance_sampling_mode         default 'sequence_mask', as TRL
    sampler_is_clip_min           vllm_importance_sampling_clip_min     C_min (default None: no lower bound)
    sampler_is_clip_max           vllm_importance_sampling_clip_max     C_max (default 3.0; TRL's deprecated `_cap`)
    off_policy_mask_threshold     off_policy_mask_threshold             delta of DeepSeek-V3.2 eq. 9 (None: off)
    top_entropy_quantile          top_entropy_quantile                  rho of "Beyond the 80/20 rule" (1.0: off)
    sapo_temperature_pos / _neg   sapo_temperature_pos / _neg           tau_pos / tau_neg (1.0 / 1.05)

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

Health metrics (`health_metrics`, also returned by `policy_loss`): the sampler-trainer log-prob mismatch (mean and
max |log pi_old - log pi_sampler|, and the k1 and k3 estimates of KL(pi_sampler || pi_old) from the sampled tokens),
the importance weights after correction (mean, min, max over tokens, or over sequences in sequence modes, as TRL's
`sampling/importance_sampling_ratio/*`) with the fraction truncated or masked, the fraction of sequences the
off-policy mask drops, and the share of tokens trained under entropy selection.

Simplifications relative to TRL: no `delta` clamp (INTELLECT-2), no vespo / luspo losses, no entropy bonus.
Gradient-accumulation division is the trainer's job.

Numeric hyperparameters (beta, epsilons, bounds, thresholds, max_completion_length) must be Python numbers (or None
where documented): they are validated eagerly and decide the structure of the computation, so bind them with
`functools.partial` before `jax.jit`. `check_loss_options` is the one set of bounds: the trainer's config validation
calls it with prefix 'rl.' so its errors name the config field.
"""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp

SCALE_REWARDS = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo")
CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")  # PPO's clipped surrogate; they differ in aggregation only
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
# Policy loss
# ----------------------------------------------------------------------------------------------------------------


def aggregate_loss(per_token_loss_bt, mask_bt, loss_type="grpo", *, max_completion_length=None, num_tokens=None):
    """Reduce per-token losses to a scalar by `loss_type` (see the module docstring; 'cispo' aggregates as 'dapo',
    'sapo' as 'grpo', as TRL).

    num_tokens: only for 'dapo' / 'cispo', the unmasked-token count of the whole generation batch when this call sees a
      micro-batch of it; None means this batch is the whole generation batch (one process, one step: TRL's value).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r}: expected one of {LOSS_TYPES}")
    loss_type = {"cispo": "dapo", "sapo": "grpo"}.get(loss_type, loss_type)
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


def loss_defaults() -> dict:
    """`policy_loss`'s keyword defaults, the one place they are written (its signature)."""
    params = inspect.signature(policy_loss).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_loss_options(*, prefix="", **options):
    """The one set of bounds on the loss options, shared by `policy_loss` and the trainers' config validation (which
    passes prefix='rl.', so an error names the config field: 'rl.epsilon_high=1.5: ...'). Other keywords are ignored.

    None and the no-op number mean the same for the optional bounds: sampler_is_clip_min None or 0, sampler_is_clip_max
    None or inf, off_policy_mask_threshold None or inf (configs hold numbers, so they use 0 / inf). A missing option
    takes `policy_loss`'s default.
    """
    o = {**loss_defaults(), **options}
    loss_type, importance_sampling_level, beta = o["loss_type"], o["importance_sampling_level"], o["beta"]
    epsilon_low, epsilon_high, sampler_is_mode = o["epsilon_low"], o["epsilon_high"], o["sampler_is_mode"]
    off_policy_mask_threshold, top_entropy_quantile = o["off_policy_mask_threshold"], o["top_entropy_quantile"]
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"{prefix}loss_type={loss_type!r}: expected one of {LOSS_TYPES}")
    if importance_sampling_level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"{prefix}importance_sampling_level={importance_sampling_level!r}: expected one of "
            f"{IMPORTANCE_SAMPLING_LEVELS}"
        )
    # 1 - epsilon_low is the lower ratio bound and must stay positive; 1 + epsilon_high < 2 keeps the trust region a
    # region (DAPO's clip-higher is 0.28).
    if not 0 < epsilon_low < 1:
        raise ValueError(f"{prefix}epsilon_low={epsilon_low}: must be in (0, 1)")
    if loss_type == "cispo":
        if not 1 <= epsilon_high < math.inf:
            raise ValueError(
                f"{prefix}epsilon_high={epsilon_high}: with loss_type='cispo' it is eps_max, the cap on the ratio "
                "itself (ScaleRL: 5.0); must be >= 1 and finite (below 1 it truncates every on-policy token)"
            )
    elif not 0 < epsilon_high < 1:
        raise ValueError(f"{prefix}epsilon_high={epsilon_high}: must be in (0, 1)")
    if not 0 <= beta < math.inf:
        raise ValueError(f"{prefix}beta={beta}: the KL coefficient must be >= 0 and finite")
    if sampler_is_mode not in SAMPLER_IS_MODES:
        raise ValueError(f"{prefix}sampler_is_mode={sampler_is_mode!r}: expected one of {SAMPLER_IS_MODES}")
    lo, hi = o["sampler_is_clip_min"], o["sampler_is_clip_max"]
    if lo is not None and not 0 <= lo < math.inf:
        raise ValueError(f"{prefix}sampler_is_clip_min={lo}: C_min must be >= 0 and finite (or None)")
    if hi is not None and not hi > 0:
        raise ValueError(f"{prefix}sampler_is_clip_max={hi}: C_max must be > 0 (inf or None: no upper bound)")
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(f"{prefix}sampler_is_clip_min={lo} >= sampler_is_clip_max={hi}: need C_min < C_max")
    no_bound = (lo is None or lo == 0) and (hi is None or hi == math.inf)
    if o["sampler_is_correction"] and sampler_is_mode.endswith("_truncate") and no_bound:
        raise ValueError(
            f"{prefix}sampler_is_clip_min={lo}, {prefix}sampler_is_clip_max={hi}: sampler_is_mode="
            f"{sampler_is_mode!r} needs at least one bound (C_min > 0 or a finite C_max)"
        )
    if off_policy_mask_threshold is not None and not off_policy_mask_threshold >= 0:
        raise ValueError(f"{prefix}off_policy_mask_threshold={off_policy_mask_threshold}: delta must be >= 0 (or None)")
    if not 0 <= top_entropy_quantile <= 1:
        raise ValueError(f"{prefix}top_entropy_quantile={top_entropy_quantile}: rho must be in [0, 1]")
    for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
        if not 0 < (tau := o[name]) < math.inf:
            raise ValueError(f"{prefix}{name}={tau}: the temperature must be > 0 and finite")


def _check_policy_args(logps_bt, old_logps_bt, ref_logps_bt, advantages_b, mask_bt, sampler_logps_bt, entropy_bt, **kw):
    check_loss_options(**kw)
    mcl = kw["max_completion_length"]
    if kw["loss_type"] == "dr_grpo" and (mcl is None or int(mcl) != mcl or mcl <= 0):
        raise ValueError(f"max_completion_length={mcl}: loss_type='dr_grpo' needs a positive int")
    if logps_bt.ndim != 2:
        raise ValueError(f"logps_bt.shape={tuple(logps_bt.shape)}: expected (B, T)")
    shape = tuple(logps_bt.shape)
    for name, x in (
        ("old_logps_bt", old_logps_bt),
        ("ref_logps_bt", ref_logps_bt),
        ("mask_bt", mask_bt),
        ("sampler_logps_bt", sampler_logps_bt),
        ("entropy_bt", entropy_bt),
    ):
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name}.shape={tuple(x.shape)} must equal logps_bt.shape={shape}")
    if tuple(advantages_b.shape) != shape[:1]:
        raise ValueError(f"advantages_b.shape={tuple(advantages_b.shape)}: expected ({shape[0]},), one per sequence")
    if kw["beta"] > 0 and ref_logps_bt is None:
        raise ValueError(f"beta={kw['beta']} > 0 needs ref_logps_bt (got None)")
    if kw["top_entropy_quantile"] < 1 and entropy_bt is None:
        raise ValueError(f"top_entropy_quantile={kw['top_entropy_quantile']} < 1 needs entropy_bt (got None)")


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


def health_metrics(
    trainer_logps_bt,
    sampler_logps_bt,
    mask_bt,
    *,
    advantages_b=None,
    entropy_bt=None,
    logps_bt=None,
    sampler_is_correction=True,
    sampler_is_mode="sequence_mask",
    sampler_is_clip_min=None,
    sampler_is_clip_max=3.0,
    off_policy_mask_threshold=None,
    top_entropy_quantile=1.0,
    **_,
):
    """All health metrics of one step as a flat dict, from the trainer's pi_old log-probs, the sampler's (None: the
    mismatch and weight metrics are left out) and the loss options (other keywords are ignored, so the loss kwargs
    can be passed as they are). `logps_bt` is pi_theta for the off-policy mask (default: pi_old, the first of mu
    updates); the off-policy mask needs `advantages_b`, entropy selection `entropy_bt`. Equal to the entries
    `policy_loss` adds to its metrics."""
    out = {}
    if sampler_logps_bt is not None:
        out.update(logp_mismatch_metrics(trainer_logps_bt, sampler_logps_bt, mask_bt))
        if sampler_is_correction:
            w, ratio = sampler_importance_weights(
                trainer_logps_bt,
                sampler_logps_bt,
                mask_bt,
                mode=sampler_is_mode,
                clip_min=sampler_is_clip_min,
                clip_max=sampler_is_clip_max,
            )
            out.update(importance_weight_metrics(w, ratio, mask_bt, mode=sampler_is_mode))
    opsm = ent = None
    if off_policy_mask_threshold is not None and off_policy_mask_threshold < math.inf and advantages_b is not None:
        behaviour = trainer_logps_bt if sampler_logps_bt is None else sampler_logps_bt
        current = trainer_logps_bt if logps_bt is None else logps_bt
        opsm = off_policy_sequence_mask(advantages_b, current, behaviour, mask_bt, off_policy_mask_threshold)
    if top_entropy_quantile < 1 and entropy_bt is not None:
        ent = high_entropy_mask(entropy_bt, mask_bt, top_entropy_quantile)
    out.update(selection_metrics(mask_bt, off_policy_mask_b1=opsm, entropy_mask_bt=ent))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------------


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
    sampler_logps_bt=None,
    entropy_bt=None,
    sampler_is_correction=True,
    sampler_is_mode="sequence_mask",
    sampler_is_clip_min=None,
    sampler_is_clip_max=3.0,
    off_policy_mask_threshold=None,
    top_entropy_quantile=1.0,
    sapo_temperature_pos=1.0,
    sapo_temperature_neg=1.05,
):
    """GRPO-family policy loss (to minimise) plus beta * k3 KL, aggregated by `loss_type` (module docstring).

    logps_bt: log pi_theta of the sampled tokens (B, T), the argument differentiated.
    old_logps_bt: log pi_old (B, T), or None for the on-policy case (mu = 1): then pi_old = stop_gradient(pi_theta),
      rho = 1 with gradient A * grad log pi_theta, as TRL.
    ref_logps_bt: log pi_ref (B, T); never read when beta == 0 (may be None).
    advantages_b: (B,) one advantage per completion (`group_advantages(...).reshape(-1)`).
    mask_bt: (B, T) bool or 0/1, True on completion tokens that count.
    sampler_logps_bt: (B, T) log-probs recorded by the sampler (`Rollout.logps_bt`), or None. Given, they feed the
      importance correction (when sampler_is_correction), the off-policy mask and the mismatch metrics.
    entropy_bt: (B, T) per-token entropy of pi_theta (the log-prob kernel's `return_entropy=True`); needed when
      top_entropy_quantile < 1.
    The policy term of each token is multiplied by the off-policy mask, the entropy mask and the importance weight
    (in TRL's order); the KL term by none of them.
    Returns (loss, metrics) with metrics: 'ratio_mean', 'pg_loss' (the loss without the KL term), 'tokens'
    (unmasked tokens); for the clipped losses 'clip_ratio/low_mean' (rho < 1-eps_low and A < 0),
    'clip_ratio/high_mean' (rho > 1+eps_high and A > 0), 'clip_ratio/region_mean' (either); for 'cispo'
    'cispo_clip_ratio' (rho > eps_max and A > 0); when beta > 0, 'kl' (masked token mean of the k3 term as it enters
    the loss, i.e. times rho under kl_bias_correction); and the entries of `health_metrics`. At token level the
    fractions are masked token means; at sequence level they are means over all B sequences (TRL's convention; fully
    masked rows count, with rho = 1).
    """
    opts = dict(
        loss_type=loss_type,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        beta=beta,
        max_completion_length=max_completion_length,
        importance_sampling_level=importance_sampling_level,
        sampler_is_correction=sampler_is_correction,
        sampler_is_mode=sampler_is_mode,
        sampler_is_clip_min=sampler_is_clip_min,
        sampler_is_clip_max=sampler_is_clip_max,
        off_policy_mask_threshold=off_policy_mask_threshold,
        top_entropy_quantile=top_entropy_quantile,
        sapo_temperature_pos=sapo_temperature_pos,
        sapo_temperature_neg=sapo_temperature_neg,
    )
    _check_policy_args(
        logps_bt, old_logps_bt, ref_logps_bt, advantages_b, mask_bt, sampler_logps_bt, entropy_bt, **opts
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

    metrics = {}
    if loss_type in CLIPPED_LOSS_TYPES:
        clipped = jnp.clip(ratio, 1 - epsilon_low, 1 + epsilon_high)
        pg_loss = -jnp.minimum(ratio * adv, clipped * adv)  # (B, T) or (B, 1)
    elif loss_type == "cispo":
        # The truncated ratio is a detached weight on the REINFORCE term A * log pi_theta (MiniMax-M1 eq. 4).
        weight = jax.lax.stop_gradient(jnp.minimum(ratio, epsilon_high))
        pg_loss = -weight * adv * jnp.where(on_bt, logps_bt, 0)
    else:  # sapo: f(rho) = 4/tau sigmoid(tau (rho - 1)) has f(1) = 2/tau and slope 1 at rho = 1, like rho itself
        # TRL builds tau with torch.where on Python floats, i.e. in float32; rounding the same way keeps f64 parity.
        tau = jnp.where(adv > 0, jnp.float32(sapo_temperature_pos), jnp.float32(sapo_temperature_neg)).astype(dtype)
        pg_loss = -jax.nn.sigmoid(tau * (ratio - 1)) * 4 / tau * adv
    pg_loss_bt = jnp.broadcast_to(pg_loss, logps_bt.shape)

    # Rollout-policy corrections: constants multiplying the policy term, in TRL's order.
    opsm_b1 = ent_bt = None
    if off_policy_mask_threshold is not None and off_policy_mask_threshold < math.inf:  # inf: off, like None
        behaviour_bt = old_logps_bt if sampler_logps_bt is None else sampler_logps_bt
        opsm_b1 = off_policy_sequence_mask(advantages_b, logps_bt, behaviour_bt, m_bt, off_policy_mask_threshold)
        pg_loss_bt = pg_loss_bt * opsm_b1
    if top_entropy_quantile < 1:
        ent_bt = high_entropy_mask(entropy_bt, m_bt, top_entropy_quantile)
        pg_loss_bt = pg_loss_bt * ent_bt.astype(dtype)
    if sampler_logps_bt is not None:
        metrics.update(logp_mismatch_metrics(old_logps_bt, sampler_logps_bt, m_bt))
        if sampler_is_correction:
            is_w, is_ratio = sampler_importance_weights(
                old_logps_bt,
                sampler_logps_bt,
                m_bt,
                mode=sampler_is_mode,
                clip_min=sampler_is_clip_min,
                clip_max=sampler_is_clip_max,
            )
            pg_loss_bt = pg_loss_bt * is_w.astype(dtype)
            metrics.update(importance_weight_metrics(is_w, is_ratio, m_bt, mode=sampler_is_mode))
    metrics.update(selection_metrics(m_bt, off_policy_mask_b1=opsm_b1, entropy_mask_bt=ent_bt))

    per_token_loss_bt = pg_loss_bt
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
    if importance_sampling_level == "token":
        frac = lambda x: masked_mean(x, m_bt)
    else:
        frac = jnp.mean
    if loss_type in CLIPPED_LOSS_TYPES:
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).astype(dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).astype(dtype)
        metrics["clip_ratio/low_mean"] = frac(low)
        metrics["clip_ratio/high_mean"] = frac(high)
        metrics["clip_ratio/region_mean"] = frac(jnp.maximum(low, high))
    elif loss_type == "cispo":
        metrics["cispo_clip_ratio"] = frac(((ratio > epsilon_high) & (adv > 0)).astype(dtype))
    metrics.update(
        {
            "ratio_mean": frac(ratio),
            "pg_loss": jax.lax.stop_gradient(aggregate_loss(pg_loss_bt, m_bt, **agg)),
            "tokens": m_bt.sum(),
        }
    )
    return loss, metrics
