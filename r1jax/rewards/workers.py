"""Where reward functions run: daemon threads or worker processes, each call under a wall-clock timeout.

Neither signals nor `concurrent.futures` timeouts can stop a hung call:
SIGALRM works on the main thread only (math-verify's own timeout), and a
`ThreadPoolExecutor` joins its threads at interpreter exit. So:

- `ThreadRunner`: daemon threads. A call that overruns its deadline is abandoned
  (reported as a timeout); its thread is written off and replaced so capacity
  stays. Cheap, shares memory, but a hung thread keeps burning CPU: use it for
  fast, trusted code.
- `ProcessPool`: long-lived worker processes (`python -m r1jax.rewards._worker`,
  started with fork+exec, so a parent that already runs JAX threads is safe). A
  call that overruns is ended by SIGKILL-ing its worker, which is replaced in the
  background (a start takes 1-3 s: imports). Calls still queued once the batch has
  used its time budget (timeout x calls per worker) time out too, so a batch that
  arrives while workers restart gets some unscorable results rather than a stall.
  Functions are named, not pickled: a registry name or 'module:function'.

Either way the caller gets its answer by the deadline, from any thread.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import json
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

_HEADER = struct.Struct(">Q")

# ----------------------------------------------------------------------------- threads


class ThreadRunner:
    """A pool of daemon threads; `run` returns per call ('ok', value) | ('error', msg) | ('timeout', None)."""

    def __init__(self, num_threads: int = 8):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(num_threads):
            self._spawn()

    def _spawn(self):
        threading.Thread(target=self._loop, daemon=True, name="r1jax-reward").start()

    def _loop(self):
        while True:
            fut, fn, args, kwargs = self._queue.get()
            if not fut.set_running_or_notify_cancel():
                continue
            fut.started_at = time.monotonic()
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: B036 -- report anything the user function raises
                fut.set_exception(e)

    def submit(self, fn: Callable, *args, **kwargs) -> concurrent.futures.Future:
        fut = concurrent.futures.Future()
        fut.started_at = None
        self._queue.put((fut, fn, args, kwargs))
        return fut

    def wait(self, futures: Sequence[concurrent.futures.Future], timeout_s: Sequence[float]) -> list[tuple[str, Any]]:
        """Collect results; a call that has run longer than its timeout is abandoned and its thread replaced."""
        results: list[tuple[str, Any] | None] = [None] * len(futures)
        open_ = set(range(len(futures)))
        while open_:
            now = time.monotonic()
            next_deadline = now + 0.05
            for i in list(open_):
                f = futures[i]
                if f.done():
                    e = f.exception()
                    results[i] = ("ok", f.result()) if e is None else ("error", f"{type(e).__name__}: {e}")
                    open_.discard(i)
                elif f.started_at is not None:
                    deadline = f.started_at + timeout_s[i]
                    if now >= deadline:
                        results[i] = ("timeout", None)
                        open_.discard(i)
                        self._spawn()  # that thread is lost to the hung call; keep the pool's capacity
                    else:
                        next_deadline = min(next_deadline, deadline)
            if open_:
                concurrent.futures.wait(
                    [futures[i] for i in open_],
                    timeout=max(0.0, next_deadline - time.monotonic()),
                    return_when=concurrent.futures.FIRST_COMPLETED,
                )
        return results


# ----------------------------------------------------------------------------- processes


def _to_json(obj: Any) -> Any:
    """numpy scalars and arrays (lengths, masks) as plain JSON; anything else is a protocol error."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"reward worker protocol: cannot send a {type(obj).__name__}")


def _write_frame(fd: int, obj: Any) -> None:
    # JSON, not pickle: nothing that crosses the pipe can run code when it is read.
    data = json.dumps(obj, default=_to_json).encode()
    data = _HEADER.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None  # EOF: the worker died
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int) -> Any:
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return None
    data = _read_exact(fd, _HEADER.unpack(header)[0])
    return None if data is None else json.loads(data)


class _Worker:
    def __init__(self, warm: Sequence[str]):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "r1jax.rewards._worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in the terminal is for the trainer, not the workers
            close_fds=True,
        )
        self.started_at = time.monotonic()
        self.ready = False
        self.task: tuple[int, float] | None = None  # (call index, deadline)
        _write_frame(self.proc.stdin.fileno(), (list(sys.path), list(warm)))

    @property
    def fd(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, call: tuple[str, tuple, dict]) -> None:
        _write_frame(self.proc.stdin.fileno(), call)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


class ProcessPool:
    """Worker processes for reward calls; `run` returns ('ok', value) | ('error', msg) | ('timeout', None) per call.

    warm: modules every worker imports before it reports ready (math-verify takes ~1 s),
    so import time does not eat into the first call's timeout.
    """

    def __init__(self, num_workers: int = 2, warm: Sequence[str] = ("math_verify",), start_timeout_s: float = 60.0):
        if num_workers < 1:
            raise ValueError(f"num_workers={num_workers} must be >= 1")
        self.warm, self.start_timeout_s = tuple(warm), start_timeout_s
        self._lock = threading.Lock()
        self._workers = [_Worker(self.warm) for _ in range(num_workers)]
        self.restarts = 0
        atexit.register(self.close)

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Block until every worker has started (optional: `run` waits for what it needs)."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not all(w.ready for w in self._workers) and time.monotonic() < deadline:
                self._poll(time.monotonic() + 0.1, results=None)
            return all(w.ready for w in self._workers)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = _Worker(self.warm)
        self.restarts += 1

    def _poll(self, until: float, results) -> None:
        """Wait for worker output until `until` or the first message; handle messages, deaths, deadlines."""
        waiting = [w for w in self._workers if not w.ready or w.task is not None]
        deadlines = [w.task[1] for w in waiting if w.task is not None]
        timeout = max(0.0, min([until, *deadlines]) - time.monotonic())
        readable = select.select([w.fd for w in waiting], [], [], timeout)[0] if waiting else []
        if not waiting:
            time.sleep(timeout)
        for w in [w for w in waiting if w.fd in readable]:
            msg = _read_frame(w.fd)
            if msg is None:  # died (e.g. killed by the OOM killer) or failed to start
                if w.task is not None and results is not None:
                    results[w.task[0]] = ("error", f"reward worker died (exit {w.proc.poll()})")
                self._replace(w)
            elif msg[0] == "ready":
                w.ready = True
            else:
                if results is not None:
                    results[w.task[0]] = msg
                w.task = None
        now = time.monotonic()
        for w in list(self._workers):
            if w.task is not None and now >= w.task[1]:
                if results is not None:
                    results[w.task[0]] = ("timeout", None)
                self._replace(w)  # SIGKILL is the only way to stop a hung call
            elif not w.ready and now - w.started_at > self.start_timeout_s:
                self._replace(w)

    def run(self, calls: Sequence[tuple[str, tuple, dict]], timeout_s: Sequence[float]) -> list[tuple[str, Any]]:
        """Run `calls` = [(function name, args, kwargs)] with per-call timeouts (from when a worker takes it)."""
        results: list[tuple[str, Any] | None] = [None] * len(calls)
        pending = collections.deque(range(len(calls)))
        give_up = time.monotonic() + self.start_timeout_s
        with self._lock:
            # Calls still queued when the whole batch would have finished with every worker busy the whole
            # time (e.g. workers being replaced after kills) time out: hung work never holds up the caller.
            rounds = -(-len(calls) // max(1, len(self._workers)))
            budget_end = time.monotonic() + max(timeout_s, default=0.0) * rounds
            while pending or any(w.task is not None for w in self._workers):
                if pending and time.monotonic() > budget_end:
                    while pending:
                        results[pending.popleft()] = ("timeout", None)
                for w in self._workers:
                    if pending and w.ready and w.task is None:
                        i = pending.popleft()
                        try:
                            w.send(calls[i])
                        except (BrokenPipeError, TypeError, ValueError, AttributeError) as e:
                            results[i] = ("error", f"could not send call to reward worker: {e}")
                            if isinstance(e, BrokenPipeError):
                                self._replace(w)
                            continue
                        w.task = (i, time.monotonic() + timeout_s[i])
                if any(w.ready for w in self._workers):
                    give_up = time.monotonic() + self.start_timeout_s
                elif time.monotonic() > give_up:  # no worker comes up at all: report instead of hanging
                    while pending:
                        results[pending.popleft()] = ("error", "no reward worker started")
                    break
                self._poll(time.monotonic() + 0.5, results)
        return results

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers = []
