"""Metrics: TensorBoard event files, a JSONL history, PNG curves beside them, and a progress bar.

Only process 0 writes. Metric names are path-like (`rl/reward_mean`, `perf/tokens_per_s`).
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from tqdm.auto import tqdm


class MetricsWriter:
    def __init__(self, workdir: str, *, subdir: str = "tb", enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.logdir = os.path.join(workdir, subdir)
        self.history_path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(self.logdir, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(self.logdir, flush_secs=10)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items() if np.ndim(v) == 0}
        for k, v in scalars.items():
            if math.isfinite(v):
                self._tb.add_scalar(k.replace("@", "_at_"), v, step)  # TensorBoard tags allow no '@'
        with open(self.history_path, "a") as f:
            f.write(json.dumps({"step": int(step), **scalars}) + "\n")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_history(workdir: str) -> list[dict]:
    """The JSONL history; a step logged twice (a resumed run) keeps its last record."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_step: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                by_step.setdefault(rec["step"], {}).update(rec)
    return [by_step[s] for s in sorted(by_step)]


def plot_curves(history: list[dict], keys: list[str], path: str, title: str = "") -> str | None:
    """One panel per key (those present), metric against step, written as a PNG."""
    keys = [k for k in keys if any(k in h for h in history)]
    if not keys:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend change, works headless

    fig = Figure(figsize=(4.2 * len(keys), 3.2))
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(h["step"], h[key]) for h in history if key in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, ms=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def progress(total: int, initial: int = 0, desc: str = ""):
    """A progress bar with rate and ETA; silent on non-zero processes."""
    return tqdm(
        total=total, initial=initial, desc=desc, disable=jax.process_index() != 0, dynamic_ncols=True,
        mininterval=1.0, smoothing=0.1,
    )
