"""A reward worker process (`python -m r1jax.rewards._worker`), driven by `workers.ProcessPool` over stdin/stdout.

Protocol (length-prefixed JSON): the parent sends (sys.path, modules to warm up);
the worker replies ('ready', None); then per call the parent sends
(function name, args, kwargs) and the worker replies ('ok', value) or
('error', 'Type: message'). The worker exits when its parent does.
"""

import importlib
import os
import sys
import threading
import time

# Already loaded when this runs: `python -m r1jax.rewards._worker` imports the package r1jax.rewards first
from r1jax.rewards.compose import resolve_reward
from r1jax.rewards.workers import _read_frame, _write_frame


def _watch_parent(parent: int) -> None:
    # A hung call never reads stdin's EOF; poll the parent so an orphaned worker still exits.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def main() -> None:
    fd_in = sys.stdin.fileno()
    fd_out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # prints from reward code must not corrupt the protocol
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    init = _read_frame(fd_in)
    if init is None:
        return
    path, warm = init
    sys.path[:] = path
    for module in warm:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # optional (e.g. math-verify missing): calls that need it report the error themselves

    _write_frame(fd_out, ("ready", None))
    while True:
        call = _read_frame(fd_in)
        if call is None:
            return
        name, args, kwargs = call
        try:
            result = ("ok", resolve_reward(name)(*args, **kwargs))
        except BaseException as e:  # noqa: B036 -- any failure of the reward is reported, not fatal
            result = ("error", f"{type(e).__name__}: {e}")
        try:
            _write_frame(fd_out, result)
        except Exception as e:  # e.g. a return value JSON cannot carry
            _write_frame(fd_out, ("error", f"reward result could not be sent: {type(e).__name__}: {e}"))


if __name__ == "__main__":
    main()
