"""GRPO trainer: R1-Zero (stage 1), reasoning RL (stage 3) and all-scenario RL (stage 5).

One step, top to bottom (paper section 2.2.1, eq. 1-3):

    P prompts (grain) ─► sample G completions each (shared prefill, KV cache)      rollout.tokens (B = P·G, Tc)
      ─► host: decode, rule / model rewards in parallel                            rewards_pg, valid_pg
      ─► group advantages A_i = (r_i − mean r) / (std r + eps)                      adv_b
      ─► old log-probs (μ > 1) and reference log-probs (β > 0), one forward each    old_logps_bt, ref_logps_bt
      ─► μ × train_step: policy loss (clip / CISPO / SAPO; sampler importance       state
         corrections, off-policy and entropy masks), k3 KL, aggregation, AdamW

`rl_step` is these five lines; its pieces live in r1jax/rollouts.py (sampling rounds, group selection, the step
builder) and the loop around it (restore, preemption, metrics, checkpoint cadence, export) is r1jax/trainers/loop.py.
Device work is jitted once with explicit shardings over the ('data', 'fsdp', 'tensor') mesh; the host touches
text and rewards once per step. Checkpoints hold params, optimizer state, rng, step and the data iterator.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import evals, rollouts, sharding, train_state
from r1jax import metrics as metrics_lib
from r1jax.data.pipeline import make_prompt_iterator
from r1jax.data.sources import PromptFields
from r1jax.rewards.routing import make_rewards
from r1jax.trainers import common
from r1jax.trainers.grpo_config import (  # noqa: F401  (the config API, re-exported for experiment files)
    check_context,
    checkpoint_config,
    data_config,
    eval_config,
    grpo_config,
    model_max_seq_len,
    rewards_config,
    rl_config,
    sampling_config,
    validate,
)
from r1jax.trainers.loop import TrainLoop

# Settings that must match when a run resumes from a checkpoint (the model's shape is checked as well).
IDENTITY_KEYS = [
    "rl.group_size", "rl.prompts_per_step", "model.preset", "model.checkpoint", "data.task", "data.train_files",
    "data.difficulty", "data.train_seed", "seed",
]

# ---------------------------------------------------------------------------------------------------------------
# One step


def rl_step(c, state, ref_params, sampler: rollouts.PromptSampler, grpo_step: rollouts.GRPOStep, rng, grad_scale):
    """One GRPO step: rollout → reward → advantage → log-probs → μ updates. Returns (state, records, metrics)."""
    rl = c.rl
    t = {"t0": time.perf_counter()}
    rounds, reward_stats, t["sampled"] = rollouts.sample_rounds(  # rollout and reward (DAPO: more rounds)
        sampler, state.params, rng, dynamic_sampling=rl.dynamic_sampling, max_resample_rounds=rl.max_resample_rounds
    )
    t["rewarded"] = time.perf_counter()
    records, batch, summary = rollouts.assemble_batch(  # group advantages over every process's rewards
        c, rounds, sampler.mesh, grpo_step.batch_shardings, grad_scale=grad_scale
    )
    batch = rollouts.add_policy_logps(batch, grpo_step.logps, state.params, ref_params, mu=rl.mu, beta=rl.beta)
    t["logps"] = time.perf_counter()
    for _ in range(rl.mu):  # μ updates on the same batch: the ratio moves away from 1 after the first
        state, m = grpo_step.train_step(state, batch)
    jax.block_until_ready(state)
    t["trained"] = time.perf_counter()
    return state, records, rollouts.step_metrics(m, reward_stats, summary, len(rounds), t)


# ---------------------------------------------------------------------------------------------------------------
# The loop


def train(config, workdir: str) -> dict:
    """Runs (or resumes) a GRPO experiment in `workdir`; returns the final metrics."""
    validate(config)
    reward_fn = make_rewards(config.rewards, config.response_prefix, config.sampling.max_new_tokens)
    try:
        return _train(config, workdir, reward_fn)
    finally:
        reward_fn.close()  # reward worker processes and threads end with the run, however it ends


def _train(config, workdir: str, reward_fn) -> dict:
    c, rl = config, config.rl
    if model_max_seq_len(c.model) is not None:
        check_context(c, model_max_seq_len(c.model))
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(c.mesh.shape)
    train_records, eval_records, task = rollouts.load_splits(c, workdir)  # also writes WORKDIR/data_manifest.jsonl
    model, tokenizer = train_state.build_model(c.model, c.seed, c.tokenizer.path)
    check_context(c, model.cfg.max_seq_len)

    optimizer = train_state.make_optimizer(c.optim, rl.num_steps * rl.mu)
    graphdef, state, state_shardings = train_state.create_train_state(model, optimizer, mesh, c.seed)
    # π_ref is the starting policy, a copy: the step donates `state`, never the reference
    ref_params = jax.tree.map(jnp.copy, state.params) if rl.beta > 0 else None
    # Every process draws the same global batches of P prompts and keeps the rows its devices hold (see
    # r1jax/distributed.py), so the data order, and a checkpoint's iterator state, do not depend on the process count.
    data_it, _ = make_prompt_iterator(
        train_records, batch_size=rl.prompts_per_step, seed=c.seed, on_error=c.data.on_error,
        fields=None if c.data.train_files else PromptFields(extras=("task", "meta")), shard_index=0, shard_count=1,
    )
    identity = common.run_identity(c, IDENTITY_KEYS)
    identity["model_shape"] = common.model_identity(model.cfg)
    loop = TrainLoop(
        workdir, c.checkpoint, identity, rl.num_steps, desc="grpo", log_every=c.log_every,
        postfix={"reward": "rl/reward_mean", "len": "rl/completion_length_mean"},
        max_consecutive_nonfinite=c.optim.max_consecutive_nonfinite, max_time_s=rl.max_time_s,
        stop_after_steps=c.debug.stop_after_steps,
    )
    state = loop.restore(state, state_shardings, data_it)
    ledger_path = os.path.join(
        workdir, "ledger.jsonl" if jax.process_count() == 1 else f"ledger.{jax.process_index()}.jsonl"
    )
    common.drop_records_after(ledger_path, loop.start_step)  # the prompt ids of steps this run redoes

    sampler = rollouts.PromptSampler.from_config(c, graphdef, tokenizer, data_it, reward_fn, mesh)
    grpo_step = rollouts.make_grpo_step(c, graphdef, optimizer, mesh, state_shardings)
    evaluator = evals.Evaluator.from_config(c, graphdef, tokenizer, eval_records, task, mesh)
    base_rng = jax.random.wrap_key_data(jax.device_get(state.rng))
    nan_steps = set(int(s) for s in c.debug.inject_nan_steps)
    final_eval = {}
    with loop:
        for step in loop.steps():
            done = step - 1  # steps finished before this one: the rng and debug.inject_nan_steps count these
            state, records, m = rl_step(
                c, state, ref_params, sampler, grpo_step, jax.random.fold_in(base_rng, done),
                grad_scale=np.nan if done in nan_steps else 1.0,
            )
            with open(ledger_path, "a") as f:
                f.write(json.dumps({"step": step, "ids": [r["id"] for r in records]}) + "\n")
            if c.eval.every and step % c.eval.every == 0 and step < rl.num_steps:
                m.update(_scalars(evaluator(state.params)))
            if c.debug.step_sleep_s:
                time.sleep(c.debug.step_sleep_s)
            loop.end_step(step, state, m, data_it.get_state)
        if not loop.preempted:
            final_eval = evaluator(state.params)
            loop.write(loop.step, _scalars(final_eval))
    if loop.preempted:
        return {"preempted_at": loop.step, **loop.metrics}
    metrics_lib.plot_curves(
        metrics_lib.read_history(workdir), ["rl/reward_mean", "eval/pass@1", "rl/completion_length_mean"],
        os.path.join(workdir, "curves.png"), title="GRPO",
    )
    if c.export:
        loop.export(graphdef, state.params, tokenizer)
    return {**loop.metrics, **{f"eval/{k}": v for k, v in final_eval.items()}}


def _scalars(eval_metrics: dict) -> dict:
    """An evaluation's scalar metrics as `eval/...` (intervals and per-prompt arrays are left out)."""
    return {f"eval/{k}": v for k, v in eval_metrics.items() if np.ndim(v) == 0}
