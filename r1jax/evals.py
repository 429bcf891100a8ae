"""Evaluation as in the paper (section 3, "Evaluation Setup"): pass@1 averaged over k samples at T = 0.6,
top-p = 0.95, cons@k (majority vote over the k extracted answers), greedy accuracy, format rate, mean length.

    r1jax eval --config experiments/eval.py:tiny --workdir /tmp/ev --config.model.checkpoint=/tmp/r1z/model

An answer counts only in the template's format (inside <answer> tags, the way R1's accuracy reward asks for a
specified format), and is checked by the task's verifier (or math-verify for files with gold answers).
"""

from __future__ import annotations

import collections
import json
import os

import jax
import numpy as np

from r1jax import sampling
from r1jax.rewards import accuracy_reward, format_reward, language_consistency_reward
from r1jax.rewards.extract import extract_answer
from r1jax.tokenizer import apply_template

METRICS = ("pass@1", "cons@k", "greedy_accuracy", "format_rate", "language_consistency", "mean_length")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_vote(answers: list[str | None]) -> str | None:
    """The most frequent extracted answer, ties to the first seen. "No answer" (None) is a candidate too, so k
    samples that mostly fail to answer do not win on the strength of a single lucky one."""
    counts = collections.Counter(answers)
    best = max(counts.values())
    return next(a for a in answers if counts[a] == best)


class Evaluator:
    """Held-out evaluation of a policy given as (graphdef, params); call it with params to get the metrics."""

    def __init__(
        self, graphdef, tokenizer, records, task, *, template, response_prefix="", max_new_tokens, num_samples=4,
        temperature=0.6, top_p=0.95, greedy=True, max_prompt_len=512, prompt_bucket=32, mesh=None, seed=0,
        extract=("answer_tag",), format_mode="strict", language="en",
    ):
        self.graphdef, self.tokenizer, self.records, self.task = graphdef, tokenizer, list(records), task
        self.k, self.greedy, self.mesh, self.seed = num_samples, greedy, mesh, seed
        self.extract, self.prefix, self.format_mode = tuple(extract), response_prefix, format_mode
        self.language = language  # target of the language-consistency metric (share of the CoT in its script)
        self.prompt_ids = tokenizer.encode_batch([apply_template(r["question"], template) + response_prefix
                                                  for r in self.records])
        for r, ids in zip(self.records, self.prompt_ids):
            if len(ids) > max_prompt_len:
                raise ValueError(f"eval prompt {r['id']!r} has {len(ids)} tokens > max_prompt_len={max_prompt_len}")
        common = dict(
            max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, prompt_bucket=prompt_bucket
        )
        self.sample_cfg = sampling.SamplingConfig(
            num_samples=num_samples, temperature=temperature, top_p=top_p, **common
        )
        self.greedy_cfg = sampling.SamplingConfig(num_samples=1, greedy=True, **common)

    def _generate(self, params, cfg, rng):
        rollout = sampling.sample(self.graphdef, params, self.prompt_ids, rng, cfg, mesh=self.mesh)
        from r1jax.trainers.grpo import decode_completions

        return decode_completions(self.tokenizer, rollout), np.asarray(rollout.lengths_b)

    def score(self, completions: list[str], records: list[dict]):
        correct = accuracy_reward(
            completions, [r.get("answer") for r in records], examples=records, extract=self.extract,
            prefix=self.prefix,
        )
        formatted = format_reward(completions, mode=self.format_mode, prefix=self.prefix)
        answers = [extract_answer(self.prefix + c, self.extract) for c in completions]
        return np.array([bool(x) for x in correct]), np.array(formatted) > 0, answers

    def __call__(self, params, return_samples: bool = False) -> dict:
        n, k = len(self.records), self.k
        rng = jax.random.PRNGKey(self.seed + 12345)
        completions, lengths = self._generate(params, self.sample_cfg, rng)
        recs = [r for r in self.records for _ in range(k)]
        correct, formatted, answers = self.score(completions, recs)
        correct_pk = correct.reshape(n, k)
        cons = []
        for p in range(n):
            vote = majority_vote(answers[p * k : (p + 1) * k])
            ok = vote is not None and accuracy_reward(
                [f"<answer>{vote}</answer>"], [self.records[p].get("answer")], examples=[self.records[p]],
                extract=("answer_tag",),
            )[0]
            cons.append(bool(ok))
        out = {
            "pass@1": float(correct_pk.mean()),
            "cons@k": float(np.mean(cons)),
            "format_rate": float(formatted.mean()),
            "language_consistency": float(np.mean(language_consistency_reward(
                completions, examples=recs, language=self.language, prefix=self.prefix
            ))),
            "mean_length": float(lengths.mean()),
            "k": k,
            "num_prompts": n,
        }
        if self.greedy:
            g_comp, _ = self._generate(params, self.greedy_cfg, rng)
            out["greedy_accuracy"] = float(self.score(g_comp, self.records)[0].mean())
        if return_samples:
            out["samples"] = [
                {"id": r["id"], "completion": c, "correct": bool(ok)} for r, c, ok in zip(recs, completions, correct)
            ]
        return out


def write_results(results: dict[str, dict], path_prefix: str) -> tuple[str, str]:
    """`results` maps a name (e.g. 'base', 'final') to metrics; writes PREFIX.json and a Markdown table PREFIX.md."""
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    with open(path_prefix + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(path_prefix + ".md", "w") as f:
        f.write(markdown_table(results) + "\n")
    return path_prefix + ".json", path_prefix + ".md"


def markdown_table(results: dict[str, dict]) -> str:
    rows = ["| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, m in results.items():
        cells = [f"{m[k]:.3f}" if isinstance(m.get(k), float) else str(m.get(k, "")) for k in METRICS]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def evaluate_model_dir(config, model_dir: str) -> dict:
    """Evaluate the model saved in `model_dir` on the held-out split that `config` (a GRPO config) defines."""
    import ml_collections

    from r1jax import sharding
    from r1jax.trainers import common
    from r1jax.trainers import grpo as grpo_trainer

    mesh = sharding.make_mesh(config.mesh.shape)
    _, eval_records, task = grpo_trainer.load_splits(config)
    model_cfg = ml_collections.ConfigDict(config.model.to_dict() | {"checkpoint": model_dir})
    model, tokenizer = common.build_model(model_cfg, config.seed, config.tokenizer.path)
    graphdef, params, _ = common.split_model(model)
    e = config.eval
    evaluator = Evaluator(
        graphdef, tokenizer, eval_records[: e.num_prompts], task, template=config.template,
        response_prefix=config.response_prefix, max_new_tokens=config.sampling.max_new_tokens,
        num_samples=e.num_samples, temperature=e.temperature, top_p=e.top_p, greedy=e.greedy,
        max_prompt_len=config.sampling.max_prompt_len, prompt_bucket=config.sampling.prompt_bucket, mesh=mesh,
        seed=config.seed,
    )
    return jax.device_get(evaluator(params))


def run(config, workdir: str) -> dict:
    """`r1jax eval`: evaluate `model.checkpoint` on the held-out split; writes WORKDIR/eval.json and eval.md."""
    if not config.model.checkpoint:
        raise ValueError("model.checkpoint='': pass the model to evaluate with --config.model.checkpoint=PATH")
    metrics = evaluate_model_dir(config, config.model.checkpoint)
    name = os.path.basename(os.path.normpath(config.model.checkpoint))
    write_results({name: metrics}, os.path.join(workdir, "eval"))
    return metrics
