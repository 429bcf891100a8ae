"""The program that runs inside the sandbox for function-call and checked-assert tests (see verdicts.py);
standard library only.

Copied into the sandbox's work dir as its main program, it plays one of two roles named by `harness.json`:

- 'serve' (the candidate's process): runs the trusted setup code, then the candidate's code, then
  answers call requests, one JSON line each, read from `in_fd`: it calls the named function on the
  decoded arguments and writes back the result encoded as plain tagged JSON (or the exception's type
  name) on `out_fd`. It never sees an expected output, and only values of builtin types leave it.
- 'check' (the checking process, no candidate code in it): runs the trusted setup code, binds each
  candidate function name to a proxy that sends the call to the 'serve' process and decodes its
  reply, then runs the test code (asserts). The parent reads only its exit status.

`encode` / `decode` are shared with the parent: values cross process boundaries as JSON in which
tuples, sets, frozensets, dicts and non-finite floats are tagged, so decoding rebuilds builtin objects
only (no object can carry its own `__eq__` across). Values of any other type, subclasses of builtins
included, cannot be encoded: such a return is a failed call.
"""

import json
import math
import os
import sys

_TAGS = ("tuple", "set", "frozenset", "dict", "float")


class EncodeError(TypeError):
    pass


def encode(x, depth=0):
    """A builtin value -> JSON-able data (exact types only: an int subclass is not an int here)."""
    if depth > 100:
        raise EncodeError("value nested deeper than 100")
    t = type(x)
    if x is None or t is bool or t is int or t is str:
        return x
    if t is float:
        return x if math.isfinite(x) else {"float": repr(x)}
    if t is list:
        return [encode(v, depth + 1) for v in x]
    if t is tuple or t is set or t is frozenset:
        items = [encode(v, depth + 1) for v in x]
        return {t.__name__: items}
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    raise EncodeError(f"cannot encode a value of type {t.__name__}")


def decode(x):
    """Inverse of `encode`, building builtin objects only; anything `encode` cannot produce raises ValueError."""
    t = type(x)
    if x is None or t is bool or t is int or t is str or t is float:
        return x
    if t is list:
        return [decode(v) for v in x]
    if t is dict and len(x) == 1:
        ((tag, items),) = x.items()
        if tag == "float" and items in ("nan", "inf", "-inf"):
            return float(items)
        if tag in _TAGS and type(items) is list:
            values = [decode(v) for v in items]
            if tag == "tuple":
                return tuple(values)
            if tag == "set":
                return set(values)
            if tag == "frozenset":
                return frozenset(values)
            if all(type(kv) is list and len(kv) == 2 for kv in values):
                return {k: v for k, v in values}
    raise ValueError(f"not an encoded value: {str(x)[:80]}")


def _write_line(fd, obj):
    data = (json.dumps(obj) + "\n").encode()
    while data:
        data = data[os.write(fd, data) :]


def serve(cfg):
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    load_error = None
    try:
        exec(compile(cfg["setup"], "setup.py", "exec"), ns)
        with open(cfg["solution"], encoding="utf-8") as f:
            exec(compile(f.read(), "solution.py", "exec"), ns)
    except BaseException as e:  # noqa: B036 -- the candidate's faults (SystemExit included) fail its calls
        load_error = type(e).__name__
    out_fd = cfg["out_fd"]
    with os.fdopen(cfg["in_fd"], "rb") as requests:
        for line in requests:
            try:
                if load_error is not None:
                    raise RuntimeError(f"solution failed to load: {load_error}")
                req = json.loads(line)
                fn = ns[req["fn"]]
                reply = {"ok": encode(fn(*decode(req["args"]), **decode(req["kwargs"])))}
            except BaseException as e:  # noqa: B036 -- sys.exit() inside a call is a failed call
                reply = {"error": type(e).__name__}
            _write_line(out_fd, reply)


class CandidateError(Exception):
    """The candidate's function raised (its exception's type name is the message) or its reply was unusable."""


def check(cfg):
    import ctypes
    import random

    # Not dumpable: another process of the same uid cannot ptrace this one or read its memory.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
    random.seed(0)  # tests that draw random inputs draw the same ones every run
    requests = os.fdopen(cfg["out_fd"], "wb", buffering=0)
    replies = os.fdopen(cfg["in_fd"], "rb")

    def proxy(name):
        def call(*args, **kwargs):
            _write_line(requests.fileno(), {"fn": name, "args": encode(list(args)), "kwargs": encode(kwargs)})
            line = replies.readline()
            if not line:
                raise CandidateError("the candidate's process ended")
            try:
                reply = json.loads(line)
                if "error" in reply:
                    raise CandidateError(str(reply["error"]))
                return decode(reply["ok"])
            except (ValueError, TypeError, KeyError) as e:
                raise CandidateError(f"unusable reply: {e}") from None

        call.__name__ = name
        return call

    ns = {"__name__": "__main__"}
    exec(compile(cfg["setup"], "setup.py", "exec"), ns)
    for name, target in cfg["proxies"].items():
        ns[name] = proxy(target)
    exec(compile(cfg["test"], "test.py", "exec"), ns)
    sys.exit(0)


def main():
    with open("harness.json") as f:
        cfg = json.load(f)
    {"serve": serve, "check": check}[cfg["role"]](cfg)


if __name__ == "__main__":
    main()
