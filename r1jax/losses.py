"""GRPO's policy loss: a surrogate from a registry, the rollout-policy corrections, the KL term, an aggregation, and
an optional entropy bonus, all read from one frozen `LossConfig` validated in one place.

    policy_loss = aggregate( corrections x surrogate(rho, A) + beta KL ) - c_H H          (r1jax/grpo.py: the pieces)

A surrogate maps the importance ratio rho (per token, or per sequence at `importance_sampling_level='sequence'`: GSPO's
exp(mean_t log rho_it)) and the advantage A to a per-token policy loss; its registry entry names how it is aggregated
(r1jax/grpo.py: AGGREGATIONS) and which metrics it logs. Adding a variant is one function and one line in SURROGATES.
Each is matched to TRL's `GRPOTrainer` (trl 1.16.0), goldens from TRL's own code (tests/goldens/make_trl_goldens.py):

    loss_type  surrogate                                                        aggregation
    'grpo'     clipped: -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)         'grpo' (1/G sum_i 1/|o_i| sum_t)
    'bnpo'     clipped                                                          'bnpo' (token mean of the batch)
    'dr_grpo'  clipped                                                          'dr_grpo' (/ B max_completion_length)
    'dapo'     clipped                                                          'dapo' (token mean of the generation)
    'luspo'    clipped (LUSPO, arXiv 2602.05261; meant for level 'sequence')    'luspo' (sum over tokens, mean over B)
    'cispo'    -sg(min(rho, eps_max)) A log pi_theta (MiniMax-M1)               'dapo'
    'sapo'     -(4 / tau) sigmoid(tau (rho - 1)) A (SAPO, arXiv 2511.20347)     'grpo'
    'vespo'    -sg(phi(w)) A log pi_theta (VESPO, arXiv 2602.10693)             'dapo'

- clipped: `delta` (INTELLECT-2, arXiv 2505.07291) clamps the unclipped ratio from above, min(rho, delta), so a token
  with A < 0 and a huge ratio no longer gets an unbounded update (two-sided clipping); None is off, as TRL.
- CISPO: the ratio truncated and detached instead of the update clipped, so clipped tokens still pass a gradient. As
  in TRL, `epsilon_high` *is* eps_max, the cap on the ratio itself (ScaleRL, arXiv 2510.13786, recommends 5.0), so it
  must be >= 1 here; `epsilon_low` is not used.
- SAPO: a smooth gate instead of the hard clip, tau = `sapo_temperature_pos` (tau_pos) where A > 0 else
  `sapo_temperature_neg` (tau_neg). The epsilons are not used.
- VESPO: phi(w) = e^lambda w^k e^(-lambda w) (phi(1) = 1) of the *sequence* ratio w = prod_t pi_theta / pi_old (times
  the sampler correction's token weights pi_old / pi_sampler when it is on: VESPO takes them into w instead of
  multiplying the loss, so it needs a token mode), k, lambda = `vespo_k_pos`, `vespo_lambda_pos` where A >= 0 else
  `vespo_k_neg`, `vespo_lambda_neg`; log w clamped to [log 1e-8, 20] as TRL.

The ratio is 1 with gradient A grad log pi_theta when `old_logps_bt` is None (mu = 1, on policy), as TRL.
`kl_bias_correction` multiplies the k3 term by rho (DeepSeek-V3.2's unbiased estimator, TRL's `use_bias_correction_kl`;
R1 itself used plain k3); as in TRL, rho is not detached inside this product.

The corrections (r1jax/grpo.py: off-policy sequence mask, entropy-selected tokens, sampler importance weights) are
constants multiplying the policy term of each token in TRL's order; the KL term gets none of them.

Entropy bonus (`entropy_coef` = c_H, TRL's): loss - c_H H, H the mean entropy of the tokens the policy term trains (all
unmasked ones, or the entropy-selected ones), whatever the aggregation. With `use_adaptive_entropy` (Skywork-OR1, arXiv
2505.22312) c_H is state (`EntropyControl`): the bonus applies only when the entropy measured at the previous update
is <= `entropy_target`, and after each update c_H moves by `entropy_coef_delta` (up when the entropy is <= the target,
down otherwise) inside [`entropy_coef_min`, `entropy_coef_max`]; before the first measurement no bonus applies.

Options are Python numbers (or None where documented) deciding the structure of the computation: a LossConfig is
hashable, bound with `functools.partial` before `jax.jit`. `LossConfig.validate` is the one set of bounds; the trainer
builds its config once (rollouts.loss_config) with prefix 'rl.', so errors name the config field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from r1jax import grpo
from r1jax.grpo import masked_mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class LossConfig:
    """Every option of `policy_loss` (defaults TRL's); see the module docstrings for the symbols."""

    loss_type: str = "grpo"  # a SURROGATES name
    epsilon_low: float = 0.2  # eps_low
    epsilon_high: float = 0.2  # eps_high (DAPO clip-higher: 0.28); eps_max with 'cispo' (5.0)
    delta: float | None = None  # INTELLECT-2's upper clamp on the unclipped ratio (clipped surrogates); None/inf: off
    beta: float = 0.0  # beta, k3 KL coefficient
    kl_bias_correction: bool = False  # k3 times rho (DeepSeek-V3.2)
    importance_sampling_level: str = "token"  # 'token' | 'sequence' (GSPO)
    max_completion_length: int | None = None  # dr_grpo's constant normaliser
    sampler_is_correction: bool = True  # w = pi_old / pi_sampler on the policy term, when sampler log-probs are given
    sampler_is_mode: str = "sequence_mask"  # grpo.SAMPLER_IS_MODES
    sampler_is_clip_min: float | None = None  # C_min (None or 0: no lower bound)
    sampler_is_clip_max: float | None = 3.0  # C_max (None or inf: no upper bound)
    off_policy_mask_threshold: float | None = None  # delta of DeepSeek-V3.2 eq. 9 (None or inf: off)
    top_entropy_quantile: float = 1.0  # rho of "Beyond the 80/20 rule" (1: every token)
    sapo_temperature_pos: float = 1.0  # tau_pos
    sapo_temperature_neg: float = 1.05  # tau_neg
    vespo_k_pos: float = 2.0  # k (A >= 0)
    vespo_lambda_pos: float = 3.0  # lambda (A >= 0)
    vespo_k_neg: float = 3.0  # k (A < 0)
    vespo_lambda_neg: float = 2.0  # lambda (A < 0)
    entropy_coef: float = 0.0  # c_H, entropy bonus; the initial value under use_adaptive_entropy
    use_adaptive_entropy: bool = False  # Skywork-OR1's controller
    entropy_target: float = 0.2  # H_target (nats)
    entropy_coef_delta: float = 0.005  # the controller's step
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0

    @property
    def surrogate(self) -> Surrogate:
        return SURROGATES[self.loss_type]

    @property
    def has_entropy_bonus(self) -> bool:
        """Whether the loss holds the entropy term (adaptive control keeps it even at c_H = 0, as TRL)."""
        return self.entropy_coef != 0 or self.use_adaptive_entropy

    def validate(self, prefix: str = "") -> LossConfig:
        """Raises naming the field and value (`prefix`: 'rl.' in the trainer's config) on the first bad option;
        returns self. None and the no-op number mean the same for the optional bounds: sampler_is_clip_min None or 0,
        sampler_is_clip_max None or inf, off_policy_mask_threshold and delta None or inf."""
        _check_choices(self, prefix)
        _check_bounds(self, prefix)
        _check_extras(self, prefix)
        return self


def _check_choices(o: LossConfig, p: str) -> None:
    if o.loss_type not in SURROGATES:
        raise ValueError(f"{p}loss_type={o.loss_type!r}: expected one of {tuple(SURROGATES)}")
    if o.importance_sampling_level not in grpo.IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(
            f"{p}importance_sampling_level={o.importance_sampling_level!r}: expected one of "
            f"{grpo.IMPORTANCE_SAMPLING_LEVELS}"
        )
    if o.sampler_is_mode not in grpo.SAMPLER_IS_MODES:
        raise ValueError(f"{p}sampler_is_mode={o.sampler_is_mode!r}: expected one of {grpo.SAMPLER_IS_MODES}")
    mcl = o.max_completion_length
    if o.surrogate.aggregation == "dr_grpo" and (mcl is None or int(mcl) != mcl or mcl <= 0):
        raise ValueError(f"max_completion_length={mcl}: loss_type='dr_grpo' needs a positive int")


def _check_bounds(o: LossConfig, p: str) -> None:
    # 1 - epsilon_low is the lower ratio bound and must stay positive; 1 + epsilon_high < 2 keeps the trust region a
    # region (DAPO's clip-higher is 0.28).
    if not 0 < o.epsilon_low < 1:
        raise ValueError(f"{p}epsilon_low={o.epsilon_low}: must be in (0, 1)")
    if o.loss_type == "cispo":
        if not 1 <= o.epsilon_high < math.inf:
            raise ValueError(
                f"{p}epsilon_high={o.epsilon_high}: with loss_type='cispo' it is eps_max, the cap on the ratio "
                "itself (ScaleRL: 5.0); must be >= 1 and finite (below 1 it truncates every on-policy token)"
            )
    elif not 0 < o.epsilon_high < 1:
        raise ValueError(f"{p}epsilon_high={o.epsilon_high}: must be in (0, 1)")
    if not 0 <= o.beta < math.inf:
        raise ValueError(f"{p}beta={o.beta}: the KL coefficient must be >= 0 and finite")
    lo, hi = o.sampler_is_clip_min, o.sampler_is_clip_max
    if lo is not None and not 0 <= lo < math.inf:
        raise ValueError(f"{p}sampler_is_clip_min={lo}: C_min must be >= 0 and finite (or None)")
    if hi is not None and not hi > 0:
        raise ValueError(f"{p}sampler_is_clip_max={hi}: C_max must be > 0 (inf or None: no upper bound)")
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(f"{p}sampler_is_clip_min={lo} >= sampler_is_clip_max={hi}: need C_min < C_max")
    no_bound = (lo is None or lo == 0) and (hi is None or hi == math.inf)
    if o.sampler_is_correction and o.sampler_is_mode.endswith("_truncate") and no_bound:
        raise ValueError(
            f"{p}sampler_is_clip_min={lo}, {p}sampler_is_clip_max={hi}: sampler_is_mode="
            f"{o.sampler_is_mode!r} needs at least one bound (C_min > 0 or a finite C_max)"
        )
    if o.off_policy_mask_threshold is not None and not o.off_policy_mask_threshold >= 0:
        raise ValueError(f"{p}off_policy_mask_threshold={o.off_policy_mask_threshold}: delta must be >= 0 (or None)")
    if not 0 <= o.top_entropy_quantile <= 1:
        raise ValueError(f"{p}top_entropy_quantile={o.top_entropy_quantile}: rho must be in [0, 1]")
    for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
        if not 0 < (tau := getattr(o, name)) < math.inf:
            raise ValueError(f"{p}{name}={tau}: the temperature must be > 0 and finite")


def _check_extras(o: LossConfig, p: str) -> None:
    """The options of the variants added through the registry: delta, VESPO, the entropy bonus."""
    if _delta_on(o):
        if o.surrogate.loss is not clipped:
            raise ValueError(f"{p}delta={o.delta}: clamps the clipped surrogate's ratio; loss_type={o.loss_type!r}")
        if not o.delta > 1 + o.epsilon_high:
            raise ValueError(
                f"{p}delta={o.delta}: must be > 1 + epsilon_high = {1 + o.epsilon_high} (INTELLECT-2: 4), or inf/None"
            )
    for name in ("vespo_k_pos", "vespo_k_neg"):
        if not 0 <= (k := getattr(o, name)) < math.inf:
            raise ValueError(f"{p}{name}={k}: the power k must be >= 0 and finite")
    for name in ("vespo_lambda_pos", "vespo_lambda_neg"):
        if not 0 < (lam := getattr(o, name)) < math.inf:
            raise ValueError(f"{p}{name}={lam}: the decay lambda must be > 0 and finite")
    if o.loss_type == "vespo" and o.sampler_is_correction and o.sampler_is_mode.startswith("sequence"):
        raise ValueError(
            f"{p}sampler_is_mode={o.sampler_is_mode!r}: loss_type='vespo' takes the sampler correction into its "
            "sequence weight token by token; use 'token_truncate' or 'token_mask' (or turn the correction off)"
        )
    for name in ("entropy_coef", "entropy_target", "entropy_coef_delta", "entropy_coef_min", "entropy_coef_max"):
        if not math.isfinite(v := getattr(o, name)):
            raise ValueError(f"{p}{name}={v}: must be finite")
    if o.entropy_coef_delta < 0 or o.entropy_coef_min > o.entropy_coef_max:
        raise ValueError(
            f"{p}entropy_coef_delta={o.entropy_coef_delta}, {p}entropy_coef_min={o.entropy_coef_min}, "
            f"{p}entropy_coef_max={o.entropy_coef_max}: need delta >= 0 and min <= max"
        )


def _delta_on(cfg: LossConfig) -> bool:
    return cfg.delta is not None and cfg.delta < math.inf


# ----------------------------------------------------------------------------------------------------------------
# Surrogates: (cfg, SurrogateInputs) -> per-token (B, T) or per-sequence (B, 1) policy loss
# ----------------------------------------------------------------------------------------------------------------


class SurrogateInputs(NamedTuple):
    """What a surrogate may read. ratio: rho, (B, T) or (B, 1) by level; adv_b1: A (B, 1); logps_bt: log pi_theta
    (differentiated); log_ratio_bt: log pi_theta - log pi_old per token, 0 on padding; is_weights: the sampler
    correction's weights for surrogates that absorb them (else None)."""

    ratio: jax.Array
    adv_b1: jax.Array
    logps_bt: jax.Array
    log_ratio_bt: jax.Array
    on_bt: jax.Array
    m_bt: jax.Array
    is_weights: jax.Array | None


def clipped(cfg, x):
    """PPO's clipped surrogate (DeepSeekMath eq. 3), the unclipped ratio clamped at delta when set (INTELLECT-2)."""
    clipped_ratio = jnp.clip(x.ratio, 1 - cfg.epsilon_low, 1 + cfg.epsilon_high)
    ratio = jnp.minimum(x.ratio, cfg.delta) if _delta_on(cfg) else x.ratio
    return -jnp.minimum(ratio * x.adv_b1, clipped_ratio * x.adv_b1)


def cispo(cfg, x):
    """MiniMax-M1 eq. 4: the truncated ratio is a detached weight on the REINFORCE term A log pi_theta."""
    weight = jax.lax.stop_gradient(jnp.minimum(x.ratio, cfg.epsilon_high))
    return -weight * x.adv_b1 * jnp.where(x.on_bt, x.logps_bt, 0)


def sapo(cfg, x):
    """f(rho) = 4/tau sigmoid(tau (rho - 1)) has f(1) = 2/tau and slope 1 at rho = 1, like rho itself."""
    # TRL builds tau with torch.where on Python floats, i.e. in float32; rounding the same way keeps f64 parity.
    dtype = x.ratio.dtype
    pos, neg = jnp.float32(cfg.sapo_temperature_pos), jnp.float32(cfg.sapo_temperature_neg)
    tau = jnp.where(x.adv_b1 > 0, pos, neg).astype(dtype)
    return -jax.nn.sigmoid(tau * (x.ratio - 1)) * 4 / tau * x.adv_b1


def vespo_weights(cfg, x):
    """VESPO's phi(w) per sequence (B, 1), detached: w the sequence ratio, times the absorbed sampler weights."""
    lower = math.log(1e-8)  # TRL's floor on log w (and on log of a masked sampler weight, 0)
    log_w_b1 = jnp.sum(jnp.clip(jax.lax.stop_gradient(x.log_ratio_bt), -20.0, 20.0) * x.m_bt, -1, keepdims=True)
    if x.is_weights is not None:
        log_w_b1 = log_w_b1 + jnp.sum(jnp.clip(jnp.log(x.is_weights), lower, 20.0), -1, keepdims=True)
    log_w_b1 = jnp.clip(log_w_b1, lower, 20.0)
    dtype, nonneg = x.ratio.dtype, x.adv_b1 >= 0
    # float32 constants, as TRL's torch.where on Python floats
    k = jnp.where(nonneg, jnp.float32(cfg.vespo_k_pos), jnp.float32(cfg.vespo_k_neg)).astype(dtype)
    lam = jnp.maximum(jnp.where(nonneg, jnp.float32(cfg.vespo_lambda_pos), jnp.float32(cfg.vespo_lambda_neg)), 1e-4)
    lam = lam.astype(dtype)
    phi = jnp.exp(lam + k * log_w_b1 - lam * jnp.exp(log_w_b1))  # log phi = lambda + k log w - lambda w
    return jnp.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)


def vespo(cfg, x):
    """-sg(phi(w)) A log pi_theta: a smooth, asymmetric sequence weight instead of a clip."""
    return -vespo_weights(cfg, x) * x.adv_b1 * jnp.where(x.on_bt, x.logps_bt, 0)


def clip_metrics(cfg, x, frac):
    """Fractions clipped low (rho < 1-eps_low, A < 0), high (rho > 1+eps_high, A > 0) and either; rho after delta."""
    ratio = jax.lax.stop_gradient(jnp.minimum(x.ratio, cfg.delta) if _delta_on(cfg) else x.ratio)
    low = ((ratio < 1 - cfg.epsilon_low) & (x.adv_b1 < 0)).astype(ratio.dtype)
    high = ((ratio > 1 + cfg.epsilon_high) & (x.adv_b1 > 0)).astype(ratio.dtype)
    return {
        "clip_ratio/low_mean": frac(low),
        "clip_ratio/high_mean": frac(high),
        "clip_ratio/region_mean": frac(jnp.maximum(low, high)),
    }


def cispo_metrics(cfg, x, frac):
    ratio = jax.lax.stop_gradient(x.ratio)
    return {"cispo_clip_ratio": frac(((ratio > cfg.epsilon_high) & (x.adv_b1 > 0)).astype(ratio.dtype))}


def vespo_metrics(cfg, x, frac):
    return {"vespo/phi_seq_mean": jnp.mean(vespo_weights(cfg, x))}  # over sequences, as TRL


class Surrogate(NamedTuple):
    loss: Callable  # (cfg, SurrogateInputs) -> (B, T) or (B, 1)
    aggregation: str  # a grpo.AGGREGATIONS name
    metrics: Callable | None = None  # (cfg, SurrogateInputs, frac) -> dict, logged with the loss
    absorbs_is_weights: bool = False  # the sampler weights enter the surrogate instead of multiplying the loss


SURROGATES = {
    "grpo": Surrogate(clipped, "grpo", clip_metrics),
    "bnpo": Surrogate(clipped, "bnpo", clip_metrics),
    "dr_grpo": Surrogate(clipped, "dr_grpo", clip_metrics),
    "dapo": Surrogate(clipped, "dapo", clip_metrics),
    "luspo": Surrogate(clipped, "luspo", clip_metrics),
    "cispo": Surrogate(cispo, "dapo", cispo_metrics),
    "sapo": Surrogate(sapo, "grpo"),
    "vespo": Surrogate(vespo, "dapo", vespo_metrics, absorbs_is_weights=True),
}
LOSS_TYPES = tuple(SURROGATES)


# ----------------------------------------------------------------------------------------------------------------
# Corrections, entropy bonus, health metrics
# ----------------------------------------------------------------------------------------------------------------


def _sampler_weights(cfg, old_logps_bt, sampler_logps_bt, m_bt):
    bounds = dict(clip_min=cfg.sampler_is_clip_min, clip_max=cfg.sampler_is_clip_max)
    return grpo.sampler_importance_weights(old_logps_bt, sampler_logps_bt, m_bt, mode=cfg.sampler_is_mode, **bounds)


def _off_policy_on(cfg) -> bool:
    return cfg.off_policy_mask_threshold is not None and cfg.off_policy_mask_threshold < math.inf  # inf: as None


def apply_corrections(cfg, pg_loss_bt, x, advantages_b, old_logps_bt, sampler_logps_bt, entropy_bt, is_sampler):
    """The policy term times the off-policy mask, the entropy mask and the sampler weights (TRL's order), with their
    metrics. `is_sampler`: (weights, ratio) already computed for a surrogate that absorbs them, else None.
    Returns (pg_loss_bt, metrics, entropy mask or None)."""
    dtype, m_bt, metrics = pg_loss_bt.dtype, x.m_bt, {}
    opsm_b1 = ent_bt = None
    if _off_policy_on(cfg):
        behaviour_bt = old_logps_bt if sampler_logps_bt is None else sampler_logps_bt
        opsm_b1 = grpo.off_policy_sequence_mask(
            advantages_b, x.logps_bt, behaviour_bt, m_bt, cfg.off_policy_mask_threshold
        )
        pg_loss_bt = pg_loss_bt * opsm_b1
    if cfg.top_entropy_quantile < 1:
        ent_bt = grpo.high_entropy_mask(entropy_bt, m_bt, cfg.top_entropy_quantile)
        pg_loss_bt = pg_loss_bt * ent_bt.astype(dtype)
    if sampler_logps_bt is not None:
        metrics.update(grpo.logp_mismatch_metrics(old_logps_bt, sampler_logps_bt, m_bt))
        if cfg.sampler_is_correction:
            if is_sampler is None:
                is_sampler = _sampler_weights(cfg, old_logps_bt, sampler_logps_bt, m_bt)
                pg_loss_bt = pg_loss_bt * is_sampler[0].astype(dtype)
            metrics.update(grpo.importance_weight_metrics(*is_sampler, m_bt, mode=cfg.sampler_is_mode))
    metrics.update(grpo.selection_metrics(m_bt, off_policy_mask_b1=opsm_b1, entropy_mask_bt=ent_bt))
    return pg_loss_bt, metrics, ent_bt


@flax.struct.dataclass
class EntropyControl:
    """Adaptive entropy control's state (use_adaptive_entropy): c_H now and the entropy measured at the previous
    update (inf before the first, so no bonus applies until there is a measurement, as TRL)."""

    coef: jax.Array
    last_entropy: jax.Array


def initial_entropy_control(cfg: LossConfig, dtype=jnp.float32) -> EntropyControl:
    return EntropyControl(coef=jnp.asarray(cfg.entropy_coef, dtype), last_entropy=jnp.asarray(math.inf, dtype))


def update_entropy_control(cfg: LossConfig, ctrl: EntropyControl, entropy) -> EntropyControl:
    """One controller step (Skywork-OR1): c_H + delta when the measured entropy is <= H_target, else c_H - delta,
    kept in [entropy_coef_min, entropy_coef_max]."""
    up = jnp.minimum(ctrl.coef + cfg.entropy_coef_delta, cfg.entropy_coef_max)
    down = jnp.maximum(ctrl.coef - cfg.entropy_coef_delta, cfg.entropy_coef_min)
    return EntropyControl(coef=jnp.where(entropy <= cfg.entropy_target, up, down), last_entropy=entropy)


def entropy_bonus(cfg, entropy_bt, m_bt, ent_mask_bt, ctrl):
    """(c_H H, metrics): H the mean entropy over the tokens the policy term trains; c_H from `ctrl` when adaptive
    (0 unless the last measured entropy is <= H_target), else entropy_coef."""
    eff_bt = m_bt if ent_mask_bt is None else m_bt * ent_mask_bt.astype(m_bt.dtype)
    h = (entropy_bt * eff_bt).sum() / jnp.maximum(eff_bt.sum(), 1)
    if not cfg.use_adaptive_entropy:
        return cfg.entropy_coef * h, {"entropy_coef": jnp.asarray(cfg.entropy_coef, h.dtype)}
    ctrl = initial_entropy_control(cfg, h.dtype) if ctrl is None else ctrl
    coef = jnp.where(ctrl.last_entropy <= cfg.entropy_target, ctrl.coef, 0).astype(h.dtype)
    measured = jax.lax.stop_gradient(h)
    nxt = update_entropy_control(cfg, ctrl, measured)
    return coef * h, {"entropy_coef": nxt.coef, "entropy_bonus/entropy": measured}


def health_metrics(cfg, trainer_logps_bt, sampler_logps_bt, mask_bt, *, advantages_b=None, entropy_bt=None,
                   logps_bt=None):  # fmt: skip
    """All health metrics of one step as a flat dict, from the trainer's pi_old log-probs, the sampler's (None: the
    mismatch and weight metrics are left out) and the loss config. `logps_bt` is pi_theta for the off-policy mask
    (default: pi_old, the first of mu updates); the off-policy mask needs `advantages_b`, entropy selection
    `entropy_bt`. Equal to the entries `policy_loss` adds to its metrics."""
    out = {}
    if sampler_logps_bt is not None:
        out.update(grpo.logp_mismatch_metrics(trainer_logps_bt, sampler_logps_bt, mask_bt))
        if cfg.sampler_is_correction:
            w, ratio = _sampler_weights(cfg, trainer_logps_bt, sampler_logps_bt, mask_bt)
            out.update(grpo.importance_weight_metrics(w, ratio, mask_bt, mode=cfg.sampler_is_mode))
    opsm = ent = None
    if _off_policy_on(cfg) and advantages_b is not None:
        behaviour = trainer_logps_bt if sampler_logps_bt is None else sampler_logps_bt
        current = trainer_logps_bt if logps_bt is None else logps_bt
        opsm = grpo.off_policy_sequence_mask(advantages_b, current, behaviour, mask_bt, cfg.off_policy_mask_threshold)
    if cfg.top_entropy_quantile < 1 and entropy_bt is not None:
        ent = grpo.high_entropy_mask(entropy_bt, mask_bt, cfg.top_entropy_quantile)
    out.update(grpo.selection_metrics(mask_bt, off_policy_mask_b1=opsm, entropy_mask_bt=ent))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------------------------


def _check_arrays(cfg, logps_bt, old_logps_bt, ref_logps_bt, advantages_b, mask_bt, sampler_logps_bt, entropy_bt):
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
    if cfg.beta > 0 and ref_logps_bt is None:
        raise ValueError(f"beta={cfg.beta} > 0 needs ref_logps_bt (got None)")
    if cfg.top_entropy_quantile < 1 and entropy_bt is None:
        raise ValueError(f"top_entropy_quantile={cfg.top_entropy_quantile} < 1 needs entropy_bt (got None)")
    if cfg.has_entropy_bonus and entropy_bt is None:
        raise ValueError(f"entropy_coef={cfg.entropy_coef} (use_adaptive_entropy={cfg.use_adaptive_entropy}) needs "
                         "entropy_bt (got None)")  # fmt: skip


def policy_loss(cfg: LossConfig, logps_bt, old_logps_bt, ref_logps_bt, advantages_b, mask_bt, *,
                sampler_logps_bt=None, entropy_bt=None, entropy_control: EntropyControl | None = None):  # fmt: skip
    """GRPO-family policy loss (to minimise): cfg's surrogate x corrections + beta k3 KL, aggregated, minus the
    entropy bonus (module docstring).

    logps_bt: log pi_theta of the sampled tokens (B, T), the argument differentiated.
    old_logps_bt: log pi_old (B, T), or None on policy (mu = 1): then rho = 1 with gradient A grad log pi_theta.
    ref_logps_bt: log pi_ref (B, T); never read when beta == 0 (may be None).
    advantages_b: (B,) one advantage per completion (`grpo.group_advantages(...).reshape(-1)`).
    mask_bt: (B, T) bool or 0/1, True on completion tokens that count.
    sampler_logps_bt: (B, T) log-probs recorded by the sampler (`Rollout.logps_bt`), or None. Given, they feed the
      importance correction (when sampler_is_correction), the off-policy mask and the mismatch metrics.
    entropy_bt: (B, T) per-token entropy of pi_theta (the log-prob kernel's `return_entropy=True`); needed when
      top_entropy_quantile < 1 or with the entropy bonus (which differentiates it).
    entropy_control: the adaptive controller's state (None: its initial state).
    Returns (loss, metrics) with metrics: 'ratio_mean', 'pg_loss' (the policy term alone), 'tokens' (unmasked
    tokens); the surrogate's (clip fractions 'clip_ratio/{low,high,region}_mean', 'cispo_clip_ratio',
    'vespo/phi_seq_mean'); 'kl' when beta > 0 (masked token mean of the k3 term as it enters the loss); 'entropy_coef'
    with the bonus (after this update's controller step when adaptive, plus 'entropy_bonus/entropy'); and the
    entries of `health_metrics`. At token level the fractions are masked token means; at sequence level means over
    all B sequences (TRL's convention; fully masked rows count, with rho = 1).
    """
    cfg.validate()
    _check_arrays(cfg, logps_bt, old_logps_bt, ref_logps_bt, advantages_b, mask_bt, sampler_logps_bt, entropy_bt)
    spec, dtype = cfg.surrogate, logps_bt.dtype
    m_bt = jnp.asarray(mask_bt).astype(dtype)
    on_bt = m_bt > 0
    if old_logps_bt is None:
        old_logps_bt = jax.lax.stop_gradient(logps_bt)
    # Padding may hold anything (even -inf); zero the log-ratio there so exp never sees it and gradients stay 0.
    log_ratio_bt = jnp.where(on_bt, logps_bt - old_logps_bt, 0)
    if cfg.importance_sampling_level == "token":
        log_w = log_ratio_bt  # (B, T)
    else:
        log_w = (log_ratio_bt * m_bt).sum(-1, keepdims=True) / jnp.maximum(m_bt.sum(-1, keepdims=True), 1)  # (B, 1)
    ratio = jnp.exp(log_w)
    adv_b1 = advantages_b.astype(dtype)[:, None]
    is_sampler = None
    if spec.absorbs_is_weights and sampler_logps_bt is not None and cfg.sampler_is_correction:
        is_sampler = _sampler_weights(cfg, old_logps_bt, sampler_logps_bt, m_bt)
    is_weights = None if is_sampler is None else is_sampler[0]
    x = SurrogateInputs(ratio, adv_b1, logps_bt, log_ratio_bt, on_bt, m_bt, is_weights)

    pg_loss_bt = jnp.broadcast_to(spec.loss(cfg, x), logps_bt.shape)
    pg_loss_bt, metrics, ent_bt = apply_corrections(
        cfg, pg_loss_bt, x, advantages_b, old_logps_bt, sampler_logps_bt, entropy_bt, is_sampler
    )
    per_token_loss_bt = pg_loss_bt
    if cfg.beta > 0:
        kl_bt = grpo.k3_kl(ref_logps_bt, logps_bt, on_bt)
        if cfg.kl_bias_correction:
            kl_bt = kl_bt * ratio
        per_token_loss_bt = per_token_loss_bt + cfg.beta * kl_bt
        metrics["kl"] = masked_mean(kl_bt, m_bt)
    agg = dict(aggregation=spec.aggregation, max_completion_length=cfg.max_completion_length)
    loss = grpo.aggregate_loss(per_token_loss_bt, m_bt, **agg)
    if cfg.has_entropy_bonus:
        bonus, bonus_metrics = entropy_bonus(cfg, entropy_bt, m_bt, ent_bt, entropy_control)
        loss = loss - bonus
        metrics.update(bonus_metrics)

    frac = (lambda v: masked_mean(v, m_bt)) if cfg.importance_sampling_level == "token" else jnp.mean
    if spec.metrics is not None:
        metrics.update(spec.metrics(cfg, x, frac))
    metrics["ratio_mean"] = frac(jax.lax.stop_gradient(ratio))
    metrics["pg_loss"] = jax.lax.stop_gradient(grpo.aggregate_loss(pg_loss_bt, m_bt, **agg))
    metrics["tokens"] = m_bt.sum()
    return loss, metrics
