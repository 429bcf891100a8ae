"""The loop around every trainer's jitted step: restore or start, preemption, metrics, progress, checkpoint
cadence, the non-finite stop, and the export at the end. The step itself stays in each trainer.

    loop = TrainLoop(workdir, c.checkpoint, identity, num_steps, desc="sft", log_every=c.log_every,
                     max_consecutive_nonfinite=c.optim.max_consecutive_nonfinite)
    state = loop.restore(state, state_shardings, data_it)     # the newest usable checkpoint, or step 0
    with loop:                                               # SIGTERM guard, metrics writer, progress bar
        for step in loop.steps():                            # start+1 .. num_steps, ends early on a stop
            state, m = step_fn(state, next(data_it))
            loop.end_step(step, state, m, data_it.get_state)  # log, save on cadence / preemption / budget
    if loop.preempted:
        return {"preempted_at": loop.step}
    loop.export(graphdef, state.params, tokenizer)

Preemption is one path for every trainer: `distributed.preemption_guard()` (a Python SIGTERM handler when the
process is alone) and `Checkpointer.reached_preemption(step)` (orbax's sync point under `jax.distributed`, true
on every process at the same step), checked after every step; the step is saved and the loop ends, and the
same command started again resumes from it.

Metrics: a step's metrics are fetched from the device and written (WORKDIR/metrics.jsonl, TensorBoard) every
`log_every` steps, at the last step and at the step a run stops; `perf/tokens_per_s` is added when the trainer
counts tokens. A resumed run first drops the records a killed run appended after its checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import jax
import ml_collections

from r1jax import checkpoint as ckpt_lib
from r1jax import distributed, train_state
from r1jax import metrics as metrics_lib
from r1jax.trainers import common

log = logging.getLogger(__name__)


def checkpoint_config(**overrides) -> ml_collections.ConfigDict:
    """The `checkpoint` fields every trainer declares."""
    c = ml_collections.ConfigDict()
    c.every = 50  # steps between saves (also saved at the last step, on SIGTERM and when a time budget ends)
    c.max_to_keep = 3
    c.async_save = True
    c.on_save_error = "raise"  # 'raise' or 'continue' (previous checkpoint kept)
    c.restart_from_weights = False  # resume a workdir whose settings changed: weights only, a new run
    c.update(overrides)
    return c


def validate_checkpoint(c) -> None:
    if c.every < 1:
        raise ValueError(f"checkpoint.every={c.every}: must be >= 1")
    if c.max_to_keep < 1:
        raise ValueError(f"checkpoint.max_to_keep={c.max_to_keep}: must be >= 1")


class TrainLoop:
    """One training run's loop state; see the module docstring for how a trainer uses it.

    `max_time_s` > 0 ends the run (saved, not preempted) once that much wall time has passed since the loop
    started; `stop_after_steps` > 0 acts as a preemption notice after that many steps of this invocation (tests);
    `max_consecutive_nonfinite` > 0 saves and raises once that many updates in a row were skipped as non-finite.
    """

    def __init__(
        self,
        workdir: str,
        checkpoint,
        identity: dict,
        num_steps: int,
        *,
        desc: str,
        log_every: int,
        postfix: dict[str, str] | None = None,
        max_consecutive_nonfinite: int = 0,
        max_time_s: float = 0.0,
        stop_after_steps: int = 0,
    ):
        self.workdir, self.identity, self.num_steps = workdir, identity, num_steps
        self.every, self.restart_from_weights = checkpoint.every, checkpoint.restart_from_weights
        self.desc, self.log_every = desc, log_every
        self.postfix = postfix or {}  # progress-bar label -> metric name
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.max_time_s, self.stop_after_steps = max_time_s, stop_after_steps
        self.checkpointer = ckpt_lib.Checkpointer(
            os.path.join(workdir, "checkpoints"),
            max_to_keep=checkpoint.max_to_keep,
            async_save=checkpoint.async_save,
            on_save_error=checkpoint.on_save_error,
        )
        self.start_step = self.step = 0
        self.preempted = self.out_of_time = False
        self.metrics: dict = {}  # the last written metrics, as host values
        self.writer = self.bar = self._guard = None

    # -- restore or start ----------------------------------------------------------------------------------------

    def restore(self, state, shardings, data_it=None):
        """The newest usable checkpoint's state (and `data_it`'s position), or `state` itself at step 0."""
        state, data_state, self.start_step = common.restore_or_start(
            self.checkpointer, state, shardings, self.identity, self.restart_from_weights
        )
        self.step = self.start_step
        if data_state is not None and data_it is not None:
            data_it.set_state(data_state)
        # A run killed after its last checkpoint appended records of the steps this one redoes.
        if jax.process_index() == 0:
            common.drop_records_after(os.path.join(self.workdir, "metrics.jsonl"), self.start_step)
        return state

    # -- the loop ------------------------------------------------------------------------------------------------

    def __enter__(self):
        self._guard = distributed.preemption_guard().__enter__()
        self.writer = metrics_lib.MetricsWriter(self.workdir)
        self.bar = metrics_lib.progress(self.num_steps, initial=self.start_step, desc=self.desc)
        self._t_start = self._t_log = time.perf_counter()
        self._tokens = 0
        return self

    def __exit__(self, *exc):
        self.bar.close()
        self.writer.close()
        self._guard.__exit__(*exc)
        if exc[0] is None:
            self.checkpointer.close()
        return False

    def steps(self):
        """Step numbers start+1 .. num_steps; ends after the step at which the run was preempted or ran out of
        time (that step is saved by `end_step`)."""
        for step in range(self.start_step + 1, self.num_steps + 1):
            yield step
            if self.preempted or self.out_of_time:
                return

    def write(self, step: int, metrics: dict) -> None:
        """Extra records (evaluations) between the step metrics."""
        self.writer.write(step, metrics)

    def end_step(self, step: int, state, metrics: dict, data_state: Callable[[], dict] = dict, *, tokens: int = 0):
        """After step `step`: count `tokens`, write metrics at the cadence, stop on non-finite updates, save on
        the cadence, the last step, preemption or an exhausted time budget."""
        self.step = step
        self._tokens += tokens
        self.preempted = (
            self._guard.triggered
            or self.checkpointer.reached_preemption(step)
            or (self.stop_after_steps > 0 and step - self.start_step >= self.stop_after_steps)
        )
        self.out_of_time = self.max_time_s > 0 and time.perf_counter() - self._t_start >= self.max_time_s
        consecutive = int(jax.device_get(state.nonfinite_consecutive)) if self.max_consecutive_nonfinite else 0
        nonfinite = self.max_consecutive_nonfinite > 0 and consecutive >= self.max_consecutive_nonfinite
        last = step == self.num_steps or self.preempted or self.out_of_time or nonfinite
        if step % self.log_every == 0 or last:
            self._log(step, metrics)
        self.bar.update(1)
        if step % self.every == 0 or last:
            self.checkpointer.save(step, train_state.state_to_dict(state), data_state(), self.identity)
        if nonfinite:
            self.checkpointer.close()
            raise FloatingPointError(
                f"{consecutive} consecutive non-finite updates at step {step} "
                f"(optim.max_consecutive_nonfinite={self.max_consecutive_nonfinite}); params and optimizer state "
                f"of the last finite update are saved in {self.checkpointer.directory}"
            )
        if self.preempted:
            log.warning("preemption notice: saved step %d, exiting", step)
        elif self.out_of_time:
            log.info("max_time_s=%s reached after step %d: stopping", self.max_time_s, step)

    def _log(self, step: int, metrics: dict) -> None:
        m = dict(jax.device_get(metrics))
        now = time.perf_counter()
        if self._tokens:
            m["perf/tokens_per_s"] = self._tokens / max(now - self._t_log, 1e-9)
        self._t_log, self._tokens = now, 0
        self.writer.write(step, m)
        self.metrics = m
        if self.postfix:
            self.bar.set_postfix({k: f"{float(m[name]):.3f}" for k, name in self.postfix.items() if name in m})

    # -- the end -------------------------------------------------------------------------------------------------

    def export(self, graphdef, params, tokenizer, path: str | None = None) -> str:
        """The model as a Hugging Face directory + tokenizer (WORKDIR/model by default), written by process 0
        from a full host copy of the (possibly cross-process sharded) params."""
        path = path or os.path.join(self.workdir, "model")
        return ckpt_lib.export_model(train_state.merge(graphdef, distributed.fetch(params)), tokenizer, path)

    def float_metrics(self) -> dict:
        """The last written metrics as Python floats (a trainer's return value)."""
        return {k: float(v) for k, v in self.metrics.items()}
