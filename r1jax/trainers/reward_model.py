"""Reward model (paper 2.3.4, stage 5): a transformer with a scalar head trained on preference pairs.

    pairs (prompt, chosen, rejected) ─► [template(prompt) ; response ; eos], right-padded    tokens_bt (2B, T)
      ─► hidden = backbone(tokens) ─► r = h[last token] · w + b                              rewards_b (2B,)
      ─► Bradley–Terry loss  −log σ(r_chosen − r_rejected), mean over pairs                  ─► AdamW

Rows alternate chosen / rejected (row 2i is pair i's chosen, 2i+1 its rejected), so a data-parallel shard
always holds whole pairs. A pair longer than `seq_len` tokens keeps its last `seq_len` (the score is read at
the end). Held-out pairwise accuracy (ties count one half) is measured before training and every
`eval_every` steps; the built-in synthetic set also reports it per kind of rejected answer.

The export, WORKDIR/model, is the backbone as a Hugging Face directory plus `reward_head.npz` (w, b) and
`reward_model.json` (template, seq_len); `RewardModelScorer(WORKDIR/model)` loads it as the
`scorer(prompts, responses) -> scores` that `r1jax.rewards.reward_model_reward` takes.
The paper trains separate helpfulness and harmlessness reward models; one model trained on both kinds of pairs
stands in for both here (the GRPO trainer scores the summary for helpfulness and the whole response for
harmlessness with it).
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from r1jax import checkpoint as ckpt_lib
from r1jax import metrics as metrics_lib
from r1jax import sharding
from r1jax.data import preferences
from r1jax.tokenizer import apply_template
from r1jax.trainers import common

HEAD_FILE, META_FILE = "reward_head.npz", "reward_model.json"


def reward_model_config() -> ml_collections.ConfigDict:
    """Every field the reward-model trainer reads, with defaults; experiment files change values only."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = common.model_config()  # model.checkpoint: the backbone (e.g. the stage-4 SFT model)
    c.tokenizer = common.tokenizer_config()
    c.template = "r1_zero"  # applied to every pair's prompt (and by the scorer to the policy's prompts)
    c.data = ml_collections.ConfigDict()
    c.data.source = "builtin"  # 'builtin' (r1jax.data.preferences) | 'files'
    c.data.num_pairs = 4000  # builtin: generated pairs (train + held out)
    c.data.seed = 13
    c.data.summary_fraction = 0.5  # builtin: share of pairs reduced to the summary
    c.data.files = ()  # JSONL / Parquet / ArrayRecord with prompt, chosen, rejected fields
    c.data.eval_files = ()  # held-out pairs; without them `eval_fraction` of the data is held out
    c.data.eval_fraction = 0.1
    c.data.prompt_field = "prompt"
    c.data.chosen_field = "chosen"
    c.data.rejected_field = "rejected"
    c.data.on_error = "raise"
    c.seq_len = 128  # T, tokens per row (prompt + response)
    c.batch_size = 16  # pairs per step (2B rows)
    c.num_steps = 300
    c.optim = common.optimizer_config(learning_rate=3e-4, warmup_steps=20, weight_decay=0.0)
    c.eval_every = 100  # steps between held-out evaluations (also before the first and after the last)
    c.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1)})
    c.checkpoint = ml_collections.ConfigDict({"every": 100, "max_to_keep": 2, "async_save": True})
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
    if c.num_steps < 1 or c.batch_size < 1 or c.seq_len < 2:
        raise ValueError(f"num_steps={c.num_steps}, batch_size={c.batch_size}, seq_len={c.seq_len}: too small")
    common.validate_optimizer(c.optim)
    dp = int(np.prod(sharding.resolve_mesh_shape(c.mesh.shape, num_devices)[:2]))
    if (2 * c.batch_size) % dp:
        raise ValueError(f"batch_size={c.batch_size}: 2·batch_size rows not divisible by the data-parallel size {dp}")


# ---------------------------------------------------------------------------------------------------------------
# Data


def load_pairs(c) -> tuple[list[dict], list[dict]]:
    """(train pairs, held-out pairs)."""
    d = c.data
    if d.source == "builtin":
        pairs = preferences.preference_pairs(d.num_pairs, seed=d.seed, summary_fraction=d.summary_fraction)
    else:
        kw = dict(
            prompt_field=d.prompt_field,
            chosen_field=d.chosen_field,
            rejected_field=d.rejected_field,
            on_error=d.on_error,
        )
        pairs = preferences.load_preference_pairs(list(d.files), **kw)
    if d.eval_files:
        kw = dict(
            prompt_field=d.prompt_field,
            chosen_field=d.chosen_field,
            rejected_field=d.rejected_field,
            on_error=d.on_error,
        )
        return pairs, preferences.load_preference_pairs(list(d.eval_files), **kw)
    pairs = list(pairs)
    random.Random(d.seed).shuffle(pairs)
    n_eval = max(1, int(round(d.eval_fraction * len(pairs))))
    if len(pairs) - n_eval < 1:
        raise ValueError(f"{len(pairs)} preference pairs: too few to hold out data.eval_fraction={d.eval_fraction}")
    return pairs[n_eval:], pairs[:n_eval]


def encode_text(tokenizer, prompt: str, response: str, template: str, seq_len: int) -> list[int]:
    """[template(prompt) ; response ; eos], the last `seq_len` tokens (the score is read at the end)."""
    ids = tokenizer.encode(apply_template(prompt, template)) + tokenizer.encode(response) + [tokenizer.eos_id]
    return ids[-seq_len:]


def pad_rows(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (tokens_bt int32, lengths_b int32)."""
    tokens = np.full((len(rows), length), pad_id, np.int32)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    return tokens, np.array([len(r) for r in rows], np.int32)


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


def rewards(params, tokens_bt, lengths_b, *, graphdef):
    """Scalar reward per row (B,) f32: the linear head on the hidden state of the row's last real token."""
    model = common.merge(graphdef, params["backbone"])
    mask_bt = jnp.arange(tokens_bt.shape[1])[None, :] < lengths_b[:, None]
    hidden_btd, _ = model(tokens_bt, mask_bt=mask_bt)
    last_bd = jnp.take_along_axis(hidden_btd, jnp.maximum(lengths_b - 1, 0)[:, None, None], axis=1)[:, 0]
    return last_bd.astype(jnp.float32) @ params["head"]["w"] + params["head"]["b"]


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
    state, m = common.apply_gradients(state, grads, loss, optimizer)
    return state, {
        "rm/loss": loss,
        "rm/accuracy": pairwise_accuracy(r_b[:, 0], r_b[:, 1]),
        "rm/margin": jnp.mean(r_b[:, 0] - r_b[:, 1]),
        **m,
    }


def create_state(model, head, optimizer, mesh, seed: int):
    """(graphdef, sharded TrainState with params {'backbone', 'head'}, its shardings)."""
    graphdef, backbone, nnx_state = common.split_model(model)
    rep = sharding.replicated(mesh)
    p_shard = {"backbone": sharding.param_shardings(nnx_state, mesh), "head": {"w": rep, "b": rep}}
    params = jax.device_put({"backbone": backbone, "head": head}, p_shard)
    opt_state = jax.jit(optimizer.init)(params)
    opt_state = jax.tree.map(
        lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding) else jax.device_put(x, rep), opt_state
    )
    scalar = lambda v: jax.device_put(jnp.asarray(v, jnp.int32), rep)
    state = common.TrainState(
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
    """Backbone (HF directory) + head + metadata, written to a temporary directory and renamed."""
    tmp = path.rstrip("/") + ".rm_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt_lib.export_model(common.merge(graphdef, params["backbone"]), tokenizer, tmp)
    head = jax.device_get(params["head"])
    np.savez(os.path.join(tmp, HEAD_FILE), w=np.asarray(head["w"]), b=np.asarray(head["b"]))
    with open(os.path.join(tmp, META_FILE), "w") as fh:
        json.dump({"template": c.template, "seq_len": c.seq_len}, fh)
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
    model, tokenizer = common.build_model(c.model, c.seed, c.tokenizer.path)
    if c.seq_len > model.cfg.max_seq_len:
        raise ValueError(f"seq_len={c.seq_len} exceeds the model's context max_seq_len={model.cfg.max_seq_len}")
    train_pairs, eval_pairs = load_pairs(c)
    train_data = encode_pairs(tokenizer, train_pairs, c.template, c.seq_len)
    eval_data = encode_pairs(tokenizer, eval_pairs, c.template, c.seq_len)
    optimizer = common.make_optimizer(c.optim, c.num_steps)
    graphdef, state, state_shardings = create_state(model, init_head(model.cfg.embed_dim), optimizer, mesh, c.seed)
    checkpointer = ckpt_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=c.checkpoint.max_to_keep, async_save=c.checkpoint.async_save
    )
    identity = common.run_identity(c, ["data", "seq_len", "batch_size", "seed", "model.checkpoint"])
    state, _, start = common.restore_or_start(checkpointer, state, state_shardings, identity, False)

    batch_sh = {"tokens_bt": sharding.batch_sharding(mesh, 2), "lengths_b": sharding.batch_sharding(mesh, 1)}
    step_fn = jax.jit(
        functools.partial(train_step, graphdef=graphdef, optimizer=optimizer),
        in_shardings=(state_shardings, batch_sh),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    score_fn = jax.jit(functools.partial(rewards, graphdef=graphdef))
    kinds = [p.get("kind", "") for p in eval_pairs]
    run_eval = lambda: evaluate(score_fn, state.params, eval_data, c.batch_size, kinds)
    writer = metrics_lib.MetricsWriter(workdir)
    first = run_eval() if start == 0 else None
    if first is not None:
        writer.write(0, {f"eval/{k}": v for k, v in first.items()})
    bar = metrics_lib.progress(c.num_steps, initial=start, desc="reward model")
    m = {}
    for step in range(start + 1, c.num_steps + 1):
        batch = batch_at(train_data, step, c.batch_size, c.seed)
        state, m = step_fn(state, jax.device_put(batch, batch_sh))
        if step % c.log_every == 0 or step == c.num_steps:
            m = jax.device_get(m)
            writer.write(step, m)
            bar.set_postfix(loss=f"{float(m['rm/loss']):.3f}", acc=f"{float(m['rm/accuracy']):.2f}")
        if c.eval_every and step % c.eval_every == 0 and step < c.num_steps:
            writer.write(step, {f"eval/{k}": v for k, v in run_eval().items()})
        bar.update(1)
        if step % c.checkpoint.every == 0 or step == c.num_steps:
            checkpointer.save(step, common.state_to_dict(state), {"step": step}, identity)
    bar.close()
    checkpointer.close()
    final = run_eval()
    writer.write(c.num_steps, {f"eval/{k}": v for k, v in final.items()})
    writer.close()
    results = {"eval/" + k: v for k, v in final.items()}
    if first is not None:
        results |= {"eval_init/" + k: v for k, v in first.items()}
    results |= {k: float(v) for k, v in m.items()}
    results |= {"data/num_train_pairs": len(train_pairs), "data/num_eval_pairs": len(eval_pairs)}
    with open(os.path.join(workdir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    export(graphdef, jax.device_get(state.params), tokenizer, c, os.path.join(workdir, "model"))
    return results


# ---------------------------------------------------------------------------------------------------------------
# Scoring for RL


def is_exported(path: str) -> bool:
    return all(os.path.exists(os.path.join(path, f)) for f in ("config.json", HEAD_FILE, META_FILE))


class RewardModelScorer:
    """`scorer(prompts, responses) -> list[float]` from an exported reward model (WORKDIR/model).

    Prompts are the bare questions; the template the model was trained with is applied here. Rows are padded to
    `batch_size` and to a power-of-two length (at least 16), so a stream of batches compiles a few times only.
    Thread-safe (the GRPO trainer calls it from a reward thread).
    """

    def __init__(self, path: str, *, batch_size: int = 32, dtype: str = "float32"):
        if not is_exported(path):
            raise FileNotFoundError(
                f"reward model {path!r}: expected config.json, {HEAD_FILE} and {META_FILE} (a reward_model export)"
            )
        model, self.tokenizer = ckpt_lib.load_model(path, dtype=dtype)
        with open(os.path.join(path, META_FILE)) as fh:
            meta = json.load(fh)
        self.template, self.seq_len = meta["template"], int(meta["seq_len"])
        head = np.load(os.path.join(path, HEAD_FILE))
        graphdef, backbone, _ = common.split_model(model)
        self.params = {"backbone": backbone, "head": {"w": jnp.asarray(head["w"]), "b": jnp.asarray(head["b"])}}
        self.batch_size = batch_size
        self._score = jax.jit(functools.partial(rewards, graphdef=graphdef))
        self._lock = threading.Lock()

    def __call__(self, prompts, responses) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"len(prompts)={len(prompts)} != len(responses)={len(responses)}")
        rows = [encode_text(self.tokenizer, p, r, self.template, self.seq_len) for p, r in zip(prompts, responses)]
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            longest, length = max(len(r) for r in chunk), 16
            while length < longest:
                length *= 2
            length = max(min(length, self.seq_len), longest)
            tokens, lengths = pad_rows(
                chunk + [chunk[0]] * (self.batch_size - len(chunk)), length, self.tokenizer.pad_id
            )
            with self._lock:
                scores = np.asarray(self._score(self.params, tokens, lengths))
            out.extend(float(s) for s in scores[: len(chunk)])
        return out
