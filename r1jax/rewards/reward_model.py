"""Reward-model rewards (paper 2.3.4, all-scenario RL): a learned model's scores, plugged in as a callable.

`reward_model_reward` takes any `scorer(prompts, completions) -> list[float]`. For helpfulness the paper
scores only the final summary, so `summary_only=True` strips the <think> block (the text after the last
</think> is scored); harmlessness scores the whole response. A NaN or infinite score marks that completion
unscorable (None).

`RewardModelScorer` is that scorer for a reward model trained by `r1jax/trainers/reward_model.py`. Its export
directory is the backbone as a Hugging Face directory plus `reward_head.npz` (w, b) and `reward_model.json`
(template, seq_len); the format (`save_head`, `is_exported`), the text encoding (`encode_text`) and the forward
(`rewards`) live here, so the trainer and the scorer share one definition of each:

    [template(prompt) ; response ; eos] (last seq_len tokens) ─► backbone ─► h[last token] · w + b
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from r1jax import checkpoint as ckpt_lib
from r1jax.rewards.extract import summary_text
from r1jax.tokenizer import apply_template

HEAD_FILE, META_FILE = "reward_head.npz", "reward_model.json"

Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]


def reward_model_reward(
    completions: Sequence[str],
    *,
    prompts: Sequence[str],
    scorer: Scorer,
    summary_only: bool = False,
) -> list[float | None]:
    """The scorer's value per completion (None where it is not finite)."""
    if len(prompts) != len(completions):
        raise ValueError(f"len(prompts)={len(prompts)} != len(completions)={len(completions)}")
    texts = [summary_text(c) for c in completions] if summary_only else list(completions)
    scores = list(scorer(list(prompts), texts))
    if len(scores) != len(completions):
        raise ValueError(f"reward model scorer returned {len(scores)} scores for {len(completions)} completions")
    return [float(s) if s is not None and math.isfinite(float(s)) else None for s in scores]


# ---------------------------------------------------------------------------------------------------------------
# The learned reward model: encoding, forward, export format, scorer


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


def rewards(params, tokens_bt, lengths_b, *, graphdef):
    """Scalar reward per row (B,) f32: the linear head on the hidden state of the row's last real token.

    `params` is {'backbone': the model's pure-dict params, 'head': {'w': (D,), 'b': ()}}."""
    model = nnx.merge(graphdef, params["backbone"])
    mask_bt = jnp.arange(tokens_bt.shape[1])[None, :] < lengths_b[:, None]
    hidden_btd, _ = model(tokens_bt, mask_bt=mask_bt)
    last_bd = jnp.take_along_axis(hidden_btd, jnp.maximum(lengths_b - 1, 0)[:, None, None], axis=1)[:, 0]
    return last_bd.astype(jnp.float32) @ params["head"]["w"] + params["head"]["b"]


def save_head(path: str, head: dict, *, template: str, seq_len: int) -> None:
    """Write the head (w, b) and the encoding settings next to an exported backbone in `path`."""
    np.savez(os.path.join(path, HEAD_FILE), w=np.asarray(head["w"]), b=np.asarray(head["b"]))
    with open(os.path.join(path, META_FILE), "w") as fh:
        json.dump({"template": template, "seq_len": seq_len}, fh)


def is_exported(path: str) -> bool:
    """Whether `path` holds a complete reward-model export (backbone, head and metadata)."""
    return all(os.path.exists(os.path.join(path, f)) for f in ("config.json", HEAD_FILE, META_FILE))


class RewardModelScorer:
    """`scorer(prompts, responses) -> list[float]` from an exported reward model (the trainer's WORKDIR/model).

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
        graphdef, state = nnx.split(model)
        self.params = {
            "backbone": nnx.to_pure_dict(state),
            "head": {"w": jnp.asarray(head["w"]), "b": jnp.asarray(head["b"])},
        }
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
