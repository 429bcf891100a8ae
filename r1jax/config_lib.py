"""Experiment configs: `file.py:arg` loading, `--config.a.b=v` overrides, and `get_config(arg)` arg parsing.

An experiment file defines `get_config(arg=None)` returning an `ml_collections.ConfigDict`; `arg` is a
comma-separated list such as `model=tiny,runlocal`. Configs are locked after loading, so an override of a field
that does not exist fails with a message that names it, before anything compiles.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys

import ml_collections


def parse_arg(arg: str | None, positional: str | None = None, **defaults) -> ml_collections.ConfigDict:
    """`'model=tiny,runlocal'` → ConfigDict(model='tiny', runlocal=True), typed after `defaults`.

    A bare word that is not a boolean arg sets the `positional` arg: with positional='model',
    `'qwen2.5-1.5b,runlocal'` means model='qwen2.5-1.5b', runlocal=True.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if not _ and positional is not None and not isinstance(defaults.get(key), bool):
            key, value, _ = positional, key, "="
        if key not in defaults:
            raise ValueError(f"config arg {key!r} (in {arg!r}): unknown; known args are {sorted(defaults)}")
        out[key] = True if not _ else _cast(value, defaults[key], f"arg {key}")
    return out


def _cast(text: str, like, name: str):
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"{name}={text!r}: expected a boolean")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{name}={text!r}: expected an integer") from None
    if isinstance(like, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{name}={text!r}: expected a number") from None
    if isinstance(like, (tuple, list)):
        if not text:
            return type(like)()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = tuple(t for t in text.split(",") if t)
        return type(like)(value if isinstance(value, (tuple, list)) else (value,))
    return text


def load_module(path: str):
    if not os.path.exists(path):
        raise FileNotFoundError(f"--config: no experiment file at {path!r}")
    name = "r1jax_experiment_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_config(spec: str, overrides=()) -> ml_collections.ConfigDict:
    """`experiments/r1_zero.py:tiny` plus `['rl.group_size=4', ...]` → a locked ConfigDict."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    config = module.get_config(arg or None)
    config.lock()
    return check_paths(apply_overrides(config, overrides))


def safe_path(path: str, root: str) -> str:
    """`path` resolved (symlinks, `..`, relative to the working directory), refused unless it lies inside `root`.

    For paths that come from configs or other untrusted input: `root/../elsewhere` and a symlink inside root that
    points out of it both raise ValueError naming the path and the root.
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ValueError(f"path {path!r} resolves to {real!r}, outside the allowed root {real_root!r}")
    return real


# Config fields that name files or directories to read: checkpoints (model, teacher), tokenizers, data files,
# the reward model. A field of one of these names holding a string or a tuple of strings is a path.
PATH_FIELDS = ("checkpoint", "path", "train_files", "eval_files", "files", "reward_model")


def check_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Refuse every path the config names that resolves outside `model.allowed_root`, when that is set.

    One walk over the whole config (pipeline configs nest one config per stage; each stage's `model.allowed_root`
    confines that stage, and a model config's own `allowed_root`, e.g. `teacher.allowed_root`, its subtree).
    Called by `load_config`, so a path is refused before anything is read or compiled.
    """

    def walk(node: ml_collections.ConfigDict, prefix: str, root: str) -> None:
        model = node.get("model")
        if isinstance(model, ml_collections.ConfigDict) and model.get("allowed_root"):
            root = model.allowed_root
        if node.get("allowed_root"):
            root = node.allowed_root
        for key, value in node.items():
            name = prefix + key
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, name + ".", root)
            elif root and key in PATH_FIELDS and isinstance(value, (str, tuple, list)):
                for path in (value,) if isinstance(value, str) else value:
                    if isinstance(path, str) and path:
                        try:
                            safe_path(path, root)
                        except ValueError as e:
                            raise ValueError(f"{name}={path!r}: {e} (model.allowed_root={root!r})") from None

    walk(config, "", "")
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides) -> ml_collections.ConfigDict:
    for item in overrides:
        item = item.removeprefix("--config.").removeprefix("config.")
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected --config.field=value")
        node, parts = config, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ValueError(f"--config.{key}: unknown field {'.'.join(parts[: i + 1])!r}")
            if i < len(parts) - 1:
                node = node[part]
        current = node[parts[-1]]
        node[parts[-1]] = _cast(value, current, f"--config.{key}") if current is not None else value
    return config


def split_cli_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate `--config.x=y` arguments (overrides) from the rest."""
    rest, overrides = [], []
    it = iter(argv)
    for a in it:
        if a.startswith("--config."):
            if "=" not in a:
                a = f"{a}={next(it, '')}"
            overrides.append(a)
        else:
            rest.append(a)
    return rest, overrides
