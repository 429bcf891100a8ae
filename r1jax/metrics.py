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


def plot_panels(
    runs: dict[str, list[dict]], panels: dict[str, list[str]], path: str, title: str = ""
) -> str | None:
    """Several metrics per panel and several runs per metric, against step, written as a PNG.

    runs: label (e.g. 'seed 0') -> history (`read_history`); panels: panel title -> metric keys drawn in it.
    Panels whose keys no run logged are left out; None if nothing is left.
    """
    panels = {t: ks for t, ks in panels.items() if any(k in h for hist in runs.values() for h in hist for k in ks)}
    if not panels:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global backend change, works headless

    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (panel, keys) in zip(axes, panels.items()):
        for label, history in runs.items():
            for key in keys:
                pts = [(h["step"], h[key]) for h in history if key in h]
                if pts:
                    name = key if len(runs) == 1 else f"{label}: {key}"
                    ax.plot([q[0] for q in pts], [q[1] for q in pts], marker="o" if len(pts) < 30 else None,
                            ms=3, label=name)
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def window_ratio(history: list[dict], key: str, window: int = 10) -> tuple[float, int]:
    """(mean of `key` over the last `window` logged steps) / (mean over the first `window`), and the window used.

    With fewer than 2·window steps logged the window shrinks to half of them, so the two windows never overlap.
    NaN when fewer than 2 steps logged `key`.
    """
    values = [h[key] for h in history if key in h]
    w = min(window, len(values) // 2)
    if w < 1:
        return float("nan"), 0
    first = float(np.mean(values[:w]))
    return (float(np.mean(values[-w:])) / first if first else float("nan")), w


def progress(total: int, initial: int = 0, desc: str = ""):
    """A progress bar with rate and ETA; silent on non-zero processes."""
    return tqdm(
        total=total, initial=initial, desc=desc, disable=jax.process_index() != 0, dynamic_ncols=True,
        mininterval=1.0, smoothing=0.1,
    )
