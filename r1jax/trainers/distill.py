"""Distillation (paper 2.4, stage 6): fine-tune a smaller student on the teacher's samples.

The paper's method is plain SFT of the student (Qwen / Llama) on the ~800k samples curated with DeepSeek-R1
(the stage-4 rejection-sampling set), and that is the default here (`distill.kl_weight = 0`). Optionally the
loss adds token-level knowledge distillation towards the teacher's distributions on the same packed rows:

    loss = (1 − α) · NLL(response tokens) + α · mean over response tokens of KL_t          α = distill.kl_weight
    KL_t = KL(π_student ‖ π_teacher)   'reverse': the fused KL kernel (r1jax.kernels.kl), no B×T×V logits
           KL(π_teacher ‖ π_student)   'forward': plain XLA over materialised logits — the kernel differentiates
                                       its first (p) distribution only, so the student cannot be its q side

both at temperature `distill.temperature`. The teacher is frozen (a separate, non-donated argument of the
jitted step). A student made from a preset (`init_from_scratch`) uses the teacher's tokenizer; KL needs the
same vocabulary on both sides and is refused otherwise.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections

from r1jax import checkpoint as ckpt_lib
from r1jax import distributed, kernels, sharding, train_state
from r1jax.data.sft import SFTFields, make_sft_iterator
from r1jax.models import logprobs
from r1jax.trainers import common, sft
from r1jax.trainers.loop import TrainLoop

KL_DIRECTIONS = ("forward", "reverse")


def distill_config() -> ml_collections.ConfigDict:
    """The SFT trainer's fields (data, packing, optimizer, ...) plus the teacher and the `distill` section."""
    c = sft.sft_config()
    c.model.preset = "tiny-student"
    c.init_from_scratch = True  # True: a fresh `model.preset` student with the teacher's tokenizer
    c.data.source = "files"  # the rejection-sampling set (teacher samples) as prompt/response JSONL
    c.teacher = train_state.model_config()  # teacher.checkpoint: the final model (stage 5); its tokenizer is used
    c.distill = ml_collections.ConfigDict()
    c.distill.kl_weight = 0.0  # α: 0 = SFT only (the paper's method); 1 = KL only
    c.distill.kl_direction = "reverse"  # 'reverse' KL(student‖teacher), fused kernel | 'forward' KL(teacher‖student)
    c.distill.temperature = 1.0
    return c


def validate(c) -> None:
    if not c.teacher.checkpoint:
        raise ValueError("teacher.checkpoint='': distillation needs the teacher's export (--config.teacher.checkpoint)")
    if not os.path.isdir(c.teacher.checkpoint):
        raise ValueError(f"teacher.checkpoint={c.teacher.checkpoint!r}: no such directory")
    if not 0 <= c.distill.kl_weight <= 1:
        raise ValueError(f"distill.kl_weight={c.distill.kl_weight}: must be in [0, 1]")
    if c.distill.kl_direction not in KL_DIRECTIONS:
        raise ValueError(f"distill.kl_direction={c.distill.kl_direction!r}: expected one of {KL_DIRECTIONS}")
    if not c.distill.temperature > 0:
        raise ValueError(f"distill.temperature={c.distill.temperature}: must be > 0")
    sft.validate(c)


def teacher_tokenizer_path(teacher_dir: str) -> str:
    sp = os.path.join(teacher_dir, "tokenizer.model")
    return sp if os.path.exists(sp) else teacher_dir


# ---------------------------------------------------------------------------------------------------------------
# Loss


def forward_kl(h_s_btd, w_s_dv, h_t_bte, w_t_ev, *, temperature: float):
    """KL(π_teacher ‖ π_student) per token (B, T), differentiable in the student; materialises both logits."""
    h_t_bte, w_t_ev = jax.lax.stop_gradient((h_t_bte, w_t_ev))
    logp_s = jax.nn.log_softmax(
        jnp.einsum("btd,dv->btv", h_s_btd, w_s_dv, preferred_element_type=jnp.float32) / temperature, axis=-1
    )
    logp_t = jax.nn.log_softmax(
        jnp.einsum("bte,ev->btv", h_t_bte, w_t_ev, preferred_element_type=jnp.float32) / temperature, axis=-1
    )
    return jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)


def token_kl(h_s, w_s, h_t, w_t, *, direction: str, temperature: float, implementation: str, mesh=None):
    if direction == "reverse":
        return kernels.kl(h_s, w_s, h_t, w_t, temperature=temperature, implementation=implementation, mesh=mesh)
    return forward_kl(h_s, w_s, h_t, w_t, temperature=temperature)


def _hidden(model, batch):
    return logprobs.packed_hidden(model, batch["tokens_bt"], batch["segment_ids_bt"], batch["positions_bt"])


def distill_loss(
    params, teacher_params, batch, *, graphdef, teacher_graphdef, kl_weight, direction, temperature, implementation,
    mesh=None,
):
    """(loss, metrics) on packed rows; see the module docstring. `teacher_params` is unused when kl_weight = 0.
    `mesh`: the step's mesh, which the kernels' implementation follows (Pallas kernels run in shard_map over it)."""
    student = train_state.merge(graphdef, params)
    h_s = _hidden(student, batch)
    w_s = student.lm_head_weight()
    mask = batch["loss_mask_bt"].astype(jnp.float32)
    denom = jnp.maximum(mask.sum(), 1.0)
    logp_bt = logprobs.token_logps(student, h_s, batch["targets_bt"], implementation=implementation, mesh=mesh)
    nll = -(logp_bt * mask).sum() / denom
    if kl_weight == 0:
        return nll, {"distill/nll": nll}
    teacher = train_state.merge(teacher_graphdef, teacher_params)
    h_t = jax.lax.stop_gradient(_hidden(teacher, batch))
    kl_bt = token_kl(
        h_s,
        w_s,
        h_t,
        jax.lax.stop_gradient(teacher.lm_head_weight()),
        direction=direction,
        temperature=temperature,
        implementation=implementation,
        mesh=mesh,
    )
    kl = (kl_bt * mask).sum() / denom
    return (1 - kl_weight) * nll + kl_weight * kl, {"distill/nll": nll, "distill/kl": kl}


def train_step(state, teacher_params, batch, *, optimizer, **loss_kw):
    (loss, m), grads = jax.value_and_grad(distill_loss, has_aux=True)(state.params, teacher_params, batch, **loss_kw)
    state, upd = train_state.apply_gradients(state, grads, loss, optimizer)
    return state, {"distill/loss": loss, **m, **upd}


# ---------------------------------------------------------------------------------------------------------------
# The loop


def build_student(c):
    """(student, tokenizer): a fresh preset with the teacher's tokenizer, or `model.checkpoint`."""
    if c.init_from_scratch:
        model_cfg = ml_collections.ConfigDict(c.model.to_dict() | {"checkpoint": ""})
        tokenizer_path = c.tokenizer.path or teacher_tokenizer_path(c.teacher.checkpoint)
        return train_state.build_model(model_cfg, c.seed, tokenizer_path)
    return train_state.build_model(c.model, c.seed, c.tokenizer.path)


def train(config, workdir: str) -> dict:
    """Runs (or resumes) distillation in `workdir`; exports the student to WORKDIR/model; returns final metrics."""
    validate(config)
    c = config
    os.makedirs(workdir, exist_ok=True)
    t_start = time.perf_counter()
    mesh = sharding.make_mesh(c.mesh.shape)
    student, tokenizer = build_student(c)
    if c.seq_len > student.cfg.max_seq_len:
        raise ValueError(f"seq_len={c.seq_len} exceeds the student's context max_seq_len={student.cfg.max_seq_len}")
    teacher_graphdef, teacher_params = None, None
    if c.distill.kl_weight > 0:
        teacher, _ = ckpt_lib.load_model(c.teacher.checkpoint, dtype=c.teacher.dtype)
        if teacher.cfg.vocab_size != student.cfg.vocab_size:
            raise ValueError(
                f"distill.kl_weight={c.distill.kl_weight}: token-level KL needs one vocabulary, but the teacher has "
                f"vocab_size={teacher.cfg.vocab_size} and the student {student.cfg.vocab_size}"
            )
        teacher_graphdef, teacher_params, teacher_state = train_state.split_model(teacher)
        teacher_params = jax.device_put(teacher_params, sharding.param_shardings(teacher_state, mesh))

    records = sft.load_records(c, workdir)  # also writes WORKDIR/data_manifest.jsonl
    data_kw = dict(
        encode=tokenizer.encode,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        seq_len=c.seq_len,
        batch_size=c.batch_size,
        seed=c.seed,
        on_error=c.data.on_error,
        fields=SFTFields(prompt=c.data.prompt_field, response=c.data.response_field),
    )
    data_it, data_stats = make_sft_iterator(records, **data_kw)
    num_steps = sft.epoch_steps(records, c.num_epochs, data_kw) if c.num_epochs else c.num_steps
    optimizer = train_state.make_optimizer(c.optim, num_steps)
    graphdef, state, state_shardings = train_state.create_train_state(student, optimizer, mesh, c.seed)
    identity = common.run_identity(c, ["data", "seq_len", "batch_size", "seed", "model", "distill"])
    loop = TrainLoop(
        workdir,
        c.checkpoint,
        identity,
        num_steps,
        desc="distill",
        log_every=c.log_every,
        postfix={"loss": "distill/loss"},
        max_consecutive_nonfinite=c.optim.max_consecutive_nonfinite,
    )
    state = loop.restore(state, state_shardings, data_it)

    batch_sh = sharding.batch_sharding(mesh, 2)
    teacher_sh = None if teacher_params is None else jax.tree.map(lambda x: x.sharding, teacher_params)
    step_fn = jax.jit(
        functools.partial(
            train_step,
            optimizer=optimizer,
            graphdef=graphdef,
            teacher_graphdef=teacher_graphdef,
            kl_weight=float(c.distill.kl_weight),
            direction=c.distill.kl_direction,
            temperature=float(c.distill.temperature),
            implementation=c.kernels.implementation,
            mesh=mesh,
        ),
        in_shardings=(state_shardings, teacher_sh, batch_sh),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    with loop:
        for step in loop.steps():
            batch = next(data_it)
            state, m = step_fn(state, teacher_params, distributed.global_batch(batch, batch_sh))
            loop.end_step(step, state, m, data_it.get_state)
    if loop.preempted:
        return {"preempted_at": loop.step}
    loop.export(graphdef, state.params, tokenizer)
    out = loop.float_metrics() | {"data/" + k: v for k, v in data_stats.items()}
    return out | {"student/num_params": student.cfg.num_params(), "perf/wall_time_s": time.perf_counter() - t_start}
