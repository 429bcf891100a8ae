"""GRPO trainer: R1-Zero (stage 1), reasoning RL (stage 3) and all-scenario RL (stage 5).

One step, top to bottom (paper section 2.2.1, eq. 1-3):

    P prompts (grain) ─► sample G completions each (shared prefill, KV cache)      rollout.tokens (B = P·G, Tc)
      ─► host: decode, rule / model rewards in parallel                            rewards_pg, valid_pg
      ─► group advantages A_i = (r_i − mean r) / (std r + eps)                      adv_b
      ─► old log-probs (μ > 1) and reference log-probs (β > 0), one forward each    old_logps_bt, ref_logps_bt
      ─► μ × train_step: policy loss (clip / CISPO / SAPO; sampler importance       state
         corrections, off-policy and entropy masks), k3 KL, aggregation, AdamW

`rl_step` is these lines (`draw_pending`, then `learn_step`); their pieces live in r1jax/rollouts.py (sampling
rounds, group selection, the step builder) and the loop around them (restore, preemption, metrics, checkpoint
cadence, export) is r1jax/trainers/loop.py. Device work is jitted once with explicit shardings over the
('data', 'fsdp', 'tensor') mesh; the host touches text and rewards once per step. Checkpoints hold params,
optimizer state, rng, step and the data iterator.

Asynchronous rollouts (`rl.max_staleness` = s > 0): step t trains on rollouts sampled with the parameters after
max(0, t − 1 − s) updates; while its updates run on the devices, the host samples and scores step t + s with
the current parameters (a copy; on `rl.sampler_devices` of their own, or on the trainer's). Nothing runs in a
second thread: the overlap is JAX's asynchronous dispatch, so every process issues the same programs in the same
order. Step t's key is fold_in(rng, t − 1) whenever it is drawn, and the rollouts waiting for later steps are
checkpointed with the data iterator (rollouts.RolloutQueue): resume is exact. s = 0 is the synchronous trainer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

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
    "data.difficulty", "data.train_seed", "seed", "rl.max_staleness", "rl.sampler_devices", "rl.sampler_dtype",
]

# ---------------------------------------------------------------------------------------------------------------
# One step


def rl_step(c, state, ref_params, sampler: rollouts.PromptSampler, grpo_step: rollouts.GRPOStep, rng, grad_scale):
    """One synchronous GRPO step: rollout → reward → advantage → log-probs → μ updates. Returns (state, records,
    metrics)."""
    t0 = time.perf_counter()
    pending = rollouts.draw_pending(sampler, state.params, rng, c.rl)  # rollout and reward (DAPO: more rounds)
    return learn_step(c, state, ref_params, pending, grpo_step, grad_scale, t0=t0)


def learn_step(c, state, ref_params, pending: rollouts.Pending, grpo_step, grad_scale, *, t0, meanwhile=None):
    """advantage → log-probs → μ updates on rollouts already sampled and scored; `meanwhile()` runs on the host
    while the updates run on the devices (the next rollouts, rl.max_staleness > 0) and returns its Pending."""
    rl = c.rl
    t1 = time.perf_counter()
    records, batch, summary = rollouts.assemble_batch(  # group advantages over every process's rewards
        c, pending.rounds, grpo_step.mesh, grpo_step.batch_shardings, grad_scale=grad_scale
    )
    batch = rollouts.add_policy_logps(batch, grpo_step.logps, state.params, ref_params, mu=rl.mu, beta=rl.beta)
    t2 = time.perf_counter()
    for _ in range(rl.mu):  # μ updates on the same batch: the ratio moves away from 1 after the first
        state, m = grpo_step.train_step(state, batch)
    drawn = meanwhile() if meanwhile is not None else pending
    jax.block_until_ready(state)
    t3 = time.perf_counter()
    seconds = {"step": t3 - t0, "sample": drawn.sample_s, "reward": drawn.reward_s, "logps": t2 - t1, "train": t3 - t2}
    return state, records, rollouts.step_metrics(m, pending.reward_stats, summary, len(pending.rounds), seconds)


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


@dataclasses.dataclass
class Run:
    """Everything one GRPO run holds between steps, built by `setup` (restored from WORKDIR when it has a
    checkpoint): the loop, the state, the sampler and where it reads the parameters, the jitted step."""

    loop: TrainLoop
    state: Any
    ref_params: Any
    sampler: rollouts.PromptSampler
    placement: rollouts.SamplerPlacement
    queue: rollouts.RolloutQueue
    grpo_step: rollouts.GRPOStep
    evaluator: Any  # None with eval.num_prompts = 0
    graphdef: Any
    tokenizer: Any
    base_rng: Any
    ledger_path: str


def setup(c, workdir: str, reward_fn) -> Run:
    rl = c.rl
    if model_max_seq_len(c.model) is not None:
        check_context(c, model_max_seq_len(c.model))
    os.makedirs(workdir, exist_ok=True)
    # rl.sampler_devices > 0: the last N devices sample, mesh.shape spreads the trainer over the others
    mesh = sharding.make_mesh(c.mesh.shape, devices=jax.devices()[: jax.device_count() - rl.sampler_devices])
    train_records, eval_records, task = rollouts.load_splits(c, workdir)  # also writes WORKDIR/data_manifest.jsonl
    model, tokenizer = train_state.build_model(c.model, c.seed, c.tokenizer.path)
    check_context(c, model.cfg.max_seq_len)

    optimizer = train_state.make_optimizer(c.optim, rl.num_steps * rl.mu)
    graphdef, state, state_shardings = train_state.create_train_state(model, optimizer, mesh, c.seed)
    placement = rollouts.sampler_placement(c, model, graphdef, mesh)
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
    queue = rollouts.RolloutQueue(data_it)  # rollouts sampled ahead (rl.max_staleness > 0) are checkpointed with it
    state = loop.restore(state, state_shardings, queue)
    ledger_path = os.path.join(
        workdir, "ledger.jsonl" if jax.process_count() == 1 else f"ledger.{jax.process_index()}.jsonl"
    )
    common.drop_records_after(ledger_path, loop.start_step)  # the prompt ids of steps this run redoes
    return Run(
        loop, state, ref_params,
        rollouts.PromptSampler.from_config(c, placement.graphdef, tokenizer, queue, reward_fn, placement.mesh),
        placement, queue, rollouts.make_grpo_step(c, graphdef, optimizer, mesh, state_shardings),
        evals.Evaluator.from_config(c, graphdef, tokenizer, eval_records, task, mesh) if c.eval.num_prompts else None,
        graphdef, tokenizer,
        jax.random.wrap_key_data(jax.device_get(state.rng)), ledger_path,
    )


def _train(c, workdir: str, reward_fn) -> dict:
    rl = c.rl
    run = setup(c, workdir, reward_fn)
    loop, state, queue = run.loop, run.state, run.queue
    nan_steps = set(int(s) for s in c.debug.inject_nan_steps)
    final_eval = {}
    lag = rl.max_staleness

    def draw(j, params_s, version):  # step j's rollouts, sampled with the parameters after `version` updates
        key = jax.random.fold_in(run.base_rng, j - 1)
        queue.pending.append(rollouts.draw_pending(run.sampler, params_s, key, rl, step=j, version=version))
        return queue.pending[-1]

    with loop:
        for step in loop.steps():
            done = step - 1  # steps finished before this one: the rng and debug.inject_nan_steps count these
            t0 = time.perf_counter()
            params_s = run.placement(state.params)  # the sampler's view of the parameters after `done` updates
            # synchronous (lag 0): this step's rollouts now; asynchronous (lag s): steps up to t + s - 1 are waiting
            # (a fresh run samples them from the initial parameters), and step t + s is sampled while t trains
            while queue.last_step < min(step + max(lag - 1, 0), rl.num_steps):
                draw(queue.last_step + 1 if queue.pending else step, params_s, done)
            pending = queue.pending.popleft()
            assert pending.step == step, (pending.step, step)
            ahead = step + lag
            meanwhile = functools.partial(draw, ahead, params_s, done) if lag and ahead <= rl.num_steps else None
            state, records, m = learn_step(
                c, state, run.ref_params, pending, run.grpo_step, grad_scale=np.nan if done in nan_steps else 1.0,
                t0=t0, meanwhile=meanwhile,
            )
            m["rl/staleness"] = float(done - pending.version)  # updates between sampling and training
            with open(run.ledger_path, "a") as f:
                f.write(json.dumps({"step": step, "ids": [r["id"] for r in records]}) + "\n")
            if run.evaluator and c.eval.every and step % c.eval.every == 0 and step < rl.num_steps:
                m.update(_scalars(run.evaluator(state.params)))
            if c.debug.step_sleep_s:
                time.sleep(c.debug.step_sleep_s)
            loop.end_step(step, state, m, queue.get_state)
        if not loop.preempted and run.evaluator:
            final_eval = run.evaluator(state.params, return_per_prompt=True)  # per-prompt sums: seeds pool them
            loop.write(loop.step, _scalars(final_eval))
    if loop.preempted:
        return {"preempted_at": loop.step, **loop.metrics}
    metrics_lib.plot_curves(
        metrics_lib.read_history(workdir), ["rl/reward_mean", "eval/pass@1", "rl/completion_length_mean"],
        os.path.join(workdir, "curves.png"), title="GRPO",
    )
    if c.export:
        loop.export(run.graphdef, state.params, run.tokenizer)
    return {**loop.metrics, **{f"eval/{k}": v for k, v in final_eval.items()}}


def _scalars(eval_metrics: dict) -> dict:
    """An evaluation's scalar metrics as `eval/...` (intervals and per-prompt arrays are left out)."""
    return {f"eval/{k}": v for k, v in eval_metrics.items() if not isinstance(v, dict) and np.ndim(v) == 0}
