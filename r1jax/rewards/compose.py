"""Composing rewards: config (names + weights) -> one batched, timeout-guarded function for the GRPO loop.

    reward_fn = make_reward_fn(parse_reward_specs("accuracy=1,format=0.5"))
    out = reward_fn(prompts, completions, examples)          # N of each
    out.rewards     # (N,) float32, r_i = sum_k w_k r_ik; 0.0 where invalid
    out.valid       # (N,) bool: False where any weighted reward was unscorable
    out.per_reward  # {name: (N,) float32, NaN where unscorable}
    out.stats       # flat {'reward/accuracy/mean': ..., 'reward/timeouts': ..., 'perf/reward_s': ...}

A reward function is `fn(completions, **kwargs) -> list[float | None]`. It
receives, by parameter name, whichever of `prompts`, `answers`, `examples`,
`lengths` it declares, plus the spec's own `kwargs`. Per-sample rewards are
called one completion at a time, so one hung or failing completion costs only
itself; a completion whose reward raises, times out, returns None or a
non-finite value is unscorable: `valid` is False, GRPO gives it zero advantage
and leaves it out of its group's baseline, and the stats count it. Training
goes on.

Executors: 'process' (worker processes, killed on timeout: the default for
accuracy, since math-verify / sympy can hang), 'thread' (daemon threads,
abandoned on timeout: fast trusted code, and callables that cannot cross a process boundary
such as a reward-model scorer), 'inline' (no timeout; for tests and debugging).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from r1jax.rewards.accuracy import accuracy_reward, gym_score_reward
from r1jax.rewards.formatting import format_reward
from r1jax.rewards.language import language_consistency_reward
from r1jax.rewards.length import overlong_reward
from r1jax.rewards.reward_model import reward_model_reward
from r1jax.rewards.sandbox import code_reward
from r1jax.rewards.workers import ProcessPool, ThreadRunner

EXECUTORS = ("process", "thread", "inline")
_CONTEXT = ("prompts", "answers", "examples", "lengths")


@dataclasses.dataclass(frozen=True)
class RewardInfo:
    fn: Callable
    executor: str  # default executor
    batched: bool  # called once on the whole batch (reward models) rather than per completion


REWARDS: dict[str, RewardInfo] = {
    "accuracy": RewardInfo(accuracy_reward, "process", False),
    "format": RewardInfo(format_reward, "thread", False),
    "language": RewardInfo(language_consistency_reward, "thread", False),
    "overlong": RewardInfo(overlong_reward, "thread", False),
    "code": RewardInfo(code_reward, "thread", False),
    "gym_score": RewardInfo(gym_score_reward, "process", False),  # reasoning-gym partial credit
    "reward_model": RewardInfo(reward_model_reward, "thread", True),
}


def resolve_reward(name: str) -> Callable:
    """A registry name ('accuracy', ...) or an import path 'package.module:function'."""
    if name in REWARDS:
        return REWARDS[name].fn
    if ":" in name:
        module, attr = name.split(":", 1)
        return getattr(importlib.import_module(module), attr)
    raise ValueError(f"reward name={name!r}: expected one of {sorted(REWARDS)} or 'module:function'")


@dataclasses.dataclass(frozen=True)
class RewardSpec:
    """One weighted reward. `key` names it in the outputs (default: `name`), so one function can appear twice."""

    name: str
    weight: float = 1.0
    timeout_s: float = 10.0  # per call (one completion, or the whole batch if batched)
    executor: str | None = None  # None: the registry's default ('thread' for import paths)
    batched: bool | None = None  # None: the registry's default (False for import paths)
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    key: str | None = None

    def __post_init__(self):
        if self.executor is not None and self.executor not in EXECUTORS:
            raise ValueError(f"reward {self.name}: executor={self.executor!r}, expected one of {EXECUTORS}")
        if not self.timeout_s > 0:
            raise ValueError(f"reward {self.name}: timeout_s={self.timeout_s} must be > 0")
        if not math.isfinite(self.weight):
            raise ValueError(f"reward {self.name}: weight={self.weight} must be finite")
        resolve_reward(self.name)  # fail at config time, not in the middle of training

    @property
    def label(self) -> str:
        return self.key or self.name

    @property
    def info(self) -> RewardInfo:
        base = REWARDS.get(self.name, RewardInfo(resolve_reward(self.name), "thread", False))
        return RewardInfo(
            base.fn,
            self.executor or base.executor,
            base.batched if self.batched is None else self.batched,
        )


def parse_reward_specs(specs: str | Sequence[RewardSpec | Mapping[str, Any]]) -> tuple[RewardSpec, ...]:
    """'accuracy=1,format=0.5' (CLI-friendly), or a list of RewardSpec / dicts of RewardSpec fields."""
    if isinstance(specs, str):
        out = []
        for part in filter(None, (p.strip() for p in specs.split(","))):
            name, _, weight = part.partition("=")
            try:
                out.append(RewardSpec(name.strip(), float(weight) if weight else 1.0))
            except ValueError as e:
                raise ValueError(f"rewards={specs!r}: bad entry {part!r}: {e}") from e
        specs = out
    out = tuple(s if isinstance(s, RewardSpec) else RewardSpec(**dict(s)) for s in specs)
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise ValueError(f"rewards: duplicate names {labels}; give repeats a distinct key=")
    if not out:
        raise ValueError("rewards: at least one reward is needed")
    return out


class RewardBatch(NamedTuple):
    rewards: np.ndarray  # (N,) float32, weighted sum; 0.0 where not valid
    per_reward: dict[str, np.ndarray]  # label -> (N,) float32, NaN where unscorable
    stats: dict[str, float]
    valid: np.ndarray  # (N,) bool


def _answer_of(example: Any) -> str | None:
    if example is None:
        return None
    if isinstance(example, Mapping):
        return example.get("answer")
    return getattr(example, "answer", None)


class RewardFunction:
    """The composed reward; call it as `fn(prompts, completions, examples, lengths=None)`. Close it when done."""

    def __init__(self, specs: Sequence[RewardSpec], *, num_threads: int = 8, num_processes: int = 2):
        self.specs = parse_reward_specs(specs)
        self._params = {}
        for s in self.specs:
            params = inspect.signature(s.info.fn).parameters
            self._params[s.label] = [p for p in _CONTEXT if p in params]
        self._threads = ThreadRunner(num_threads)
        needs_processes = any(s.info.executor == "process" for s in self.specs)
        self._processes = ProcessPool(num_processes) if needs_processes else None

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Block until the worker processes (if any) are up, so the first step's timeouts are not eaten by startup."""
        return self._processes is None or self._processes.wait_ready(timeout_s)

    def close(self) -> None:
        if self._processes is not None:
            self._processes.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        examples: Sequence[Any] | None = None,
        *,
        lengths: Sequence[int] | None = None,
    ) -> RewardBatch:
        t0 = time.monotonic()
        n = len(completions)
        if len(prompts) != n or (examples is not None and len(examples) != n):
            raise ValueError(
                f"rewards: len(prompts)={len(prompts)}, len(completions)={n}, "
                f"len(examples)={None if examples is None else len(examples)} must all be equal"
            )
        context = {
            "prompts": list(prompts),
            "answers": [_answer_of(e) for e in examples] if examples is not None else [None] * n,
            "examples": list(examples) if examples is not None else None,
            "lengths": None if lengths is None else [int(x) for x in lengths],
        }
        # Every call: (spec index, item slice, executor, fn name, args, kwargs, timeout).
        calls = []
        for k, s in enumerate(self.specs):
            info = s.info
            slices = [slice(0, n)] if info.batched else [slice(i, i + 1) for i in range(n)]
            for sl in slices:
                kwargs = {p: None if context[p] is None else context[p][sl] for p in self._params[s.label]}
                calls.append((k, sl, info.executor, s.name, (list(completions[sl]),), {**kwargs, **s.kwargs}, s))

        results: list[tuple[str, Any]] = [None] * len(calls)
        thread_ids = [j for j, c in enumerate(calls) if c[2] == "thread"]
        futures = [self._threads.submit(resolve_reward(calls[j][3]), *calls[j][4], **calls[j][5]) for j in thread_ids]
        for j, c in enumerate(calls):
            if c[2] == "inline":
                try:
                    results[j] = ("ok", resolve_reward(c[3])(*c[4], **c[5]))
                except Exception as e:
                    results[j] = ("error", f"{type(e).__name__}: {e}")
        process_ids = [j for j, c in enumerate(calls) if c[2] == "process"]
        if process_ids:  # runs while the thread calls proceed
            timeouts = [calls[j][6].timeout_s for j in process_ids]
            out = self._processes.run([calls[j][3:6] for j in process_ids], timeouts)
            for j, r in zip(process_ids, out):
                results[j] = r
        for j, r in zip(thread_ids, self._threads.wait(futures, [calls[j][6].timeout_s for j in thread_ids])):
            results[j] = r
        return self._combine(n, calls, results, time.monotonic() - t0)

    def _combine(self, n, calls, results, elapsed) -> RewardBatch:
        per = {s.label: np.full((n,), np.nan, np.float32) for s in self.specs}
        counts = {"errors": 0, "timeouts": 0, "nonfinite": 0, "unscorable": 0}
        first_error: dict[str, str] = {}
        for (k, sl, *_), (status, value) in zip(calls, results):
            label = self.specs[k].label
            size = sl.stop - sl.start
            if status == "ok" and (not isinstance(value, Sequence | np.ndarray) or len(value) != size):
                got = len(value) if hasattr(value, "__len__") else "?"
                status, value = "error", f"returned {type(value).__name__} of length {got}, expected {size}"
            if status == "timeout":
                counts["timeouts"] += size
                continue
            if status == "error":
                counts["errors"] += size
                first_error.setdefault(label, str(value))
                continue
            for i, v in zip(range(sl.start, sl.stop), value):
                if v is None:
                    counts["unscorable"] += 1
                    continue
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    counts["errors"] += 1
                    continue
                if not math.isfinite(v):
                    counts["nonfinite"] += 1
                    continue
                per[label][i] = v
        rewards = np.zeros((n,), np.float32)
        valid = np.ones((n,), bool)
        for s in self.specs:
            if s.weight == 0:
                continue  # logged only; cannot invalidate a sample
            ok = ~np.isnan(per[s.label])
            valid &= ok
            rewards += np.where(ok, s.weight * per[s.label], 0.0).astype(np.float32)
        rewards = np.where(valid, rewards, 0.0).astype(np.float32)
        stats = {f"reward/{k}": float(v) for k, v in counts.items()}
        for s in self.specs:
            col = per[s.label]
            stats[f"reward/{s.label}/mean"] = float(np.nanmean(col)) if (~np.isnan(col)).any() else float("nan")
            stats[f"reward/{s.label}/invalid_frac"] = float(np.isnan(col).mean()) if n else 0.0
        stats["reward/total_mean"] = float(rewards[valid].mean()) if valid.any() else float("nan")
        stats["reward/valid_frac"] = float(valid.mean()) if n else 1.0
        stats["perf/reward_s"] = elapsed
        self.last_errors = first_error  # one message per reward, for logging by the trainer
        return RewardBatch(rewards, per, stats, valid)


def make_reward_fn(specs: str | Sequence[RewardSpec | Mapping[str, Any]], **kwargs: Any) -> RewardFunction:
    """`RewardFunction(parse_reward_specs(specs), **kwargs)`."""
    return RewardFunction(parse_reward_specs(specs), **kwargs)
