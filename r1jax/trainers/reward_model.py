"""Reward model (paper 2.3.4, stage 5): a transformer with a scalar head trained on preference pairs.

    pairs (prompt, chosen, rejected) ─► [template(prompt) ; response ; eos], right-padded    tokens_bt (2B, T)
      ─► hidden = backbone(tokens) ─► r = h[last token] · w + b                              rewards_b (2B,)
      ─► Bradley–Terry loss  −log σ(r_chosen − r_rejected), mean over pairs                  ─► AdamW

Rows alternate chosen / rejected (row 2i is pair i's chosen, 2i+1 its rejected), so a data-parallel shard
always holds whole pairs. A pair longer than `seq_len` tokens keeps its last `seq_len` (the score is read at
the end). Held-out pairwise accuracy (ties count one half) is measured before training and every
`eval_every` steps; the built-in synthetic set also reports it per kind of rejected answer.

The text encoding, the forward and the export format are r1jax/rewards/reward_model.py's, shared with the
scorer: WORKDIR/model is the backbone as a Hugging Face directory plus `reward_head.npz` (w, b) and
`reward_model.json` (template, seq_len), and `r1jax.rewards.reward_model.RewardModelScorer(WORKDIR/model)` loads
it as the `scorer(prompts, responses) -> scores` that `r1jax.rewards.reward_model_reward` takes.
The paper trains separate helpfulness and harmlessness reward models; one model trained on both kinds of pairs
stands in for both here (the GRPO trainer scores the summary for helpfulness and the whole response for
harmlessness with it).
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from r1jax import checkpoint as ckpt_lib
from r1jax import distributed, sharding, train_state
from r1jax.data import preferences, provenance
from r1jax.rewards.reward_model import encode_text, pad_rows, rewards, save_head
from r1jax.trainers import common
from r1jax.trainers.loop import TrainLoop, checkpoint_config, validate_checkpoint


def reward_model_config() -> ml_collections.ConfigDict:
    """Every field the reward-model trainer reads, with defaults; experiment files change values only."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = train_state.model_config()  # model.checkpoint: the backbone (e.g. the stage-4 SFT model)
    c.tokenizer = train_state.tokenizer_config()
    c.template = "r1_zero"  # applied to every pair's prompt (and by the scorer to the policy's prompts)
    c.data = ml_collections.ConfigDict()
    c.data.source = "builtin"  # 'builtin' (r1jax.data.preferences) | 'files'
    c.data.num_pairs = 4000  # builtin: generated pairs (train + held out)
    c.data.seed = 13
    c.data.summary_fraction = 0.5  # builtin: share of pairs reduced to the summary
    c.data.files = ()  # JSONL / Parquet / ArrayRecord with prompt, chosen, rejected fields
    c.data.eval_files = ()  # held-out pairs; without them `eval_fraction` of the data is held out
    c.data.eval_fraction = 0.1
    c.data.eval_split = "test"  # builtin: the content split of the held-out pairs ('validation' to choose settings)
    c.data.prompt_field = "prompt"
    c.data.chosen_field = "chosen"
    c.data.rejected_field = "rejected"
    c.data.on_error = "raise"
    c.seq_len = 128  # T, tokens per row (prompt + response)
    c.batch_size = 16  # pairs per step (2B rows)
    c.num_steps = 300
    c.optim = train_state.optimizer_config(learning_rate=3e-4, warmup_steps=20, weight_decay=0.0)
    c.eval_every = 100  # steps between held-out evaluations (also before the first and after the last)
    c.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1)})
    c.checkpoint = checkpoint_config(every=100, max_to_keep=2)
    c.log_every = 10
    return c


def validate(c, num_devices: int | None = None) -> None:
    if not c.model.checkpoint:
        raise ValueError("model.checkpoint='': the reward model needs a backbone (--config.model.checkpoint=PATH)")
    if c.data.source not in ("builtin", "files"):
        raise ValueError(f"data.source={c.data.source!r}: expected 'builtin' or 'files'")
    if c.data.source == "files" and not c.data.files:
        raise ValueError("data.files=(): data.source='files' needs at least one file")
    for f in tuple(c.data.files) + tuple(c.data.eval_files):
        if not os.path.exists(f):
            raise ValueError(f"data.files / data.eval_files: no such file {f!r}")
    if not 0 < c.data.eval_fraction < 1:
        raise ValueError(f"data.eval_fraction={c.data.eval_fraction}: must be in (0, 1)")
    if c.data.eval_split not in ("validation", "test"):
        raise ValueError(f"data.eval_split={c.data.eval_split!r}: expected 'validation' or 'test'")
    if c.num_steps < 1 or c.batch_size < 1 or c.seq_len < 2:
        raise ValueError(f"num_steps={c.num_steps}, batch_size={c.batch_size}, seq_len={c.seq_len}: too small")
    train_state.validate_optimizer(c.optim)
    validate_checkpoint(c.checkpoint)
    dp = int(np.prod(sharding.resolve_mesh_shape(c.mesh.shape, num_devices)[:2]))
    if (2 * c.batch_size) % dp:
        raise ValueError(f"batch_size={c.batch_size}: 2·batch_size rows not divisible by the data-parallel size {dp}")


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_pairs(c, workdir: str | None = None) -> tuple[list[dict], list[dict]]:
    """(train pairs, held-out pairs), never sharing a prompt (r1jax.data.provenance).

    Built-in: the training pairs come from the 'train' content split and `eval_fraction` of `num_pairs` held-out
    pairs from `data.eval_split`. Files: `eval_files`, or else the pairs whose normalised prompt hashes below
    `eval_fraction` (all pairs of one prompt fall on one side). Held-out pairs whose prompt is a training prompt
    are dropped and counted in the log. With `workdir`, both sets' prompts go into WORKDIR/data_manifest.jsonl.
    """
    d = c.data
    kw = dict(
        prompt_field=d.prompt_field,
        chosen_field=d.chosen_field,
        rejected_field=d.rejected_field,
        on_error=d.on_error,
    )
    held_out = preferences.load_preference_pairs(list(d.eval_files), **kw) if d.eval_files else None
    if d.source == "builtin":
        n_eval = 0 if held_out is not None else max(1, int(round(d.eval_fraction * d.num_pairs)))
        make = functools.partial(preferences.preference_pairs, seed=d.seed, summary_fraction=d.summary_fraction)
        train = make(d.num_pairs - n_eval, split="train")
        if held_out is None:
            held_out = make(n_eval, split=d.eval_split)
    else:
        train = preferences.load_preference_pairs(list(d.files), **kw)
        if held_out is None:
            side = [provenance.hash_fraction(provenance.normalise_question(p["prompt"])) < d.eval_fraction
                    for p in train]
            train, held_out = [p for p, s in zip(train, side) if not s], [p for p, s in zip(train, side) if s]
    held_out, _ = provenance.dedupe_against(held_out, [p["prompt"] for p in train], field="prompt",
                                            what="held-out preference pairs")
    if not train or not held_out:
        raise ValueError(
            f"{len(train)} training and {len(held_out)} held-out preference pairs: need at least one of each "
            f"(data.eval_fraction={d.eval_fraction})"
        )
    if workdir is not None:
        provenance.record(workdir, [p["prompt"] for p in train], split="train", role="train", source="pairs")
        provenance.record(workdir, [p["prompt"] for p in held_out], split=d.eval_split, role="eval",
                          source="held_out_pairs")
    return train, held_out


def encode_pairs(tokenizer, pairs: list[dict], template: str, seq_len: int) -> dict[str, np.ndarray]:
    """Interleaved rows (2N, T): chosen, rejected, chosen, ... and their lengths."""
    rows = []
    for p in pairs:
        rows.append(encode_text(tokenizer, p["prompt"], p["chosen"], template, seq_len))
        rows.append(encode_text(tokenizer, p["prompt"], p["rejected"], template, seq_len))
    tokens, lengths = pad_rows(rows, seq_len, tokenizer.pad_id)
    return {"tokens_bt": tokens, "lengths_b": lengths}


def batch_at(data: dict[str, np.ndarray], step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
    """Pairs of step `step` (1-based): epochs of a fresh permutation each, so resuming needs only the step."""
    n = data["tokens_bt"].shape[0] // 2
    start = (step - 1) * batch_size
    idx = []
    while len(idx) < batch_size:
        epoch, offset = divmod(start + len(idx), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        idx.extend(perm[offset : offset + batch_size - len(idx)].tolist())
    rows = np.stack([np.array(idx) * 2, np.array(idx) * 2 + 1], axis=1).reshape(-1)
    return {k: v[rows] for k, v in data.items()}


# ---------------------------------------------------------------------------------------------------------------
# Model


def init_head(embed_dim: int) -> dict:
    """Zeros: every pair starts tied (accuracy 0.5, loss log 2), so the "before" evaluation is exactly chance."""
    return {"w": jnp.zeros((embed_dim,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def bradley_terry_loss(r_chosen_b, r_rejected_b):
    """Mean −log σ(r_chosen − r_rejected) (= softplus(−margin), stable for large margins)."""
    return jnp.mean(jax.nn.softplus(-(r_chosen_b - r_rejected_b)))


def pairwise_accuracy(r_chosen_b, r_rejected_b):
    """Share of pairs ranked right; a tie counts one half."""
    return jnp.mean((r_chosen_b > r_rejected_b) + 0.5 * (r_chosen_b == r_rejected_b))


def train_step(state, batch, *, graphdef, optimizer):
    def loss_fn(params):
        r_b = rewards(params, batch["tokens_bt"], batch["lengths_b"], graphdef=graphdef).reshape(-1, 2)
        return bradley_terry_loss(r_b[:, 0], r_b[:, 1]), r_b

    (loss, r_b), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state, m = train_state.apply_gradients(state, grads, loss, optimizer)
    return state, {
        "rm/loss": loss,
        "rm/accuracy": pairwise_accuracy(r_b[:, 0], r_b[:, 1]),
        "rm/margin": jnp.mean(r_b[:, 0] - r_b[:, 1]),
        **m,
    }


def create_state(model, head, optimizer, mesh, seed: int):
    """(graphdef, sharded TrainState with params {'backbone', 'head'}, its shardings)."""
    graphdef, backbone, nnx_state = train_state.split_model(model)
    rep = sharding.replicated(mesh)
    p_shard = {"backbone": sharding.param_shardings(nnx_state, mesh), "head": {"w": rep, "b": rep}}
    params = jax.device_put({"backbone": backbone, "head": head}, p_shard)
    opt_state = jax.jit(optimizer.init, out_shardings=train_state.opt_state_shardings(optimizer, params, p_shard, rep))(
        params
    )
    scalar = lambda v: jax.device_put(jnp.asarray(v, jnp.int32), rep)
    state = train_state.TrainState(
        step=scalar(0),
        params=params,
        opt_state=opt_state,
        rng=jax.device_put(jax.random.key_data(jax.random.PRNGKey(seed)), rep),
        nonfinite_consecutive=scalar(0),
        nonfinite_total=scalar(0),
    )
    return graphdef, state, jax.tree.map(lambda x: x.sharding, state)


def evaluate(score_fn, params, data: dict[str, np.ndarray], batch_size: int, kinds: list[str]) -> dict:
    """Held-out pairwise accuracy and mean margin (and per kind when the pairs name one)."""
    n = data["tokens_bt"].shape[0] // 2
    scores = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n  # the last batch wraps around: one shape, one compilation
        rows = np.stack([idx * 2, idx * 2 + 1], 1).reshape(-1)
        scores.append(np.asarray(score_fn(params, data["tokens_bt"][rows], data["lengths_b"][rows])).reshape(-1, 2))
    r_n2 = np.concatenate(scores)[:n]
    right = (r_n2[:, 0] > r_n2[:, 1]) + 0.5 * (r_n2[:, 0] == r_n2[:, 1])
    out = {"pairwise_accuracy": float(right.mean()), "margin": float((r_n2[:, 0] - r_n2[:, 1]).mean())}
    for kind in sorted(set(kinds) - {""}):
        sel = np.array([k == kind for k in kinds])
        out[f"pairwise_accuracy/{kind}"] = float(right[sel].mean())
    return out


def export(graphdef, params, tokenizer, c, path: str) -> str:
    """Backbone (HF directory) + head + metadata (r1jax.rewards.reward_model's format), written by process 0 to a
    temporary directory and renamed; `params` are host arrays."""
    if jax.process_index() != 0:
        return path
    tmp = path.rstrip("/") + ".rm_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt_lib.export_model(train_state.merge(graphdef, params["backbone"]), tokenizer, tmp)
    save_head(tmp, params["head"], template=c.template, seq_len=c.seq_len)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The loop


def train(config, workdir: str) -> dict:
    """Trains (or resumes) a reward model in `workdir`; exports WORKDIR/model; returns the final metrics."""
    validate(config)
    c = config
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(c.mesh.shape)
    model, tokenizer = train_state.build_model(c.model, c.seed, c.tokenizer.path)
    if c.seq_len > model.cfg.max_seq_len:
        raise ValueError(f"seq_len={c.seq_len} exceeds the model's context max_seq_len={model.cfg.max_seq_len}")
    train_pairs, eval_pairs = load_pairs(c, workdir)  # also writes WORKDIR/data_manifest.jsonl
    train_data = encode_pairs(tokenizer, train_pairs, c.template, c.seq_len)
    eval_data = encode_pairs(tokenizer, eval_pairs, c.template, c.seq_len)
    optimizer = train_state.make_optimizer(c.optim, c.num_steps)
    graphdef, state, state_shardings = create_state(model, init_head(model.cfg.embed_dim), optimizer, mesh, c.seed)
    identity = common.run_identity(c, ["data", "seq_len", "batch_size", "seed", "model.checkpoint"])
    loop = TrainLoop(
        workdir,
        c.checkpoint,
        identity,
        c.num_steps,
        desc="reward model",
        log_every=c.log_every,
        postfix={"loss": "rm/loss", "acc": "rm/accuracy"},
        max_consecutive_nonfinite=c.optim.max_consecutive_nonfinite,
    )
    state = loop.restore(state, state_shardings)

    batch_sh = {"tokens_bt": sharding.batch_sharding(mesh, 2), "lengths_b": sharding.batch_sharding(mesh, 1)}
    step_fn = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer),
        in_shardings=(state_shardings, batch_sh),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    score_jit = jax.jit(
        functools.partial(rewards, graphdef=graphdef),
        in_shardings=(state_shardings.params, batch_sh["tokens_bt"], batch_sh["lengths_b"]),
        out_shardings=sharding.replicated(mesh),
    )

    def score_fn(params, tokens_bt, lengths_b):
        batch = distributed.global_batch({"tokens_bt": tokens_bt, "lengths_b": lengths_b}, batch_sh)
        return score_jit(params, batch["tokens_bt"], batch["lengths_b"])

    kinds = [p.get("kind", "") for p in eval_pairs]

    def run_eval():
        return {f"eval/{k}": v for k, v in evaluate(score_fn, state.params, eval_data, c.batch_size, kinds).items()}

    with loop:
        first = run_eval() if loop.start_step == 0 else None
        if first is not None:
            loop.write(0, first)
        for step in loop.steps():
            batch = batch_at(train_data, step, c.batch_size, c.seed)
            state, m = step_fn(state, distributed.global_batch(batch, batch_sh))
            loop.end_step(step, state, m)
            if c.eval_every and step % c.eval_every == 0 and step < c.num_steps and not loop.preempted:
                loop.write(step, run_eval())
        if loop.preempted:
            return {"preempted_at": loop.step}
        final = run_eval()
        loop.write(c.num_steps, final)
    results = dict(final)
    if first is not None:
        results |= {k.replace("eval/", "eval_init/", 1): v for k, v in first.items()}
    results |= loop.float_metrics()
    results |= {"data/num_train_pairs": len(train_pairs), "data/num_eval_pairs": len(eval_pairs)}
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as fh:
            json.dump(results, fh, indent=1)
    export(graphdef, distributed.fetch(state.params), tokenizer, c, os.path.join(workdir, "model"))
    return results
