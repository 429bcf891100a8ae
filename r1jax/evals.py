"""Evaluation as in the paper (section 3, "Evaluation Setup"), with the metrics that tell apart what moved.

    r1jax eval --config experiments/eval.py:tiny --workdir /tmp/ev --config.model.checkpoint=/tmp/r1z/model

k samples per prompt at T = 0.6, top-p = 0.95 (plus one greedy), then, each with a 95% bootstrap interval:

    pass@1                 strict, the paper's: the response follows the template and the answer inside its
                           <answer> tags is right (checked by the task's verifier, or math-verify against a gold
                           answer), averaged over the k samples and the prompts
    format_rate            share of responses that follow the template (the format reward's mode; with answers
                           read from \\boxed{} instead of tags, share with a boxed answer)
    accuracy_given_format  pass@1 among formatted responses: pass@1 = format_rate × accuracy_given_format
    lenient_accuracy       the answer found anywhere (<answer> tag, else the last \\boxed{}, else the last number)
    cons@k                 majority vote over the k tagged answers, grouped by equivalence ('42', '42.', '$42$'
                           are one answer), ties to the group seen first
    pass@k                 unbiased estimator (Chen et al. 2021), k = samples per prompt
    mean_length            completion tokens (EOS included)
    reflection_rate        share of responses with a re-check step (REFLECTION_RE)
    greedy_accuracy        strict, like pass@1, of one greedy response per prompt
    language_consistency   the share of the chain of thought's words in the target language's script (the
                           language reward, paper 2.3.2), averaged over responses
    language_mixing        share of responses whose chain of thought holds any word in another script

Every metric is a ratio of per-prompt sums (`metric_sums`), so the interval is a bootstrap over prompts
(`bootstrap_ci`), and several seeds evaluated on the same prompts pool into one estimate whose interval resamples
seeds and prompts (`summarize`). The metric math is pure numpy on per-sample arrays; `score_completions` turns
texts into those arrays; `Evaluator` generates the texts.
"""

from __future__ import annotations

import json
import os
import re

import jax
import ml_collections
import numpy as np

from r1jax import rollouts, sampling, sharding, train_state
from r1jax.data import provenance
from r1jax.rewards import accuracy_reward, check_answer, format_reward, language_consistency_reward
from r1jax.rewards.extract import extract_answer

# Headline metrics, in table order. Each also has `<name>_ci` = [low, high], a 95% bootstrap interval.
METRICS = (
    "pass@1", "format_rate", "accuracy_given_format", "lenient_accuracy", "cons@k", "pass@k", "mean_length",
    "reflection_rate", "greedy_accuracy", "language_consistency", "language_mixing",
)
LENIENT_EXTRACT = ("answer_tag", "boxed", "last_number")  # lenient accuracy: the answer found anywhere
# A re-check step in a response ("aha moment", paper 2.2.4): one of these words or phrases, case-insensitive.
REFLECTION_RE = re.compile(
    r"\b(?:wait|re-?check(?:s|ed|ing)?|let me (?:double[- ])?check|double[- ]check(?:s|ed|ing)?"
    r"|verif(?:y|ies|ied|ying))\b",
    re.IGNORECASE,
)
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


# ---------------------------------------------------------------------------------------------------------------
# Metric math: pure functions of per-sample arrays (P prompts × k samples), testable without a model


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021): 1 − C(n−c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k(n={n}, c={c}, k={k}): need 0 <= c <= n and 1 <= k <= n")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def reflects(text: str) -> bool:
    """Does the response contain a re-check step (REFLECTION_RE)?"""
    return REFLECTION_RE.search(text) is not None


def group_equivalent(answers: list[str | None]) -> list[int]:
    """Group labels for answers by equivalence: the same after normalisation ('42', '42.', '$42$'), numerically
    equal, or equal by math-verify ('1/2', '\\frac{1}{2}', '0.5'). A group is represented by its first member;
    labels count up in order of first appearance. None (no answer) forms its own group."""
    reps: list[str | None] = []
    labels = []
    for a in answers:
        for g, rep in enumerate(reps):
            if (a is None and rep is None) or (
                a is not None and rep is not None and check_answer(a, rep)
            ):
                labels.append(g)
                break
        else:
            reps.append(a)
            labels.append(len(reps) - 1)
    return labels


def majority_vote(answers: list[str | None]) -> str | None:
    """cons@k's vote: the largest group of equivalent answers (`group_equivalent`), returned as that group's
    first member. Ties go to the group whose first member comes earliest in sample order, so the vote is
    deterministic given the samples. "No answer" (None) is a candidate too, so k samples that mostly fail to
    answer do not win on the strength of a single lucky one."""
    labels = group_equivalent(answers)
    counts = np.bincount(labels)
    winner = int(np.argmax(counts))  # argmax takes the first maximum: the earliest-seen group
    return answers[labels.index(winner)]


def metric_sums(
    correct_pk, formatted_pk, lenient_pk, lengths_pk, reflective_pk, cons_p, *, greedy_p=None, language_pk=None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-prompt (numerator, denominator) of every metric; the metric is sum(num) / sum(den) over prompts.

    correct_pk:    the answer inside <answer> tags is right (whatever the rest of the response looks like)
    formatted_pk:  the response is in the required format (`formatted_flags`: the R1 template)
    lenient_pk:    the answer found anywhere (tag, else last \\boxed{}, else last number) is right
    lengths_pk:    response length in tokens (EOS included); reflective_pk: `reflects(response)`
    cons_p:        the majority vote over the prompt's k samples is right

    pass@1 (strict) counts a sample when it is formatted AND its tagged answer is right, so
    pass@1 = format_rate × accuracy_given_format exactly. accuracy_given_format's denominator is the number of
    formatted samples, so prompts weigh by how often they were answered in format. pass@k is the unbiased
    estimator with k = the samples per prompt (any strict pass among them).
    """
    correct_pk, formatted_pk = np.asarray(correct_pk, bool), np.asarray(formatted_pk, bool)
    p, k = correct_pk.shape
    strict_pk = correct_pk & formatted_pk
    ones_p = np.ones(p)
    samples_p = np.full(p, float(k))
    out = {
        "pass@1": (strict_pk.sum(1).astype(float), samples_p),
        "format_rate": (formatted_pk.sum(1).astype(float), samples_p),
        "accuracy_given_format": (strict_pk.sum(1).astype(float), formatted_pk.sum(1).astype(float)),
        "lenient_accuracy": (np.asarray(lenient_pk, bool).sum(1).astype(float), samples_p),
        "cons@k": (np.asarray(cons_p, bool).astype(float), ones_p),
        "pass@k": (np.array([pass_at_k(k, int(c), k) for c in strict_pk.sum(1)]), ones_p),
        "mean_length": (np.asarray(lengths_pk, float).sum(1), samples_p),
        "reflection_rate": (np.asarray(reflective_pk, bool).sum(1).astype(float), samples_p),
    }
    if greedy_p is not None:
        out["greedy_accuracy"] = (np.asarray(greedy_p, bool).astype(float), ones_p)
    if language_pk is not None:
        language_pk = np.asarray(language_pk, float)
        out["language_consistency"] = (language_pk.sum(1), samples_p)
        out["language_mixing"] = ((language_pk < 1.0).sum(1).astype(float), samples_p)
    return out


def ratio(num, den) -> float:
    """sum(num) / sum(den); NaN when the denominator is 0 (e.g. accuracy given format with nothing formatted)."""
    d = float(np.sum(den))
    return float(np.sum(num)) / d if d > 0 else float("nan")


def bootstrap_ci(
    num, den=None, *, num_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(num) / sum(den) (den = 1 each: the mean of `num`).

    num, den: (P,) per prompt, or (S, P) for S seeds evaluated on the same P prompts. Each resample draws P
    prompts with replacement and, with several seeds, S seeds with replacement, and pools the drawn
    (seed, prompt) cells; the same prompt draw serves every seed, since they answered the same prompts. So the
    interval covers both the prompt sample and training-seed variation (with one seed it is the plain bootstrap
    over prompts). Resamples with a zero denominator are left out; NaN bounds when all are.
    """
    num, den = _seeds_by_prompts(num, den, "bootstrap_ci")
    n_r, d_r = _resampled_sums((num, den), num_resamples, seed)
    ok = d_r > 0
    return _percentiles(n_r[ok] / d_r[ok], confidence)


def bootstrap_diff_ci(
    a: tuple, b: tuple, *, num_resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ratio(a) − ratio(b) for two models scored on the same prompts (and
    seeds): a, b = (num, den) as in `bootstrap_ci`. Each resample draws the same seeds and prompts for both
    sides, so the interval is of the paired difference, narrower than two separate intervals suggest when the
    prompts' difficulty moves both. A difference whose interval holds 0 is not a finding."""
    (na, da), (nb, db) = (_seeds_by_prompts(*x, "bootstrap_diff_ci") for x in (a, b))
    if na.shape != nb.shape:
        raise ValueError(f"bootstrap_diff_ci: a {na.shape} and b {nb.shape} must hold the same seeds × prompts")
    na_r, da_r, nb_r, db_r = _resampled_sums((na, da, nb, db), num_resamples, seed)
    ok = (da_r > 0) & (db_r > 0)
    return _percentiles(na_r[ok] / da_r[ok] - nb_r[ok] / db_r[ok], confidence)


def _seeds_by_prompts(num, den, where: str) -> tuple[np.ndarray, np.ndarray]:
    num = np.atleast_2d(np.asarray(num, float))
    den = np.ones_like(num) if den is None else np.atleast_2d(np.asarray(den, float))
    if num.shape != den.shape or num.size == 0:
        raise ValueError(f"{where}: num {num.shape} and den {den.shape} must be equal, non-empty shapes")
    return num, den


def _resampled_sums(arrays, num_resamples: int, seed: int) -> list[np.ndarray]:
    """Each (S, P) array's pooled sum under the same `num_resamples` draws of seeds and prompts."""
    s, p = arrays[0].shape
    rng = np.random.default_rng(seed)
    # Draw counts (multinomial) instead of indices: the pooled sum is then count_s · x · count_p.
    cs = rng.multinomial(s, np.full(s, 1.0 / s), size=num_resamples).astype(float)  # (R, S)
    cp = rng.multinomial(p, np.full(p, 1.0 / p), size=num_resamples).astype(float)  # (R, P)
    return [np.einsum("rs,sp,rp->r", cs, x, cp) for x in arrays]


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` interval of the resampled values; NaN bounds when none are left."""
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def summarize(sums: list[dict[str, tuple]] | dict[str, tuple], **bootstrap_kw) -> dict:
    """Point estimates and `<name>_ci` intervals from `metric_sums` of one run, or a list of them (one per seed,
    same prompts): the point estimate pools all seeds' samples (= the mean over seeds), the interval is
    `bootstrap_ci` over seeds × prompts."""
    runs = [sums] if isinstance(sums, dict) else list(sums)
    out = {}
    for name in METRICS:
        if not all(name in r for r in runs):
            continue
        num = np.stack([np.asarray(r[name][0], float) for r in runs])
        den = np.stack([np.asarray(r[name][1], float) for r in runs])
        out[name] = ratio(num, den)
        out[f"{name}_ci"] = list(bootstrap_ci(num, den, **bootstrap_kw))
    return out


def prompt_sums_from_json(per_prompt: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The inverse of the `per_prompt` field of an evaluation: {name: {'num': [...], 'den': [...]}}."""
    return {k: (np.asarray(v["num"], float), np.asarray(v["den"], float)) for k, v in per_prompt.items()}


# ---------------------------------------------------------------------------------------------------------------
# The evaluator: generation, scoring, then the metric math above


class Evaluator:
    """Held-out evaluation of a policy given as (graphdef, params); call it with params to get the metrics."""

    def __init__(
        self, graphdef, tokenizer, records, task, *, template, response_prefix="", max_new_tokens, num_samples=4,
        temperature=0.6, top_p=0.95, greedy=True, max_prompt_len=512, prompt_bucket=32, mesh=None, seed=0,
        extract=("answer_tag",), format_mode="strict", language="en", scheduler="static", num_slots=0,
    ):
        self.graphdef, self.tokenizer, self.records, self.task = graphdef, tokenizer, list(records), task
        self.k, self.greedy, self.mesh, self.seed = num_samples, greedy, mesh, seed
        self.extract, self.prefix, self.format_mode = tuple(extract), response_prefix, format_mode
        self.language = language  # target of the language-consistency metric (share of the CoT in its script)
        self.prompt_ids = rollouts.encode_prompts(tokenizer, self.records, template, response_prefix, max_prompt_len)
        common = dict(
            max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, prompt_bucket=prompt_bucket
        )
        common.update(scheduler=scheduler, num_slots=num_slots)  # sampling.scheduler / num_slots of the config
        self.sample_cfg = sampling.SamplingConfig(
            num_samples=num_samples, temperature=temperature, top_p=top_p, **common
        )
        self.greedy_cfg = sampling.SamplingConfig(num_samples=1, greedy=True, **common)

    @classmethod
    def from_config(cls, config, graphdef, tokenizer, records, task, mesh) -> Evaluator:
        """The evaluator a GRPO / eval config describes (`eval.*`, the sampling limits, the reward's answer
        extraction, format mode and language): training-time and `r1jax eval` numbers are computed alike."""
        e, s, r = config.eval, config.sampling, config.rewards
        return cls(
            graphdef, tokenizer, records[: e.num_prompts], task, template=config.template,
            response_prefix=config.response_prefix, max_new_tokens=s.max_new_tokens, num_samples=e.num_samples,
            temperature=e.temperature, top_p=e.top_p, greedy=e.greedy, max_prompt_len=s.max_prompt_len,
            prompt_bucket=s.prompt_bucket, mesh=mesh, seed=config.seed, extract=r.answer_extract,
            format_mode=r.format_mode, language=r.language, scheduler=s.scheduler, num_slots=s.num_slots,
        )

    def _generate(self, params, cfg, rng):
        rollout = sampling.sample(self.graphdef, params, self.prompt_ids, rng, cfg, mesh=self.mesh)
        return rollouts.decode_completions(self.tokenizer, rollout), np.asarray(rollout.lengths_b)

    def __call__(self, params, return_samples: bool = False, return_per_prompt: bool = False) -> dict:
        """Metrics with `<name>_ci` intervals, `k` and `num_prompts`; `per_prompt` (the `metric_sums` arrays, to
        pool several seeds with `summarize`) and `samples` on request."""
        rng = jax.random.PRNGKey(self.seed + 12345)
        completions, lengths = self._generate(params, self.sample_cfg, rng)
        greedy = self._generate(params, self.greedy_cfg, rng)[0] if self.greedy else None
        sums, correct = score_completions(
            completions, self.records, self.k, lengths=lengths, greedy_completions=greedy, extract=self.extract,
            prefix=self.prefix, format_mode=self.format_mode, language=self.language,
        )
        out = {**summarize(sums), "k": self.k, "num_prompts": len(self.records)}
        if return_per_prompt:
            out["per_prompt"] = {name: {"num": num.tolist(), "den": den.tolist()} for name, (num, den) in sums.items()}
        if return_samples:
            recs = [r for r in self.records for _ in range(self.k)]
            out["samples"] = [
                {"id": r["id"], "completion": c, "correct": bool(ok)}
                for r, c, ok in zip(recs, completions, correct.reshape(-1))
            ]
        return out


def formatted_flags(completions: list[str], *, extract, format_mode: str = "strict", prefix: str = "") -> np.ndarray:
    """Which responses are in the format the evaluation requires: with answers read from <answer> tags, the R1
    template (the format reward in `format_mode`); with other extraction (e.g. \\boxed{} for the Qwen-Math
    prompt), an answer found where `extract` looks."""
    if "answer_tag" in extract:
        return np.array(format_reward(completions, mode=format_mode, prefix=prefix)) > 0
    return np.array([extract_answer(prefix + c, extract) is not None for c in completions], bool)


def score_completions(
    completions: list[str], records: list[dict], k: int, *, lengths, greedy_completions=None,
    extract=("answer_tag",), prefix: str = "", format_mode: str = "strict", language: str = "en",
):
    """Score P·k completions (prompt-major: the k samples of records[0] first) and return (`metric_sums`, the
    verdicts on the extracted answers (P, k), format aside). `lengths`: the completions' token counts;
    `greedy_completions`: P texts or None.

    cons@k votes over the answers of formatted samples only (an unformatted sample votes "no answer"), the
    same answers pass@1 counts; the winning group's first member is checked by the task's verifier.
    """
    p = len(records)
    if len(completions) != p * k or np.size(lengths) != p * k:
        raise ValueError(f"{len(completions)} completions, {np.size(lengths)} lengths: expected P·k = {p}·{k}")
    recs = [r for r in records for _ in range(k)]

    def right(texts, examples, methods):
        verdicts = accuracy_reward(
            texts, [r.get("answer") for r in examples], examples=examples, extract=methods, prefix=prefix
        )
        return np.array([bool(x) for x in verdicts])

    correct = right(completions, recs, extract)
    formatted = formatted_flags(completions, extract=extract, format_mode=format_mode, prefix=prefix)
    lenient = right(completions, recs, LENIENT_EXTRACT)
    answers = [extract_answer(prefix + c, extract) if f else None for c, f in zip(completions, formatted)]
    cons = []
    for i in range(p):
        vote = majority_vote(answers[i * k : (i + 1) * k])
        cons.append(vote is not None and right([f"<answer>{vote}</answer>"], [records[i]], ("answer_tag",))[0])
    language_scores = language_consistency_reward(completions, examples=recs, language=language, prefix=prefix)
    greedy = None
    if greedy_completions is not None:  # strict, like pass@1: formatted and right
        greedy_formatted = formatted_flags(greedy_completions, extract=extract, format_mode=format_mode, prefix=prefix)
        greedy = right(greedy_completions, records, extract) & greedy_formatted
    sums = metric_sums(
        correct.reshape(p, k), formatted.reshape(p, k), lenient.reshape(p, k), np.reshape(lengths, (p, k)),
        np.array([reflects(c) for c in completions]).reshape(p, k), np.array(cons),
        greedy_p=greedy,
        language_pk=np.reshape(language_scores, (p, k)),
    )
    return sums, correct.reshape(p, k)


def write_results(results: dict[str, dict], path_prefix: str) -> tuple[str, str]:
    """`results` maps a name (e.g. 'base', 'final') to metrics; writes PREFIX.json and a Markdown table PREFIX.md."""
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    with open(path_prefix + ".json", "w") as f:
        json.dump(results, f, indent=1)
    with open(path_prefix + ".md", "w") as f:
        f.write(markdown_table(results) + "\n")
    return path_prefix + ".json", path_prefix + ".md"


def format_value(m: dict, name: str) -> str:
    """'0.812 [0.750, 0.870]': the metric with its interval when there is one (lengths to one decimal)."""
    v = m.get(name)
    if not isinstance(v, (int, float)):
        return "" if v is None else str(v)
    spec = ".1f" if name == "mean_length" else ".3f"
    ci = m.get(f"{name}_ci")
    has_ci = isinstance(ci, (list, tuple)) and all(isinstance(c, (int, float)) for c in ci)
    return f"{v:{spec}}" + (f" [{ci[0]:{spec}}, {ci[1]:{spec}}]" if has_ci else "")


def markdown_table(results: dict[str, dict]) -> str:
    """One row per metric, one column per model (e.g. base / final), intervals in brackets."""
    names = list(results)
    rows = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in METRICS:
        if any(key in m for m in results.values()):
            rows.append(f"| {key} | " + " | ".join(format_value(results[n], key) for n in names) + " |")
    return "\n".join(rows)


def evaluate_model_dir(config, model_dir: str, *, per_prompt: bool = False, manifest_dir: str | None = None) -> dict:
    """Evaluate the model saved in `model_dir` on the held-out split that `config` (a GRPO config) defines;
    `per_prompt`: also the per-prompt sums, to pool seeds."""
    mesh = sharding.make_mesh(config.mesh.shape)
    _, eval_records, task = rollouts.load_splits(config)
    if manifest_dir is not None:  # the questions evaluated on, for the contamination check (r1jax.data.provenance)
        questions = [r["question"] for r in eval_records[: config.eval.num_prompts]]
        provenance.record(manifest_dir, questions, split=config.eval.split, role="eval", source="evaluation")
    model_cfg = ml_collections.ConfigDict(config.model.to_dict() | {"checkpoint": model_dir})
    model, tokenizer = train_state.build_model(model_cfg, config.seed, config.tokenizer.path)
    graphdef, params, _ = train_state.split_model(model)
    evaluator = Evaluator.from_config(config, graphdef, tokenizer, eval_records, task, mesh)
    return jax.device_get(evaluator(params, return_per_prompt=per_prompt))


def run(config, workdir: str) -> dict:
    """`r1jax eval`: evaluate `model.checkpoint` on the held-out split; writes WORKDIR/eval.json and eval.md."""
    if not config.model.checkpoint:
        raise ValueError("model.checkpoint='': pass the model to evaluate with --config.model.checkpoint=PATH")
    metrics = evaluate_model_dir(config, config.model.checkpoint)
    name = os.path.basename(os.path.normpath(config.model.checkpoint))
    write_results({name: metrics}, os.path.join(workdir, "eval"))
    return metrics
