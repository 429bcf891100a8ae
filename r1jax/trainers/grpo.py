"""GRPO trainer: R1-Zero (stage 1), reasoning RL (stage 3) and all-scenario RL (stage 5).

One step, top to bottom (paper section 2.2.1, eq. 1-3):

    P prompts (grain) ─► sample G completions each (shared prefill, KV cache)      rollout.tokens (B = P·G, Tc)
      ─► host: decode, rule / model rewards in parallel                            rewards_pg, valid_pg
      ─► group advantages A_i = (r_i − mean r) / (std r + eps)                      adv_b
      ─► old log-probs (μ > 1) and reference log-probs (β > 0), one forward each    old_logps_bt, ref_logps_bt
      ─► μ × train_step: clipped ratio, k3 KL, aggregation by loss_type, AdamW     state

Device work is jitted once with explicit shardings over the ('data', 'fsdp', 'tensor') mesh; the host touches
text and rewards once per step. Checkpoints hold params, optimizer state, rng, step and the data iterator.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import checkpoint as ckpt_lib
from r1jax import distributed, grpo, sampling, sharding
from r1jax import metrics as metrics_lib
from r1jax.data import preferences
from r1jax.data import tasks as tasks_lib
from r1jax.data.pipeline import make_prompt_iterator
from r1jax.data.sources import PromptFields, load_prompts
from r1jax.rewards.routing import RoutedRewards, make_rewards  # noqa: F401  (RoutedRewards: part of the API)
from r1jax.tokenizer import apply_template
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

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Data


def load_splits(c):
    """(train records, eval records, task) — built-in task prompts, or local files scored by `data.task`."""
    task = tasks_lib.get_task(c.data.task)
    fields = PromptFields(question=c.data.question_field, answer=c.data.answer_field, id=c.data.id_field)
    if c.data.train_files:
        train = load_prompts(list(c.data.train_files), fields, on_error=c.data.on_error)
    else:
        generated = task.generate(c.data.num_train, seed=c.data.train_seed, difficulty=c.data.difficulty)
        train = [e.to_dict() for e in generated]
    if c.data.num_general:
        train = list(train) + preferences.general_records(c.data.num_general, seed=c.data.general_seed)
    if c.data.eval_files:
        evals = list(load_prompts(list(c.data.eval_files), fields, on_error=c.data.on_error))
    else:
        generated = task.generate(c.data.num_eval, seed=c.data.eval_seed, difficulty=c.data.difficulty)
        evals = [e.to_dict() for e in generated]
    return train, evals, task


def encode_prompts(tokenizer, records, template: str, response_prefix: str, max_len: int) -> list[list[int]]:
    texts = [apply_template(r["question"], template) + response_prefix for r in records]
    ids = tokenizer.encode_batch(texts)
    for r, x in zip(records, ids):
        if len(x) > max_len:
            raise ValueError(
                f"prompt {r['id']!r} has {len(x)} tokens > sampling.max_prompt_len={max_len}"
            )
    return ids


# ---------------------------------------------------------------------------------------------------------------
# Device functions


def completion_logps(graphdef, params, batch, *, temperature, implementation, entropy=False):
    """log π(token) of each completion token (B, Tc), through the sampler's own code path."""
    return sampling.sequence_logps(
        common.merge(graphdef, params), batch["tokens_bs"], batch["mask_bs"], batch["completion_bt"],
        temperature=temperature, implementation=implementation, return_entropy=entropy,
    )


def train_step(state, batch, *, graphdef, optimizer, loss_kw, temperature, implementation):
    """One optimizer update on a rollout batch. Pure; jitted once with the state donated."""

    def loss_fn(params):
        logps_bt, entropy_bt = completion_logps(
            graphdef, params, batch, temperature=temperature, implementation=implementation, entropy=True
        )
        loss, m = grpo.policy_loss(
            logps_bt, batch.get("old_logps_bt"), batch.get("ref_logps_bt"), batch["advantages_b"],
            batch["loss_mask_bt"], **loss_kw,
        )
        m["entropy"] = grpo.masked_mean(jax.lax.stop_gradient(entropy_bt), batch["loss_mask_bt"])
        return loss, m

    (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, upd = common.apply_gradients(state, grads, loss, optimizer, batch["grad_scale"])
    out = {f"rl/{k}": v for k, v in m.items()}
    out.update(upd)
    out["rl/loss"] = loss
    out["train/nonfinite_total"] = state.nonfinite_total
    return state, out


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
    c = config
    if model_max_seq_len(c.model) is not None:
        check_context(c, model_max_seq_len(c.model))
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(c.mesh.shape)
    train_records, eval_records, task = load_splits(c)
    model, tokenizer = common.build_model(c.model, c.seed, c.tokenizer.path)
    check_context(c, model.cfg.max_seq_len)
    implementation = c.kernels.implementation
    rl, G, P = c.rl, c.rl.group_size, c.rl.prompts_per_step

    optimizer = common.make_optimizer(c.optim, rl.num_steps * rl.mu)
    graphdef, state, state_shardings = common.create_train_state(model, optimizer, mesh, c.seed)
    ref_params = state.params if rl.beta > 0 else None  # never donated: the step donates `state` only
    if ref_params is not None:
        ref_params = jax.tree.map(jnp.copy, ref_params)
    # Every process draws the same global batches of P prompts and keeps the rows its devices hold (see
    # r1jax/distributed.py), so the data order, and a checkpoint's iterator state, do not depend on the process count.
    data_it, data_stats = make_prompt_iterator(
        train_records, batch_size=P, seed=c.seed, on_error=c.data.on_error,
        fields=None if c.data.train_files else PromptFields(extras=("task", "meta")), shard_index=0, shard_count=1,
    )
    local_prompts = distributed.local_batch_slice(mesh, P)
    local_rows = distributed.local_batch_slice(mesh, P * G)
    p_local = local_prompts.stop - local_prompts.start

    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=c.checkpoint.max_to_keep,
        async_save=c.checkpoint.async_save, on_save_error=c.checkpoint.on_save_error,
    )
    identity = common.run_identity(
        c, ["rl.group_size", "rl.prompts_per_step", "model.preset", "model.checkpoint", "data.task",
            "data.train_files", "data.difficulty", "data.train_seed", "seed"]
    )
    identity["model_shape"] = common.model_identity(model.cfg)
    state, data_state, start_step = common.restore_or_start(
        checkpointer, state, state_shardings, identity, c.checkpoint.restart_from_weights
    )
    if data_state is not None:
        data_it.set_state(data_state)

    sample_cfg = sampling.SamplingConfig(
        num_samples=G, max_new_tokens=c.sampling.max_new_tokens, temperature=c.sampling.temperature,
        top_p=c.sampling.top_p, top_k=c.sampling.top_k, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
        prompt_bucket=c.sampling.prompt_bucket,
    )
    loss_kw = dict(
        loss_type=rl.loss_type, epsilon_low=rl.epsilon_low, epsilon_high=rl.epsilon_high, beta=rl.beta,
        max_completion_length=c.sampling.max_new_tokens, kl_bias_correction=rl.kl_bias_correction,
        importance_sampling_level=rl.importance_sampling_level,
    )
    step_fn = functools.partial(
        train_step, graphdef=graphdef, optimizer=optimizer, loss_kw=loss_kw,
        temperature=c.sampling.temperature, implementation=implementation,
    )
    batch_sh = sharding.batch_sharding(mesh, 2)
    batch_shardings = {
        "tokens_bs": batch_sh, "mask_bs": batch_sh, "completion_bt": batch_sh, "loss_mask_bt": batch_sh,
        "advantages_b": sharding.batch_sharding(mesh, 1), "grad_scale": sharding.replicated(mesh),
    }
    if rl.mu > 1:
        batch_shardings["old_logps_bt"] = batch_sh
    if rl.beta > 0:
        batch_shardings["ref_logps_bt"] = batch_sh
    jit_step = jax.jit(
        step_fn, in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    logp_fn = jax.jit(
        functools.partial(
            completion_logps, graphdef, temperature=c.sampling.temperature, implementation=implementation
        ),
        out_shardings=batch_sh,
    )

    writer = metrics_lib.MetricsWriter(workdir)
    ledger_path = os.path.join(
        workdir, "ledger.jsonl" if jax.process_count() == 1 else f"ledger.{jax.process_index()}.jsonl"
    )
    # A run killed after its last checkpoint appended records of the steps this one redoes from start_step.
    common.drop_records_after(ledger_path, start_step)
    if writer.enabled:
        common.drop_records_after(writer.history_path, start_step)
    from r1jax import evals

    evaluator = evals.Evaluator(
        graphdef, tokenizer, eval_records[: c.eval.num_prompts], task, template=c.template,
        response_prefix=c.response_prefix, max_new_tokens=c.sampling.max_new_tokens,
        num_samples=c.eval.num_samples, temperature=c.eval.temperature, top_p=c.eval.top_p,
        greedy=c.eval.greedy, max_prompt_len=c.sampling.max_prompt_len, prompt_bucket=c.sampling.prompt_bucket,
        mesh=mesh, seed=c.seed,
    )
    base_rng = jax.random.wrap_key_data(jax.device_get(state.rng))
    bar = metrics_lib.progress(rl.num_steps, initial=start_step, desc="grpo")
    last = {}
    nan_steps = set(int(s) for s in c.debug.inject_nan_steps)
    with distributed.preemption_guard() as guard:
        step = start_step
        t_loop = time.perf_counter()
        while step < rl.num_steps:
            t0 = time.perf_counter()
            # -- rollouts -------------------------------------------------------------------------------------
            parts, rinfo, rounds = [], {}, 0
            while True:
                batch_records = next(data_it)[local_prompts]
                prompt_ids = encode_prompts(
                    tokenizer, batch_records, c.template, c.response_prefix, c.sampling.max_prompt_len
                )
                rng = jax.random.fold_in(jax.random.fold_in(base_rng, step), rounds)
                rollout = sampling.sample(graphdef, state.params, prompt_ids, rng, sample_cfg, mesh=mesh)
                jax.block_until_ready(rollout)  # honest timings: the host needs the tokens now anyway
                t_sample = time.perf_counter()
                completions = decode_completions(tokenizer, rollout)
                group_records = [r for r in batch_records for _ in range(G)]
                rb = reward_fn(
                    [r["question"] for r in group_records], completions, group_records,
                    lengths=np.asarray(rollout.lengths_b),
                )
                rinfo = rb.stats
                parts.append((batch_records, rollout, rb.rewards.reshape(p_local, G), rb.valid.reshape(p_local, G)))
                rounds += 1
                informative = sum(int(np.asarray(grpo.keep_informative_groups(r, v)).sum()) for _, _, r, v in parts)
                if (
                    not rl.dynamic_sampling
                    or rounds > rl.max_resample_rounds
                    or distributed.all_processes(informative >= p_local)
                ):
                    break
            t_reward = time.perf_counter()
            records, batch, rewards_pg, valid_pg, lengths, truncated = select_groups(
                parts, p_local, informative_first=rl.dynamic_sampling, mask_truncated=rl.mask_truncated
            )
            # Every process's rewards: 'batch' reward scaling and the logged statistics are over the global batch.
            rewards_pg, valid_pg, lengths, truncated = distributed.gather_rows(
                (rewards_pg, valid_pg, lengths, truncated), mesh
            )
            adv_pg = grpo.group_advantages(
                jnp.asarray(rewards_pg), scale_rewards=rl.scale_rewards, eps=rl.adv_eps, valid_pg=jnp.asarray(valid_pg)
            )
            batch["advantages_b"] = np.asarray(adv_pg, np.float32).reshape(-1)[local_rows]
            batch["grad_scale"] = np.float32(np.nan if step in nan_steps else 1.0)
            # old / ref log-probs are computed on the device below, already placed like the rest of the batch
            host_keys = [k for k in batch_shardings if k in batch]
            batch = distributed.host_to_global(
                {k: batch[k] for k in host_keys}, {k: batch_shardings[k] for k in host_keys}
            )
            extra = {}  # both from the same batch structure, so logp_fn compiles once
            if rl.mu > 1:
                extra["old_logps_bt"] = logp_fn(state.params, batch)
            if rl.beta > 0:
                extra["ref_logps_bt"] = logp_fn(ref_params, batch)
            batch.update(extra)
            t_logps = time.perf_counter()
            for _ in range(rl.mu):
                state, m = jit_step(state, batch)
            jax.block_until_ready(state)
            t_train = time.perf_counter()
            step += 1
            with open(ledger_path, "a") as f:
                f.write(json.dumps({"step": step, "ids": [r["id"] for r in records]}) + "\n")

            # -- metrics --------------------------------------------------------------------------------------
            m = jax.device_get(m)
            n_tokens = int(lengths.sum())
            m.update(rinfo)
            m.update({
                "rl/reward_mean": float(rewards_pg[valid_pg].mean()) if valid_pg.any() else float("nan"),
                "rl/reward_std": float(rewards_pg[valid_pg].std()) if valid_pg.any() else float("nan"),
                "rl/zero_spread_groups": float(grpo.zero_spread_fraction(rewards_pg, valid_pg)),
                "rl/completion_length_mean": float(lengths.mean()),
                "rl/completion_length_max": float(lengths.max()),
                "rl/truncated_fraction": float(truncated.mean()),
                "rl/sampling_rounds": float(rounds),
                "perf/step_time_s": t_train - t0,
                "perf/sample_time_s": t_sample - t0,
                "perf/reward_time_s": t_reward - t_sample,
                "perf/logps_time_s": t_logps - t_reward,  # host batch assembly + old / reference log-probs
                "perf/train_time_s": t_train - t_logps,
                "perf/tokens_per_s": n_tokens / max(t_train - t0, 1e-9),
            })
            consecutive = int(jax.device_get(state.nonfinite_consecutive))
            if consecutive >= c.optim.max_consecutive_nonfinite:
                writer.write(step, m)  # the record of the step that stops the run, like that of every other step
                checkpointer.save(step, common.state_to_dict(state), data_it.get_state(), identity)
                checkpointer.close()
                raise FloatingPointError(
                    f"{consecutive} consecutive non-finite updates at step "
                    f"{step} (optim.max_consecutive_nonfinite={c.optim.max_consecutive_nonfinite}); params and "
                    f"optimizer state of the last finite update are saved in {checkpointer.directory}"
                )
            if c.eval.every and step % c.eval.every == 0 and step < rl.num_steps:
                m.update({f"eval/{k}": v for k, v in evaluator(state.params).items() if np.ndim(v) == 0})
            if step % c.log_every == 0 or step == rl.num_steps:
                writer.write(step, m)
            last = m
            bar.set_postfix(reward=f"{m['rl/reward_mean']:.3f}", len=f"{m['rl/completion_length_mean']:.0f}")
            bar.update(1)
            if c.debug.step_sleep_s:
                time.sleep(c.debug.step_sleep_s)
            stop = c.debug.stop_after_steps > 0 and step - start_step >= c.debug.stop_after_steps
            preempted = guard.triggered or checkpointer.reached_preemption(step) or stop
            out_of_time = rl.max_time_s > 0 and time.perf_counter() - t_loop >= rl.max_time_s
            if step % c.checkpoint.every == 0 or step == rl.num_steps or preempted or out_of_time:
                checkpointer.save(step, common.state_to_dict(state), data_it.get_state(), identity)
            if preempted:
                log.warning("preemption notice: saved step %d, exiting", step)
                checkpointer.close()
                writer.close()
                bar.close()
                return {"preempted_at": step, **last}
            if out_of_time:
                log.info("rl.max_time_s=%s reached after step %d: stopping", rl.max_time_s, step)
                break
    bar.close()
    final_eval = evaluator(state.params)
    writer.write(step, {f"eval/{k}": v for k, v in final_eval.items() if np.ndim(v) == 0})
    checkpointer.close()
    writer.close()
    metrics_lib.plot_curves(
        metrics_lib.read_history(workdir), ["rl/reward_mean", "eval/pass@1", "rl/completion_length_mean"],
        os.path.join(workdir, "curves.png"), title="GRPO",
    )
    if c.export:
        ckpt_lib.export_model(common.merge(graphdef, distributed.fetch(state.params)), tokenizer,
                              os.path.join(workdir, "model"))
    return {**last, **{f"eval/{k}": v for k, v in final_eval.items()}}


def decode_completions(tokenizer, rollout) -> list[str]:
    tokens = np.asarray(rollout.completion_tokens_bt)
    lengths = np.asarray(rollout.lengths_b)
    eos = tokenizer.eos_id
    out = []
    for row, n in zip(tokens, lengths):
        row = row[:n]
        if n and row[-1] == eos:
            row = row[:-1]
        out.append(row.tolist())
    return tokenizer.decode_batch(out)


def select_groups(parts, num_groups: int, *, informative_first: bool, mask_truncated: bool):
    """Host arrays for train_step from one or more sampling rounds.

    Each part is (records, rollout, rewards_pg, valid_pg). Without dynamic sampling this is the single round's
    batch. With it (DAPO), groups whose rewards carry signal come first; when the capped number of rounds did
    not find enough of them, zero-spread groups fill the batch (their advantages are 0). Rows are
    [left-padded prompt ; completion], padded to the longest part.
    """
    chosen = []  # (part index, prompt index)
    for want_informative in (True, False) if informative_first else (None,):
        for i, (_, _, r_pg, v_pg) in enumerate(parts):
            keep = np.asarray(grpo.keep_informative_groups(r_pg, v_pg))
            chosen += [(i, p) for p in range(len(keep)) if want_informative is None or keep[p] == want_informative]
    chosen = chosen[:num_groups]
    tp = max(np.asarray(parts[i][1].prompt_tokens_pt).shape[1] for i, _ in chosen)
    tc = max(np.asarray(parts[i][1].completion_tokens_bt).shape[1] for i, _ in chosen)
    rows = {k: [] for k in ("tokens_bs", "mask_bs", "completion_bt", "loss_mask_bt")}
    records, rewards, valid, lengths, truncated = [], [], [], [], []
    for i, p in chosen:
        recs, ro, r_pg, v_pg = parts[i]
        g = r_pg.shape[1]
        sl = slice(p * g, (p + 1) * g)
        prompt = np.asarray(ro.prompt_tokens_pt)[p]
        pmask = np.asarray(ro.prompt_mask_pt)[p].astype(bool)
        comp = np.asarray(ro.completion_tokens_bt)[sl]
        cmask = np.asarray(ro.completion_mask_bt)[sl].astype(bool)
        trunc = np.asarray(ro.truncated_b)[sl].astype(bool)
        pad_p, pad_c = tp - prompt.shape[0], tc - comp.shape[1]
        prompt = np.pad(prompt, (pad_p, 0))
        pmask = np.pad(pmask, (pad_p, 0))
        comp = np.pad(comp, ((0, 0), (0, pad_c)))
        cmask = np.pad(cmask, ((0, 0), (0, pad_c)))
        rows["tokens_bs"].append(np.concatenate([np.repeat(prompt[None], g, 0), comp], 1))
        rows["mask_bs"].append(np.concatenate([np.repeat(pmask[None], g, 0), cmask], 1))
        rows["completion_bt"].append(comp)
        rows["loss_mask_bt"].append(cmask & ~trunc[:, None] if mask_truncated else cmask)
        records.append(recs[p])
        rewards.append(r_pg[p])
        valid.append(v_pg[p])
        lengths.append(np.asarray(ro.lengths_b)[sl])
        truncated.append(trunc)
    batch = {k: np.concatenate(v, 0) for k, v in rows.items()}
    batch["tokens_bs"] = batch["tokens_bs"].astype(np.int32)
    batch["completion_bt"] = batch["completion_bt"].astype(np.int32)
    return (
        records, batch, np.stack(rewards).astype(np.float32), np.stack(valid), np.concatenate(lengths),
        np.concatenate(truncated),
    )
