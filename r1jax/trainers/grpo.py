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
import ml_collections
import numpy as np

from r1jax import checkpoint as ckpt_lib
from r1jax import distributed, grpo, sampling, sharding
from r1jax import metrics as metrics_lib
from r1jax.data import preferences
from r1jax.data import tasks as tasks_lib
from r1jax.data.pipeline import make_prompt_iterator
from r1jax.data.sources import PromptFields, load_prompts
from r1jax.models import config_from_hf, get_preset
from r1jax.rewards import RewardSpec, make_reward_fn
from r1jax.tokenizer import apply_template
from r1jax.trainers import common

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Config sections (declared once; experiment files set their values)


def rl_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.group_size = 8  # G, completions per prompt
    c.prompts_per_step = 16  # P, so B = P·G completions per rollout batch
    c.num_steps = 100  # rollout batches
    c.mu = 1  # μ, optimizer updates per rollout batch (μ = 1: ratio ≡ 1, no old-log-prob pass)
    c.beta = 0.0  # β, k3 KL coefficient (0 skips the reference forward entirely)
    c.epsilon_low = 0.2  # ε_low
    c.epsilon_high = 0.2  # ε_high (DAPO clip-higher: 0.28)
    c.loss_type = "dapo"  # 'grpo' | 'dapo' | 'dr_grpo' | 'bnpo' (see r1jax/grpo.py)
    c.scale_rewards = "group"  # 'group' | 'batch' | 'none' (Dr. GRPO)
    c.adv_eps = 1e-4
    c.importance_sampling_level = "token"  # 'token' | 'sequence'
    c.kl_bias_correction = False  # weight k3 by the ratio (DeepSeek-V3.2); R1 used plain k3
    c.mask_truncated = False  # drop completions without EOS from the loss
    c.dynamic_sampling = False  # DAPO: drop zero-spread groups, refill from further prompts
    c.max_resample_rounds = 2  # cap on extra sampling rounds per step with dynamic_sampling
    c.max_time_s = 0.0  # > 0: stop (save, evaluate, export) once the loop has run this long (wall-time budgets)
    c.update(overrides)
    return c


def sampling_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.temperature = 1.0  # rollouts sample from π_θ at this temperature; log-probs use the same one
    c.top_p = 1.0
    c.top_k = 0
    c.max_new_tokens = 256
    c.max_prompt_len = 256  # longer prompts are refused when the data is read
    c.prompt_bucket = 32  # prompts are left-padded to bucket·2^k tokens: few shapes, few compilations
    c.update(overrides)
    return c


def data_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "arithmetic"  # built-in task (r1jax.data.tasks) or 'gym:<reasoning_gym name>'; scores answers
    c.difficulty = 1
    c.num_train = 20_000  # built-in task: generated training prompts
    c.num_eval = 128  # built-in task: held-out prompts
    c.num_general = 0  # built-in general prompts (r1jax.data.preferences) mixed into training (paper 2.3.4)
    c.general_seed = 17
    c.train_seed = 1
    c.eval_seed = 2  # a different seed: a disjoint held-out split
    c.train_files = ()  # JSONL / Parquet / ArrayRecord; replaces the built-in task's training prompts
    c.eval_files = ()
    c.question_field = "question"
    c.answer_field = "answer"
    c.id_field = "id"
    c.on_error = "raise"  # malformed rows: 'raise' (file and line named) or 'skip' (counted)
    c.update(overrides)
    return c


def eval_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.every = 0  # steps between held-out evaluations (0 = only at the end)
    c.num_prompts = 64
    c.num_samples = 4  # k for pass@1 (mean over k samples) and cons@k
    c.temperature = 0.6  # the paper's protocol: T = 0.6, top-p = 0.95
    c.top_p = 0.95
    c.greedy = True  # also greedy accuracy
    c.update(overrides)
    return c


def checkpoint_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.every = 50  # steps between saves (also saved at the end and on SIGTERM)
    c.max_to_keep = 3
    c.async_save = True
    c.on_save_error = "raise"  # 'raise' or 'continue' (previous checkpoint kept)
    c.restart_from_weights = False  # resume a workdir whose settings changed: weights only, a new run
    c.update(overrides)
    return c


def rewards_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # name -> weight, summed: accuracy | format | language | overlong | code | 'module:function'
    c.weights = ml_collections.ConfigDict({"accuracy": 1.0, "format": 0.5})
    c.answer_extract = ("answer_tag",)  # where the final answer must be (R1: a specified format)
    c.format_mode = "strict"  # 'strict' | 'lenient'
    c.language = "en"  # target language of the language-consistency reward (paper 2.3.2)
    c.overlong_buffer = 64  # DAPO soft overlong punishment over the last N tokens (when 'overlong' is weighted)
    c.timeout_s = 10.0  # per completion and reward; a timeout or error makes the completion unscorable
    c.num_processes = 2  # worker processes for rewards that may hang (math-verify)
    # General prompts (task 'general') get these instead of `weights` (paper 2.3.4): 'helpfulness' (the reward
    # model on the summary, the text after </think>) and 'harmlessness' (the reward model on the whole response).
    c.general_weights = ml_collections.ConfigDict({})
    c.reward_model = ""  # a reward_model export (trainers/reward_model.py), needed by general_weights
    c.reward_model_timeout_s = 300.0  # per batch (the first call compiles)
    c.update(overrides)
    return c


def grpo_config() -> ml_collections.ConfigDict:
    """Every field the GRPO trainer reads, with defaults; experiment files change values, never add fields."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = common.model_config()
    c.tokenizer = common.tokenizer_config()
    c.template = "r1_zero"  # r1jax.tokenizer.TEMPLATES
    c.response_prefix = ""  # text forced at the start of every completion (e.g. '<think>')
    c.data = data_config()
    c.rl = rl_config()
    c.sampling = sampling_config()
    c.rewards = rewards_config()
    c.optim = common.optimizer_config()
    c.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1)})  # ('data', 'fsdp', 'tensor'); -1 = the rest
    c.kernels = ml_collections.ConfigDict({"implementation": "auto"})  # 'auto' | 'xla' | 'chunked' | 'pallas'
    c.checkpoint = checkpoint_config()
    c.eval = eval_config()
    c.log_every = 1
    c.export = True  # write WORKDIR/model (HF safetensors + tokenizer) at the end, for the next stage
    # stop_after_steps: save and return after this many steps of this process, as on SIGTERM (0 = off; resume tests)
    c.debug = ml_collections.ConfigDict({"inject_nan_steps": (), "step_sleep_s": 0.0, "stop_after_steps": 0})
    return c


def validate(c, num_devices: int | None = None) -> None:
    """Every check that can fail before compiling; errors name the field and value."""
    rl, s = c.rl, c.sampling
    if rl.group_size < 2:
        raise ValueError(f"rl.group_size={rl.group_size}: GRPO needs at least 2 samples per prompt")
    if rl.prompts_per_step < 1:
        raise ValueError(f"rl.prompts_per_step={rl.prompts_per_step}: must be >= 1")
    if rl.num_steps < 1:
        raise ValueError(f"rl.num_steps={rl.num_steps}: must be >= 1")
    if rl.mu < 1:
        raise ValueError(f"rl.mu={rl.mu}: must be >= 1")
    if rl.beta < 0:
        raise ValueError(f"rl.beta={rl.beta}: must be >= 0")
    for name in ("epsilon_low", "epsilon_high"):
        if not 0 < rl[name] < 1:
            raise ValueError(f"rl.{name}={rl[name]}: must be in (0, 1)")
    for name, allowed in (
        ("loss_type", grpo.LOSS_TYPES),
        ("scale_rewards", grpo.SCALE_REWARDS),
        ("importance_sampling_level", grpo.IMPORTANCE_SAMPLING_LEVELS),
    ):
        if rl[name] not in allowed:
            raise ValueError(f"rl.{name}={rl[name]!r}: expected one of {allowed}")
    if s.temperature <= 0:
        raise ValueError(f"sampling.temperature={s.temperature}: must be > 0 for RL rollouts")
    if not 0 < s.top_p <= 1:
        raise ValueError(f"sampling.top_p={s.top_p}: must be in (0, 1]")
    if s.max_new_tokens < 1 or s.max_prompt_len < 1:
        raise ValueError(f"sampling.max_new_tokens={s.max_new_tokens}, max_prompt_len={s.max_prompt_len}: must be >= 1")
    if c.eval.num_samples < 1:
        raise ValueError(f"eval.num_samples={c.eval.num_samples}: must be >= 1")
    if c.kernels.implementation not in ("auto", "xla", "chunked", "pallas"):
        raise ValueError(f"kernels.implementation={c.kernels.implementation!r}: expected auto | xla | chunked | pallas")
    common.validate_optimizer(c.optim)
    mesh_shape = sharding.resolve_mesh_shape(c.mesh.shape, num_devices)
    dp = mesh_shape[0] * mesh_shape[1]
    batch = rl.prompts_per_step * rl.group_size
    if rl.prompts_per_step % dp:
        raise ValueError(
            f"rl.prompts_per_step={rl.prompts_per_step}: not divisible by the data-parallel size {dp} "
            f"(mesh.shape={tuple(mesh_shape)})"
        )
    if batch % dp:
        raise ValueError(f"batch P·G={batch}: not divisible by the data-parallel size {dp}")
    if not c.data.train_files:
        tasks_lib.get_task(c.data.task)  # raises naming the task when unknown
    for f in tuple(c.data.train_files) + tuple(c.data.eval_files):
        if not os.path.exists(f):
            raise ValueError(f"data.train_files/eval_files: no such file {f!r}")
    for name in c.rewards.general_weights:
        if name not in GENERAL_REWARDS:
            raise ValueError(f"rewards.general_weights.{name}: expected names in {GENERAL_REWARDS}")
    if c.rewards.general_weights and not c.rewards.reward_model:
        raise ValueError("rewards.reward_model='': rewards.general_weights needs a reward model export directory")
    if c.data.num_general and not c.rewards.general_weights:
        raise ValueError(f"data.num_general={c.data.num_general}: general prompts need rewards.general_weights")
    if not c.model.checkpoint and not c.tokenizer.path:
        raise ValueError(
            "model.checkpoint='': GRPO starts from a base model; pass --config.model.checkpoint=PATH (a stage-0 "
            "export or a local Hugging Face checkpoint directory)"
        )
    if c.model.checkpoint and not os.path.isdir(c.model.checkpoint):
        raise ValueError(
            f"model.checkpoint={c.model.checkpoint!r}: no such directory; pass a local checkpoint with "
            "--config.model.checkpoint=PATH"
        )


def model_max_seq_len(mc) -> int | None:
    """The model's context length from its config alone (the checkpoint's config.json, or the preset), so that
    `check_context` fails before any weights are read or anything compiles; None when there is no config.json
    (loading then fails with its own message)."""
    if not mc.checkpoint:
        return get_preset(mc.preset).max_seq_len
    path = os.path.join(mc.checkpoint, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return config_from_hf(json.load(f)).max_seq_len


def check_context(c, max_seq_len: int) -> None:
    need = c.sampling.max_prompt_len + c.sampling.max_new_tokens
    if need > max_seq_len:
        raise ValueError(
            f"sampling.max_prompt_len + sampling.max_new_tokens = {need} exceeds the model's context "
            f"max_seq_len={max_seq_len}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_splits(c):
    """(train records, eval records, task) — built-in task prompts, or local files scored by `data.task`."""
    task = tasks_lib.get_task(c.data.task)
    fields = PromptFields(question=c.data.question_field, answer=c.data.answer_field, id=c.data.id_field)
    if c.data.train_files:
        train = load_prompts(list(c.data.train_files), fields, on_error=c.data.on_error)
    else:
        train = [e.to_dict() for e in task.generate(c.data.num_train, seed=c.data.train_seed, difficulty=c.data.difficulty)]
    if c.data.num_general:
        train = list(train) + preferences.general_records(c.data.num_general, seed=c.data.general_seed)
    if c.data.eval_files:
        evals = list(load_prompts(list(c.data.eval_files), fields, on_error=c.data.on_error))
    else:
        evals = [e.to_dict() for e in task.generate(c.data.num_eval, seed=c.data.eval_seed, difficulty=c.data.difficulty)]
    return train, evals, task


GENERAL_REWARDS = ("helpfulness", "harmlessness")


def make_rewards(rc, response_prefix: str, max_new_tokens: int):
    """The composed, timeout-guarded reward function from the `rewards` config section (routed by prompt kind
    when `general_weights` is set)."""
    kwargs = {
        "accuracy": {"extract": tuple(rc.answer_extract), "prefix": response_prefix},
        "format": {"mode": rc.format_mode, "prefix": response_prefix},
        "language": {"language": rc.language, "prefix": response_prefix},
        "overlong": {"max_length": max_new_tokens, "buffer": rc.overlong_buffer},
    }
    specs = [
        RewardSpec(name, weight=float(w), timeout_s=rc.timeout_s, kwargs=kwargs.get(name, {}))
        for name, w in rc.weights.items()
    ]
    reasoning = make_reward_fn(specs, num_processes=rc.num_processes)
    if not rc.general_weights:
        return reasoning
    from r1jax.trainers.reward_model import RewardModelScorer

    scorer = RewardModelScorer(rc.reward_model)
    general = make_reward_fn([
        RewardSpec("reward_model", weight=float(w), timeout_s=rc.reward_model_timeout_s, key=name,
                   kwargs={"scorer": scorer, "summary_only": name == "helpfulness"})
        for name, w in rc.general_weights.items()
    ])
    return RoutedRewards(reasoning, general)


class RoutedRewards:
    """Rule rewards for reasoning prompts, reward-model rewards for general ones (record task == 'general').

    Same call as a RewardFunction. Each prompt's G samples share its route, so group advantages compare like with
    like. Stats are those of each route, prefixed: reward/reasoning/..., reward/general/...
    """

    def __init__(self, reasoning, general):
        self.reasoning, self.general = reasoning, general

    def close(self) -> None:
        self.reasoning.close()
        self.general.close()

    def __call__(self, prompts, completions, examples, *, lengths=None):
        from r1jax.rewards.compose import RewardBatch

        n = len(completions)
        is_general = np.array([e.get("task") == preferences.GENERAL_TASK for e in examples], bool)
        rewards, valid, per, stats = np.zeros((n,), np.float32), np.ones((n,), bool), {}, {}
        for route, fn, sel in (("reasoning", self.reasoning, ~is_general), ("general", self.general, is_general)):
            idx = np.flatnonzero(sel)
            stats[f"reward/{route}/fraction"] = len(idx) / max(n, 1)
            if not len(idx):
                continue
            out = fn([prompts[i] for i in idx], [completions[i] for i in idx], [examples[i] for i in idx],
                     lengths=None if lengths is None else [lengths[i] for i in idx])
            rewards[idx], valid[idx] = out.rewards, out.valid
            for k, v in out.per_reward.items():
                per.setdefault(k, np.full((n,), np.nan, np.float32))[idx] = v
            stats.update({k.replace("reward/", f"reward/{route}/", 1).replace("perf/", f"perf/{route}_", 1): v
                          for k, v in out.stats.items()})
        stats["reward/valid_frac"] = float(valid.mean()) if n else 1.0
        return RewardBatch(rewards, per, stats, valid)


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
    reward_fn = make_rewards(c.rewards, c.response_prefix, c.sampling.max_new_tokens)

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
                "rl/zero_spread_groups": float(grpo.zero_spread_fraction(jnp.asarray(rewards_pg), jnp.asarray(valid_pg))),
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
            if int(m["train/nonfinite_total"]) and int(jax.device_get(state.nonfinite_consecutive)) >= c.optim.max_consecutive_nonfinite:
                writer.write(step, m)  # the record of the step that stops the run, like that of every other step
                checkpointer.save(step, common.state_to_dict(state), data_it.get_state(), identity)
                checkpointer.close()
                raise FloatingPointError(
                    f"{int(jax.device_get(state.nonfinite_consecutive))} consecutive non-finite updates at step "
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
