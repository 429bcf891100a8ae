"""Supervised trainer: stage-0 pretraining, cold-start SFT (stage 2), rejection-sampling SFT (stage 4).

Packed rows of [prompt ; response] with the loss on response tokens only:

    records ─► tokenize, pack (grain) ─► tokens_bt, targets_bt, loss_mask_bt, segment_ids_bt, positions_bt
      ─► hidden = model(tokens, segments, positions) ─► log π(target) (fused kernel, no B×T×V logits)
      ─► loss = −Σ mask·log π / Σ mask ─► AdamW

The data come either from a built-in task (`data.source='task'`: the mixed-quality pretraining corpus or the
clean cold-start set) or from JSONL / Parquet / ArrayRecord files with prompt/response fields.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from r1jax import distributed, sharding, train_state
from r1jax import metrics as metrics_lib
from r1jax.data import corpus, formats, provenance
from r1jax.data import tasks as tasks_lib
from r1jax.data.sft import SFTFields, load_sft_records, make_sft_iterator
from r1jax.models import logprobs
from r1jax.tokenizer import SentencePieceTokenizer, apply_template
from r1jax.trainers import common
from r1jax.trainers.loop import TrainLoop, checkpoint_config, validate_checkpoint


def sft_config() -> ml_collections.ConfigDict:
    """Every field the SFT trainer reads, with defaults; experiment files change values, never add fields."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = train_state.model_config()
    c.init_from_scratch = False  # True: a fresh `model.preset` (stage 0), ignoring model.checkpoint
    c.tokenizer = train_state.tokenizer_config()
    c.tokenizer.train_vocab_size = 0  # > 0: train a sentencepiece model of this size on the corpus (stage 0)
    c.template = "r1_zero"
    c.data = ml_collections.ConfigDict()
    c.data.source = "pretrain"  # 'pretrain' | 'cold_start' (built-in corpora) | 'files' | 'traces' (chat-format files)
    c.data.task = "arithmetic"
    c.data.difficulty = 1
    c.data.num_examples = 20_000
    c.data.seed = 3
    c.data.format_rate = 0.4  # pretrain corpus: fraction of responses in the <think>/<answer> format
    c.data.error_rate = 0.3  # pretrain corpus: fraction of solutions with a wrong step or answer
    c.data.direct_rate = 0.0  # pretrain corpus: fraction of one-step direct answers (tasks with solution styles)
    c.data.direct_error_rate = 0.0  # pretrain corpus: fraction of direct answers that are wrong
    c.data.recheck_rate = 0.0  # pretrain corpus: fraction of worked solutions whose slip a re-check step fixes
    c.data.checked_direct_rate = 0.0  # pretrain corpus: fraction of direct answers a worked re-check follows
    c.data.language_mix_rate = 0.0  # built-in corpora: fraction of responses mixing a second script into the reasoning
    c.data.files = ()
    c.data.prompt_field = "prompt"
    c.data.response_field = "response"
    c.data.on_error = "raise"
    c.seq_len = 256  # packed row length T
    c.batch_size = 16  # packed rows per step B
    c.num_steps = 1000
    c.num_epochs = 0  # > 0: instead of num_steps, this many passes over the data (packed batches are counted)
    c.optim = train_state.optimizer_config(learning_rate=1e-3, warmup_steps=50, weight_decay=0.01)
    c.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1)})
    c.kernels = ml_collections.ConfigDict({"implementation": "auto"})
    c.checkpoint = checkpoint_config(every=200, max_to_keep=2)
    c.log_every = 10
    return c


def validate(c, num_devices: int | None = None) -> None:
    if c.data.source not in ("pretrain", "cold_start", "files", "traces"):
        raise ValueError(f"data.source={c.data.source!r}: expected 'pretrain', 'cold_start', 'files' or 'traces'")
    if c.data.source in ("files", "traces") and not c.data.files:
        raise ValueError(f"data.files=(): data.source={c.data.source!r} needs at least one file")
    for f in c.data.files:
        if not os.path.exists(f):
            raise ValueError(f"data.files: no such file {f!r}")
    if not 0 <= c.data.language_mix_rate <= 1:
        raise ValueError(f"data.language_mix_rate={c.data.language_mix_rate}: must be in [0, 1]")
    if c.num_steps < 1:
        raise ValueError(f"num_steps={c.num_steps}: must be >= 1")
    if c.num_epochs < 0:
        raise ValueError(f"num_epochs={c.num_epochs}: must be >= 0")
    if c.seq_len < 2:
        raise ValueError(f"seq_len={c.seq_len}: must be >= 2")
    train_state.validate_optimizer(c.optim)
    validate_checkpoint(c.checkpoint)
    dp = np.prod(sharding.resolve_mesh_shape(c.mesh.shape, num_devices)[:2])
    if c.batch_size % dp:
        raise ValueError(f"batch_size={c.batch_size}: not divisible by the data-parallel size {dp}")
    if not c.init_from_scratch and not c.model.checkpoint:
        raise ValueError("model.checkpoint='': SFT needs a checkpoint to start from (or init_from_scratch=True)")


def load_records(c, workdir: str | None = None) -> list[dict] | list[str]:
    """The stage's SFT records (built-in corpora: train split only), or its files' paths. With `workdir`, the
    questions trained on go into WORKDIR/data_manifest.jsonl (prompts with the template taken off)."""
    if workdir is not None:
        records = load_records(c)
        rows = records
        if c.data.source == "files":  # the manifest needs the questions: the files are read here too
            fields = SFTFields(prompt=c.data.prompt_field, response=c.data.response_field)
            rows = load_sft_records(records, fields, on_error=c.data.on_error)
        questions = provenance.questions_of(rows, field="prompt", template=c.template)
        provenance.record(workdir, questions, split="train", role="train", source="sft_data")
        return records
    if c.data.source == "files":
        return list(c.data.files)
    if c.data.source == "traces":  # chat-format reasoning traces: the user turn through the run's template
        return list(formats.load_traces(list(c.data.files), functools.partial(apply_template, template=c.template),
                                        on_error=c.data.on_error))
    task = tasks_lib.get_task(c.data.task)
    kw = dict(seed=c.data.seed, difficulty=c.data.difficulty, template=c.template)
    if c.data.source == "pretrain":
        return corpus.pretraining_records(
            task,
            c.data.num_examples,
            format_rate=c.data.format_rate,
            error_rate=c.data.error_rate,
            direct_rate=c.data.direct_rate,
            direct_error_rate=c.data.direct_error_rate,
            recheck_rate=c.data.recheck_rate,
            checked_direct_rate=c.data.checked_direct_rate,
            language_mix_rate=c.data.language_mix_rate,
            **kw,
        )
    return corpus.cold_start_records(task, c.data.num_examples, language_mix_rate=c.data.language_mix_rate, **kw)


def epoch_steps(records, num_epochs: int, data_kw: dict) -> int:
    """Packed batches in `num_epochs` passes over the data (the packer's output is counted, not estimated)."""
    count_it, _ = make_sft_iterator(records, num_epochs=num_epochs, **data_kw)
    steps = sum(1 for _ in count_it)
    if steps < 1:
        raise ValueError(f"num_epochs={num_epochs}: the data fill no batch of batch_size={data_kw['batch_size']}")
    return steps


def sft_loss(params, batch, *, graphdef, implementation, mesh=None):
    """Mean negative log-likelihood of the response tokens of packed rows (`mesh`: the step's, for the kernel)."""
    model = train_state.merge(graphdef, params)
    hidden = logprobs.packed_hidden(model, batch["tokens_bt"], batch["segment_ids_bt"], batch["positions_bt"])
    logp_bt = logprobs.token_logps(model, hidden, batch["targets_bt"], implementation=implementation, mesh=mesh)
    mask = batch["loss_mask_bt"].astype(jnp.float32)
    return -(logp_bt * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def train_step(state, batch, *, graphdef, optimizer, implementation, mesh=None):
    loss, grads = jax.value_and_grad(sft_loss)(
        state.params, batch, graphdef=graphdef, implementation=implementation, mesh=mesh
    )
    state, m = train_state.apply_gradients(state, grads, loss, optimizer)
    return state, {"sft/loss": loss, **m}


def train(config, workdir: str) -> dict:
    validate(config)
    c = config
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(c.mesh.shape)
    records = load_records(c, workdir)  # also writes WORKDIR/data_manifest.jsonl
    tok_path = c.tokenizer.path
    if c.tokenizer.train_vocab_size:
        tok_path = os.path.join(workdir, "tokenizer.model")
        if not os.path.exists(tok_path):  # a resumed run keeps its tokenizer
            SentencePieceTokenizer.train(
                corpus.tokenizer_texts(records), vocab_size=c.tokenizer.train_vocab_size
            ).save(tok_path)
    model_cfg = c.model
    if c.init_from_scratch:
        model_cfg = ml_collections.ConfigDict(c.model.to_dict())
        model_cfg.checkpoint = ""
    model, tokenizer = train_state.build_model(model_cfg, c.seed, tok_path)
    if c.seq_len > model.cfg.max_seq_len:
        raise ValueError(f"seq_len={c.seq_len} exceeds the model's context max_seq_len={model.cfg.max_seq_len}")
    data_kw = dict(
        encode=tokenizer.encode, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
        seq_len=c.seq_len, batch_size=c.batch_size, seed=c.seed, on_error=c.data.on_error,
        fields=SFTFields(prompt=c.data.prompt_field, response=c.data.response_field),
    )
    data_it, data_stats = make_sft_iterator(records, **data_kw)
    num_steps = epoch_steps(records, c.num_epochs, data_kw) if c.num_epochs else c.num_steps
    optimizer = train_state.make_optimizer(c.optim, num_steps)
    graphdef, state, state_shardings = train_state.create_train_state(model, optimizer, mesh, c.seed)
    identity = common.run_identity(c, ["data.source", "data.task", "data.files", "seq_len", "batch_size", "seed"])
    loop = TrainLoop(
        workdir, c.checkpoint, identity, num_steps, desc="sft", log_every=c.log_every, postfix={"loss": "sft/loss"},
        max_consecutive_nonfinite=c.optim.max_consecutive_nonfinite,
    )
    state = loop.restore(state, state_shardings, data_it)

    batch_sh = sharding.batch_sharding(mesh, 2)
    step_fn = jax.jit(
        functools.partial(
            train_step, graphdef=graphdef, optimizer=optimizer, implementation=c.kernels.implementation, mesh=mesh
        ),
        in_shardings=(state_shardings, batch_sh), out_shardings=(state_shardings, None), donate_argnums=0,
    )
    with loop:
        for step in loop.steps():
            batch = next(data_it)
            state, m = step_fn(state, distributed.global_batch(batch, batch_sh))
            loop.end_step(step, state, m, data_it.get_state, tokens=int((batch["segment_ids_bt"] > 0).sum()))
    if loop.preempted:
        return {"preempted_at": loop.step}
    if jax.process_index() == 0:
        metrics_lib.plot_curves(metrics_lib.read_history(workdir), ["sft/loss"], os.path.join(workdir, "curves.png"))
    loop.export(graphdef, state.params, tokenizer)
    return loop.float_metrics() | {"data/" + k: v for k, v in data_stats.items()}
