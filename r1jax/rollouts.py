"""Between the trainers and the sampler: prompts in, scored groups out, and the GRPO step that learns from them.

    load_splits / encode_prompts     prompt records of a config (built-in task or files) → token ids
    PromptSampler.draw               P prompts → group_size completions each (r1jax.sampling) → text → rewards
    sample_rounds                    DAPO dynamic sampling: draw again until enough groups carry signal
    select_groups / assemble_batch   rounds → the train batch: [prompt ; completion] rows, advantages, placed on
                                     the mesh (rewards gathered from every process first)
    make_grpo_step                   the jitted train step (explicit shardings, state donated), the log-prob
                                     function and the batch shardings, from the config (the loss's: `loss_config`)
    sampler_placement                where the sampler reads the parameters: the trainer's arrays, a copy, a copy
                                     on devices of its own (rl.sampler_devices), in bf16 (rl.sampler_dtype)
    draw_pending / RolloutQueue      a step's sampled and scored rollouts, and those waiting ahead of the trainer
                                     (rl.max_staleness), checkpointed with the prompt iterator

The GRPO trainer (r1jax/trainers/grpo.py), evaluation, rejection sampling, the benchmarks and the tests share these,
so each exists once. `rl.group_size` (the paper's G) is handed to the sampler's `num_samples` in one place,
`sampler_config`.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax import distributed, grpo, losses, sampling, sharding, train_state
from r1jax import rewards as rewards_lib
from r1jax.data import formats, preferences, provenance
from r1jax.data.sources import PromptFields
from r1jax.models import logprobs
from r1jax.tokenizer import apply_template

# ---------------------------------------------------------------------------------------------------------------
# Prompts and completions (host)


def load_splits(c, workdir: str | None = None):
    """(train records, eval records, task) — built-in task prompts, or local files scored by `data.task`.

    Built-in prompts come from content splits (r1jax.data.provenance): training from 'train', evaluation from
    `eval.split` ('test' for reported numbers, 'validation' for choosing settings). Evaluation records whose
    normalised question is also a training question (files) are dropped, and the count is logged. With
    `workdir`, the questions trained and evaluated on go into WORKDIR/data_manifest.jsonl.
    """
    task = rewards_lib.get_task(c.data.task)
    fields = PromptFields(question=c.data.question_field, answer=c.data.answer_field, id=c.data.id_field)
    if c.data.train_files:
        train = formats.load(list(c.data.train_files), c.data.format, split=c.data.train_files_split, fields=fields,
                             on_error=c.data.on_error, levels=tuple(c.data.levels))
    else:
        generated = task.generate(c.data.num_train, seed=c.data.train_seed, difficulty=c.data.difficulty,
                                  split="train")
        train = [e.to_dict() for e in generated]
    if c.data.num_general:
        train = list(train) + preferences.general_records(c.data.num_general, seed=c.data.general_seed,
                                                          split="train")
    if c.data.eval_files:
        evals = list(formats.load(list(c.data.eval_files), c.data.format, split=c.data.eval_files_split,
                                  fields=fields, on_error=c.data.on_error, levels=tuple(c.data.levels)))
    else:
        generated = task.generate(c.data.num_eval, seed=c.data.eval_seed, difficulty=c.data.difficulty,
                                  split=c.eval.split)
        evals = [e.to_dict() for e in generated]
    evals, _ = provenance.dedupe_against(evals, provenance.questions_of(train), what="data.eval_files / eval split")
    if c.eval.num_prompts and not evals:
        raise ValueError(
            f"eval.num_prompts={c.eval.num_prompts}: no evaluation question is left once the training questions are "
            "removed (data.eval_files repeats data.train_files?); pass held-out questions, or eval.num_prompts=0 "
            "to train without evaluating"
        )
    if workdir is not None:
        provenance.record(workdir, provenance.questions_of(train), split="train", role="train", source="rl_prompts")
        provenance.record(workdir, provenance.questions_of(evals[: c.eval.num_prompts]), split=c.eval.split,
                          role="eval", source="eval_prompts")
    return train, evals, task


def encode_prompts(tokenizer, records, template: str, response_prefix: str, max_len: int) -> list[list[int]]:
    """Token ids of each record's templated question plus the forced response prefix; a prompt longer than
    `max_len` (sampling.max_prompt_len) is refused, naming its id."""
    texts = [apply_template(r["question"], template) + response_prefix for r in records]
    ids = tokenizer.encode_batch(texts)
    for r, x in zip(records, ids):
        if len(x) > max_len:
            raise ValueError(f"prompt {r['id']!r} has {len(x)} tokens > sampling.max_prompt_len={max_len}")
    return ids


def decode_completions(tokenizer, rollout) -> list[str]:
    """The text of each completion row, without its padding and its EOS."""
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


def sampler_config(c, tokenizer) -> sampling.SamplingConfig:
    """The rollout sampler's settings from a GRPO config: `rl.group_size` completions of each prompt (the
    sampler calls G `num_samples`)."""
    s = c.sampling
    return sampling.SamplingConfig(
        num_samples=c.rl.group_size, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
        top_k=s.top_k, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, prompt_bucket=s.prompt_bucket,
        scheduler=s.scheduler, num_slots=s.num_slots,
    )


# ---------------------------------------------------------------------------------------------------------------
# Sampling rounds: rollout and reward


class Round(NamedTuple):
    """One sampling round of P prompts: their records, the Rollout of P·G rows, and (P, G) rewards / validity."""

    records: list
    rollout: Any
    rewards_pg: np.ndarray
    valid_pg: np.ndarray


@dataclasses.dataclass
class PromptSampler:
    """Draws this process's prompts of the next global batch, samples a group of completions of each with the
    current policy and scores them (r1jax.rewards.routing)."""

    graphdef: Any
    tokenizer: Any
    data_it: Any  # yields global batches of prompt records; every process draws the same ones
    local_prompts: slice  # the rows of a global batch that this process's devices hold
    reward_fn: Any
    config: sampling.SamplingConfig
    mesh: Any
    template: str
    response_prefix: str
    max_prompt_len: int

    @classmethod
    def from_config(cls, c, graphdef, tokenizer, data_it, reward_fn, mesh) -> PromptSampler:
        """The GRPO config's sampler: `rl.group_size` completions of this process's share of `rl.prompts_per_step`."""
        local_prompts = distributed.local_batch_slice(mesh, c.rl.prompts_per_step)
        return cls(
            graphdef, tokenizer, data_it, local_prompts, reward_fn, sampler_config(c, tokenizer), mesh, c.template,
            c.response_prefix, c.sampling.max_prompt_len,
        )

    def draw(self, params, rng) -> tuple[Round, dict, float]:
        """(round, reward statistics, the time sampling finished)."""
        records = next(self.data_it)[self.local_prompts]
        prompt_ids = encode_prompts(self.tokenizer, records, self.template, self.response_prefix, self.max_prompt_len)
        rollout = sampling.sample(self.graphdef, params, prompt_ids, rng, self.config, mesh=self.mesh)
        jax.block_until_ready(rollout)  # honest timings: the host needs the tokens now anyway
        t_sampled = time.perf_counter()
        completions = decode_completions(self.tokenizer, rollout)
        group_size = self.config.num_samples
        group_records = [r for r in records for _ in range(group_size)]
        rb = self.reward_fn(
            [r["question"] for r in group_records], completions, group_records, lengths=np.asarray(rollout.lengths_b)
        )
        shape = (len(records), group_size)
        return Round(records, rollout, rb.rewards.reshape(shape), rb.valid.reshape(shape)), rb.stats, t_sampled


def sample_rounds(sampler: PromptSampler, params, rng, *, dynamic_sampling: bool, max_resample_rounds: int):
    """Rounds of `sampler.draw` until the batch can be filled (rounds, last round's reward statistics, the time the
    last sampling finished).

    Without dynamic sampling: one round. With it (DAPO), further rounds (each with its own rng, folded from `rng`)
    while fewer than P groups on some process carry signal, at most `max_resample_rounds` extra.
    """
    rounds = []
    while True:
        part, reward_stats, t_sampled = sampler.draw(params, jax.random.fold_in(rng, len(rounds)))
        rounds.append(part)
        informative = sum(int(np.asarray(grpo.keep_informative_groups(r.rewards_pg, r.valid_pg)).sum()) for r in rounds)
        # all_processes is a collective: every process reaches it in the same rounds (the conditions before it agree)
        if (
            not dynamic_sampling
            or len(rounds) > max_resample_rounds
            or distributed.all_processes(informative >= len(part.records))
        ):
            return rounds, reward_stats, t_sampled


# ---------------------------------------------------------------------------------------------------------------
# The train batch: group selection, advantages


def select_groups(parts, num_groups: int, *, informative_first: bool, mask_truncated: bool):
    """Host arrays for train_step from one or more sampling rounds.

    Each part is a Round (records, rollout, rewards_pg, valid_pg). Without dynamic sampling this is the single
    round's batch. With it (DAPO), groups whose rewards carry signal come first; when the capped number of rounds
    did not find enough of them, zero-spread groups fill the batch (their advantages are 0). Rows are
    [left-padded prompt ; completion], padded to the longest part.
    Returns (records, batch, rewards_pg, valid_pg, lengths_b, truncated_b).
    """
    chosen = []  # (part index, prompt index)
    for want_informative in (True, False) if informative_first else (None,):
        for i, (_, _, r_pg, v_pg) in enumerate(parts):
            keep = np.asarray(grpo.keep_informative_groups(r_pg, v_pg))
            chosen += [(i, p) for p in range(len(keep)) if want_informative is None or keep[p] == want_informative]
    chosen = chosen[:num_groups]
    tp = max(np.asarray(parts[i][1].prompt_tokens_pt).shape[1] for i, _ in chosen)
    tc = max(np.asarray(parts[i][1].completion_tokens_bt).shape[1] for i, _ in chosen)
    rows = {k: [] for k in ("tokens_bs", "mask_bs", "completion_bt", "loss_mask_bt", "sampler_logps_bt")}
    records, rewards, valid, lengths, truncated = [], [], [], [], []
    for i, p in chosen:
        recs, ro, r_pg, v_pg = parts[i]
        group_size = r_pg.shape[1]
        sl = slice(p * group_size, (p + 1) * group_size)
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
        rows["tokens_bs"].append(np.concatenate([np.repeat(prompt[None], group_size, 0), comp], 1))
        rows["mask_bs"].append(np.concatenate([np.repeat(pmask[None], group_size, 0), cmask], 1))
        rows["completion_bt"].append(comp)
        rows["loss_mask_bt"].append(cmask & ~trunc[:, None] if mask_truncated else cmask)
        # the sampler's log-probs of its tokens: importance corrections and mismatch metrics (r1jax/grpo.py)
        rows["sampler_logps_bt"].append(np.pad(np.asarray(ro.logps_bt, np.float32)[sl], ((0, 0), (0, pad_c))))
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


class BatchSummary(NamedTuple):
    """The global batch's rewards and completion lengths, for metrics: (P, G) rewards and validity, (B,) lengths
    and truncation flags."""

    rewards_pg: np.ndarray
    valid_pg: np.ndarray
    lengths_b: np.ndarray
    truncated_b: np.ndarray


def assemble_batch(c, rounds, mesh, batch_shardings, *, grad_scale: float = 1.0):
    """(records, device batch, BatchSummary): this process's P groups chosen from `rounds`, advantages from the
    rewards of every process (A = (r − mean r) / (std r + eps), 'batch' scaling is over the global batch), placed
    on the mesh like `batch_shardings` (old / reference log-probs are added on the device afterwards)."""
    rl = c.rl
    local_prompts = distributed.local_batch_slice(mesh, rl.prompts_per_step)
    local_rows = distributed.local_batch_slice(mesh, rl.prompts_per_step * rl.group_size)
    records, batch, rewards_pg, valid_pg, lengths, truncated = select_groups(
        rounds, local_prompts.stop - local_prompts.start, informative_first=rl.dynamic_sampling,
        mask_truncated=rl.mask_truncated,
    )
    summary = BatchSummary(*distributed.gather_rows((rewards_pg, valid_pg, lengths, truncated), mesh))
    adv_pg = grpo.group_advantages(
        jnp.asarray(summary.rewards_pg), scale_rewards=rl.scale_rewards, eps=rl.adv_eps,
        valid_pg=jnp.asarray(summary.valid_pg),
    )
    batch["advantages_b"] = np.asarray(adv_pg, np.float32).reshape(-1)[local_rows]
    batch["grad_scale"] = np.float32(grad_scale)
    host_keys = [k for k in batch_shardings if k in batch]
    batch = distributed.host_to_global({k: batch[k] for k in host_keys}, {k: batch_shardings[k] for k in host_keys})
    return records, batch, summary


def add_policy_logps(batch, logps_fn, params, ref_params, *, mu: int, beta: float) -> dict:
    """The batch plus log π_old (μ > 1) and log π_ref (β > 0) of its completion tokens, one forward each."""
    extra = {}  # both from the same batch structure, so logps_fn compiles once
    if mu > 1:
        extra["old_logps_bt"] = logps_fn(params, batch)
    if beta > 0:
        extra["ref_logps_bt"] = logps_fn(ref_params, batch)
    return {**batch, **extra}


def step_metrics(m, reward_stats: dict, summary: BatchSummary, num_rounds: int, seconds: dict) -> dict:
    """One RL step's flat metrics: the last update's (`rl/…`, `train/…`), reward statistics, the batch's rewards
    and lengths, and where the time went (`seconds`: step, sample, reward, logps, train; with rollouts sampled
    ahead, sample and reward are the next rollouts', which ran while the update did)."""
    rewards_pg, valid_pg, lengths, truncated = summary
    m = dict(jax.device_get(m))
    m.update(reward_stats)
    s = seconds
    m.update({
        "rl/reward_mean": float(rewards_pg[valid_pg].mean()) if valid_pg.any() else float("nan"),
        "rl/reward_std": float(rewards_pg[valid_pg].std()) if valid_pg.any() else float("nan"),
        "rl/zero_spread_groups": float(grpo.zero_spread_fraction(rewards_pg, valid_pg)),
        "rl/completion_length_mean": float(lengths.mean()),
        "rl/completion_length_max": float(lengths.max()),
        "rl/truncated_fraction": float(truncated.mean()),
        "rl/sampling_rounds": float(num_rounds),
        "perf/step_time_s": s["step"],
        "perf/sample_time_s": s["sample"],
        "perf/reward_time_s": s["reward"],
        "perf/logps_time_s": s["logps"],  # host batch assembly + old / reference log-probs
        "perf/train_time_s": s["train"],
        "perf/tokens_per_s": int(lengths.sum()) / max(s["step"], 1e-9),
    })
    return m


# ---------------------------------------------------------------------------------------------------------------
# Device functions: completion log-probs and the GRPO train step


def completion_logps(
    graphdef, params, batch, *, temperature, implementation, entropy=False, group_size=1, mesh=None
):
    """log π(token) of each completion token (B, Tc), through the policy's log-prob forward (the one the sampler's
    log-probs are checked against); `group_size` G > 1 runs each group's shared prompt once
    (`logprobs.sequence_logps`); `mesh`: the step's mesh (the kernel's implementation follows its devices, and
    Pallas kernels run in shard_map over it)."""
    return logprobs.sequence_logps(
        nnx.merge(graphdef, params), batch["tokens_bs"], batch["mask_bs"], batch["completion_bt"],
        temperature=temperature, implementation=implementation, return_entropy=entropy, group_size=group_size,
        mesh=mesh,
    )


def train_step(state, batch, *, graphdef, optimizer, loss_cfg, temperature, implementation, group_size=1, mesh=None):
    """One optimizer update on a rollout batch. Pure; jitted once with the state donated."""

    def loss_fn(params):
        logps_bt, entropy_bt = completion_logps(
            graphdef, params, batch, temperature=temperature, implementation=implementation, entropy=True,
            group_size=group_size, mesh=mesh,
        )
        loss, m = losses.policy_loss(
            loss_cfg, logps_bt, batch.get("old_logps_bt"), batch.get("ref_logps_bt"), batch["advantages_b"],
            batch["loss_mask_bt"], sampler_logps_bt=batch.get("sampler_logps_bt"), entropy_bt=entropy_bt,
        )  # m holds the step's health metrics too (sampler mismatch, importance weights, masks): logged as rl/...
        m["entropy"] = grpo.masked_mean(jax.lax.stop_gradient(entropy_bt), batch["loss_mask_bt"])
        return loss, m

    (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, upd = train_state.apply_gradients(state, grads, loss, optimizer, batch["grad_scale"])
    out = {f"rl/{k}": v for k, v in m.items()}
    out.update(upd)
    out["rl/loss"] = loss
    out["train/nonfinite_total"] = state.nonfinite_total
    return state, out


def loss_config(c) -> losses.LossConfig:
    """The policy loss's frozen config from a GRPO config, validated (errors name the `rl.` field): every loss option
    read in this one place. The config's no-op numbers (C_min 0, C_max / delta / off-policy threshold inf) pass as
    they are; the loss reads them as None."""
    rl = c.rl
    fields = [f.name for f in dataclasses.fields(losses.LossConfig) if f.name != "max_completion_length"]
    return losses.LossConfig(
        **{name: rl[name] for name in fields}, max_completion_length=c.sampling.max_new_tokens
    ).validate(prefix="rl.")


class GRPOStep(NamedTuple):
    """train_step(state, batch) -> (state, metrics), jitted with the state donated; logps(params, batch) -> (B, Tc)
    log-probs of the completion tokens; batch_shardings: the batch's keys and their placement on the mesh."""

    train_step: Any
    logps: Any
    batch_shardings: dict

    @property
    def mesh(self):
        """The trainer's mesh."""
        return self.batch_shardings["advantages_b"].mesh


def make_grpo_step(c, graphdef, optimizer, mesh, state_shardings) -> GRPOStep:
    """The GRPO train step and log-prob function of config `c`, each jitted once with explicit shardings."""
    rows = sharding.batch_sharding(mesh, 2)
    batch_shardings = {
        "tokens_bs": rows, "mask_bs": rows, "completion_bt": rows, "loss_mask_bt": rows,
        "advantages_b": sharding.batch_sharding(mesh, 1), "grad_scale": sharding.replicated(mesh),
    }
    rl = c.rl
    if rl.sampler_is_correction or rl.off_policy_mask_threshold < float("inf") or rl.max_staleness or rl.sampler_dtype:
        # the sampler's log-probs, read by these options; the step then also logs rl/sampler/* (mismatch, weights).
        # Stale or lower-precision rollouts log the mismatch whether or not a correction uses it.
        batch_shardings["sampler_logps_bt"] = rows
    if c.rl.mu > 1:
        batch_shardings["old_logps_bt"] = rows
    if c.rl.beta > 0:
        batch_shardings["ref_logps_bt"] = rows
    device_kw = dict(
        temperature=c.sampling.temperature, implementation=c.kernels.implementation,
        group_size=rl.group_size if rl.shared_prompt_forward else 1, mesh=mesh,
    )
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer, loss_cfg=loss_config(c), **device_kw),
        in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, None), donate_argnums=0,
    )
    logps = jax.jit(functools.partial(completion_logps, graphdef, **device_kw), out_shardings=rows)
    return GRPOStep(step, logps, batch_shardings)


# ---------------------------------------------------------------------------------------------------------------
# Asynchronous rollouts: sampling ahead of the trainer, with parameters at most `rl.max_staleness` updates old


@dataclasses.dataclass
class SamplerPlacement:
    """Where and in what precision the sampler reads the trainer's parameters.

    `__call__(params)` gives the parameters the sampler uses: the trainer's own arrays when nothing differs and
    nothing runs concurrently (synchronous, shared devices: no copy, the trainer's numbers bit for bit); otherwise
    a copy (cast to `dtype`, placed on the sampler's devices with `shardings`), which an update that donates the
    trainer's buffers cannot invalidate while the sampler still reads it.
    """

    graphdef: Any  # the sampler's model definition (compute dtype = `dtype`)
    mesh: Any  # the sampler's mesh: the trainer's, or its own devices (rl.sampler_devices)
    shardings: Any = None  # the sampler's parameter shardings on its own mesh; None = where the trainer keeps them
    dtype: Any = None  # cast parameters to this dtype; None = as trained
    copy: bool = False

    def __call__(self, params):
        if not self.copy:
            return params
        if self.dtype is not None:
            params = jax.tree.map(lambda x: x.astype(self.dtype), params)
        elif self.shardings is None:
            params = jax.tree.map(jnp.copy, params)
        params = params if self.shardings is None else jax.device_put(params, self.shardings)
        return jax.block_until_ready(params)  # copied before an update donates the trainer's buffers

    def abstract(self, params):
        """What `__call__` returns, as ShapeDtypeStructs, for the trainer's parameters as ShapeDtypeStructs with
        shardings (r1jax/compile.py: nothing is allocated or placed)."""
        dtype = lambda x: x.dtype if self.dtype is None else self.dtype
        shardings = jax.tree.map(lambda x: x.sharding, params) if self.shardings is None else self.shardings
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype(x), sharding=s), params, shardings)


def sampler_placement(c, model, graphdef, mesh, devices=None) -> SamplerPlacement:
    """The sampler's placement from a GRPO config: `rl.sampler_devices` > 0 puts it on the last N devices (a
    data-parallel mesh of its own; the trainer's `mesh` holds the others), `rl.sampler_dtype` sets its precision,
    and `rl.max_staleness` > 0 (sampling while the trainer updates) needs a copy even on shared devices.
    `graphdef` is the trainer's; the logical axes of `model`'s NNX state shard the parameters on the sampler's
    mesh. `devices`: all the run's devices (default `jax.devices()`; abstract ones when compiling for a topology);
    `model` may be abstract (`nnx.eval_shape`)."""
    rl = c.rl
    dtype = jnp.dtype(rl.sampler_dtype) if rl.sampler_dtype else None
    if dtype == jnp.dtype(model.cfg.param_dtype) and dtype == jnp.dtype(model.cfg.dtype):
        dtype = None
    if dtype is not None:
        cfg = dataclasses.replace(model.cfg, dtype=str(dtype), param_dtype=str(dtype))
        graphdef = nnx.split(nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(params=0))))[0]
    if rl.sampler_devices:
        devices = jax.devices() if devices is None else list(devices)
        sampler_mesh = sharding.make_mesh((-1, 1, 1), devices=devices[-rl.sampler_devices :])
        shardings = sharding.param_shardings(nnx.state(model), sampler_mesh)
        return SamplerPlacement(graphdef, sampler_mesh, shardings, dtype, copy=True)
    return SamplerPlacement(graphdef, mesh, None, dtype, copy=dtype is not None or rl.max_staleness > 0)


class Pending(NamedTuple):
    """Rollouts of one RL step, sampled and scored ahead of it: `version` = how many steps had updated the
    parameters they were sampled with (the step that trains on them has `step - 1` behind it)."""

    step: int
    version: int
    rounds: list
    reward_stats: dict
    sample_s: float  # wall time of sampling, and of the rewards after it
    reward_s: float


def draw_pending(sampler: PromptSampler, params, rng, rl, *, step: int = 0, version: int = 0) -> Pending:
    """Sampled and scored rollouts of RL step `step` (the trainer gives step t the key `fold_in(base_rng, t - 1)`
    whenever it is drawn, so a step's samples depend on its number and the parameters, never on when they were
    drawn); `rl`: the config's rl fields (dynamic sampling)."""
    t0 = time.perf_counter()
    rounds, reward_stats, t_sampled = sample_rounds(
        sampler, params, rng, dynamic_sampling=rl.dynamic_sampling, max_resample_rounds=rl.max_resample_rounds
    )
    now = time.perf_counter()
    return Pending(step, version, rounds, reward_stats, t_sampled - t0, now - t_sampled)


_PENDING_KEY = "pending_rollouts"
_ROLLOUT_ARRAYS = [f.name for f in dataclasses.fields(sampling.Rollout) if f.name != "logps_kind"]


def _np_b64(x) -> dict:
    x = np.asarray(x)
    return {"dtype": x.dtype.str, "shape": list(x.shape), "b64": base64.b64encode(x.tobytes()).decode()}


def _b64_np(d) -> np.ndarray:
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def _encode_pending(p: Pending) -> dict:
    rounds = [
        {
            "records": r.records,
            "rollout": {k: _np_b64(getattr(r.rollout, k)) for k in _ROLLOUT_ARRAYS},
            "logps_kind": r.rollout.logps_kind,
            "rewards_pg": _np_b64(r.rewards_pg),
            "valid_pg": _np_b64(r.valid_pg),
        }
        for r in p.rounds
    ]
    stats = {k: float(v) for k, v in p.reward_stats.items()}
    return {"step": p.step, "version": p.version, "rounds": rounds, "reward_stats": stats,
            "sample_s": p.sample_s, "reward_s": p.reward_s}


def _decode_pending(d: dict) -> Pending:
    rounds = [
        Round(
            r["records"],
            sampling.Rollout(**{k: _b64_np(v) for k, v in r["rollout"].items()}, logps_kind=r["logps_kind"]),
            _b64_np(r["rewards_pg"]),
            _b64_np(r["valid_pg"]),
        )
        for r in d["rounds"]
    ]
    return Pending(d["step"], d["version"], rounds, d["reward_stats"], d["sample_s"], d["reward_s"])


class RolloutQueue:
    """The prompt iterator and the rollouts already sampled from it for later steps, checkpointed together.

    `get_state` / `set_state` are the TrainLoop's data state: the iterator's position plus, when rollouts are
    waiting (rl.max_staleness > 0), their tokens, sampler log-probs, rewards and records (exact bytes, base64), so
    that a resumed run trains on the very rollouts an uninterrupted one would have, without the older parameters
    that sampled them. With nothing waiting (the synchronous trainer) the state is the iterator's alone.
    """

    def __init__(self, data_it):
        self.data_it = data_it
        self.pending: collections.deque[Pending] = collections.deque()

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.data_it)

    @property
    def last_step(self) -> int:
        """The newest step whose rollouts are waiting (0 when none)."""
        return self.pending[-1].step if self.pending else 0

    def get_state(self) -> dict:
        state = dict(self.data_it.get_state())
        if self.pending:
            state[_PENDING_KEY] = [_encode_pending(p) for p in self.pending]
        return state

    def set_state(self, state: dict) -> None:
        state = dict(state)
        self.pending = collections.deque(_decode_pending(p) for p in state.pop(_PENDING_KEY, []))
        self.data_it.set_state(state)
