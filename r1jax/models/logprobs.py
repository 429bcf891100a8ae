"""The policy's log-prob forward: log π(token) from the model's hidden states and the fused grouped log-prob kernel
(`r1jax.kernels.grouped_logprob`, which never materialises the (B·T, V) logits except in its 'xla' oracle).

Two shapes of batch, one function each, called by every trainer that needs log-probs:

  `sequence_logps`   rows [left-padded prompt ; completion], log-probs of the completion tokens: the GRPO loss, its
                     old / reference log-probs, and `completion_logps` (a `Rollout`'s tokens, the sampler's check).
                     With `group_size` G each group's shared prompt runs once into a KV cache.
  `token_logps`      the target token at every position of packed rows (several sequences per row, segment ids,
                     positions restarting per segment; `packed_hidden`): SFT and distillation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from r1jax.kernels.grouped_logprob.api import grouped_logprob
from r1jax.models.transformer import KVCache


def model_ids(tokens, mask):
    """Token ids fed to the model: padding becomes id 0, so a pad_id outside the vocabulary cannot put NaN
    embeddings into masked keys (a masked key has weight 0, but 0 * NaN is NaN)."""
    return jnp.where(mask, tokens, 0)


def sequence_logps(
    model, tokens_bs, mask_bs, completion_bt, *, temperature: float = 1.0, implementation: str = "auto",
    return_entropy: bool = False, group_size: int = 1, mesh=None,
):
    """log pi of the last Tc tokens of each [left-padded prompt ; completion] row (B, S).

    The one code path for completion log-probs: `completion_logps` (the sampler's check) and the GRPO loss call it,
    so sampler and trainer agree on log-probs by construction. Uses r1jax.kernels' fused grouped log-prob, which
    never materialises the (B·Tc, V) logits ('xla' does, as the oracle). Returns logps_bt (and entropy_bt).

    `group_size=1`: one no-cache forward over the B rows. `group_size=G > 1` (GRPO's batches: every G consecutive
    rows are one prompt's samples, so their first S − Tc tokens are the same): each prompt runs once, into a KV
    cache, and its G completions run against copies of that cache, like the sampler's shared prefill. The prompt's
    forward and backward then cost P rows instead of P·G; the gradient through the copies is the sum over the
    group, so values and gradients equal the plain forward's up to float rounding (`tests/test_sampling.py`).
    The rows' prompts are not checked for equality here: the caller guarantees it. `mesh`: the mesh the caller
    compiles for; the kernel's implementation follows its devices, and Pallas kernels run in shard_map over it.
    """
    tc = completion_bt.shape[1]
    if group_size > 1:
        h_btd = _shared_prompt_hidden(model, tokens_bs, mask_bs, tc, group_size)
    else:
        hidden_bsd, _ = model(model_ids(tokens_bs, mask_bs), mask_bt=mask_bs)
        h_btd = hidden_bsd[:, -tc - 1 : -1]  # the position before each completion token predicts it
    h_btd, w_dv = h_btd.astype(model.cfg.dtype), model.lm_head_weight().astype(model.cfg.dtype)
    options = dict(temperature=temperature, return_entropy=return_entropy, implementation=implementation, mesh=mesh)
    return grouped_logprob(h_btd, w_dv, completion_bt, **options)


def _shared_prompt_hidden(model, tokens_bs, mask_bs, tc: int, g: int):
    """Hidden states (B, Tc, D) predicting the completion tokens, each group's prompt run once (see above)."""
    b, s = tokens_bs.shape
    if b % g:
        raise ValueError(f"group_size={g} does not divide the batch's {b} rows")
    tp = s - tc
    prompt_pt, pmask_pt = tokens_bs[::g, :tp], mask_bs[::g, :tp]
    comp_bt, cmask_bt = tokens_bs[:, tp:], mask_bs[:, tp:]
    cache = KVCache.init(model.cfg, b // g, s)
    remat = model.cfg.remat  # a training forward: recompute blocks in the backward like the no-cache path
    hidden_ptd, cache = model(model_ids(prompt_pt, pmask_pt), mask_bt=pmask_pt, cache=cache, remat=remat)
    hidden_btd, _ = model(model_ids(comp_bt, cmask_bt), mask_bt=cmask_bt, cache=cache.repeat(g), remat=remat)
    # the prompt's last position (left padding: the last column) predicts the first completion token
    last_b1d = jnp.repeat(hidden_ptd[:, -1:], g, axis=0)
    return jnp.concatenate([last_b1d, hidden_btd[:, :-1]], axis=1)


def completion_logps(
    model_or_graphdef, params, rollout, *, temperature: float = 1.0, implementation: str = "xla"
) -> jax.Array:
    """log pi(completion token | prompt, earlier tokens) (B, T) f32, 0 where the completion mask is 0, of the rows
    of a `r1jax.sampling.Rollout` (read through its fields: this layer does not import the sampler).

    `sequence_logps` over [left-padded prompt ; completion] with the sampler's mask and position convention, so at
    temperature T (no truncation) it reproduces the sampler's log-probs. Pure and differentiable in params.
    `params=None` with a model uses the model's own.
    """
    model = _as_model(model_or_graphdef, params)
    tokens_bs = jnp.concatenate([rollout.prompt_tokens_pt[rollout.group_b], rollout.completion_tokens_bt], axis=1)
    mask_bs = jnp.concatenate([rollout.prompt_mask_pt[rollout.group_b], rollout.completion_mask_bt], axis=1)
    logps_bt = sequence_logps(
        model, tokens_bs, mask_bs, rollout.completion_tokens_bt, temperature=temperature,
        implementation=implementation,
    )
    return jnp.where(rollout.completion_mask_bt, logps_bt, 0.0)


def _as_model(model_or_graphdef, params):
    """The model itself (params=None), or the module / GraphDef merged with the given params State."""
    if params is None:
        return model_or_graphdef
    graphdef = nnx.split(model_or_graphdef)[0] if isinstance(model_or_graphdef, nnx.Module) else model_or_graphdef
    return nnx.merge(graphdef, params)


def packed_hidden(model, tokens_bt, segment_ids_bt, positions_bt):
    """Hidden states (B, T, D) of packed rows: each segment attends only within itself (segment id 0 is padding)
    and its positions restart at 0, so a row holds several independent sequences."""
    hidden_btd, _ = model(
        tokens_bt, mask_bt=segment_ids_bt > 0, positions_bt=positions_bt, segment_ids_bt=segment_ids_bt
    )
    return hidden_btd


def token_logps(model, hidden_btd, targets_bt, *, implementation: str = "auto", mesh=None):
    """log π(target) at every position (B, T) f32 at temperature 1: the next-token log-likelihood of packed rows
    (SFT's and distillation's NLL). Unlike `sequence_logps` the hidden states and the LM head enter the kernel in
    their own dtypes (the head in param_dtype), as the supervised trainers have always computed it. `mesh` as in
    `sequence_logps`."""
    return grouped_logprob(hidden_btd, model.lm_head_weight(), targets_bt, implementation=implementation, mesh=mesh)
