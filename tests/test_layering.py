"""The import structure DESIGN.md draws: experiments → main / pipeline / demo → trainers → evals → rollouts →
sampling, rewards, data → models, kernels, grpo, checkpoint, sharding (and the small shared modules). Module-level
imports only point down a layer or sideways inside one, `r1jax.data` never imports `r1jax.rewards`, and nothing
imports r1jax inside a function (a circle in disguise), except the CLI's lazy start-up. Inside `r1jax.sampling` the
modules form their own ladder (PACKAGE_ORDER), and the policy's log-prob forward (`r1jax.models.logprobs`) sits
with the model, below the sampler that is checked against it."""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]

# Higher number = higher layer. A module may import its own layer or lower ones.
LAYERS = {
    "r1jax.main": 6, "r1jax.compile": 6, "r1jax.pipeline": 6, "r1jax.demo": 6, "r1jax.sweep": 6,
    "r1jax.trainers": 5,
    "r1jax.evals": 4,
    "r1jax.rollouts": 3,
    "r1jax.sampling": 2, "r1jax.rewards": 2, "r1jax.data": 1,
    "r1jax.train_state": 1, "r1jax.tokenizer": 0, "r1jax.models": 0, "r1jax.kernels": 0, "r1jax.grpo": 0,
    "r1jax.losses": 0, "r1jax.checkpoint": 0, "r1jax.sharding": 0, "r1jax.distributed": 0, "r1jax.metrics": 0,
    "r1jax.config_lib": 0,
    "r1jax": 0,
}


def layer(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    raise KeyError(module)


def modules():
    for path in sorted((REPO / "r1jax").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, ast.parse(path.read_text())
    for path in sorted((REPO / "kernels").rglob("*.py")):
        rel = path.relative_to(REPO / "kernels").with_suffix("")
        yield ".".join(("r1jax", "kernels", *rel.parts)).removesuffix(".__init__"), ast.parse(path.read_text())


def r1jax_imports(tree, top_level: bool):
    nodes = tree.body if top_level else [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    for node in nodes if top_level else (m for f in nodes for m in ast.walk(f)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("r1jax"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                known = any(full == k or full.startswith(k + ".") for k in LAYERS if k != "r1jax")
                yield full if known else node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("r1jax"))


def test_imports_point_down_or_sideways():
    bad = []
    for name, tree in modules():
        for target in r1jax_imports(tree, top_level=True):
            if layer(target) > layer(name):
                bad.append(f"{name} -> {target}")
            if name.startswith("r1jax.data") and target.startswith("r1jax.rewards"):
                bad.append(f"{name} -> {target} (data must not import rewards)")
    assert not bad, bad


# Imports inside functions that are there on purpose: optional or backend-specific code loaded only when used.
# Anything else inside a function is a circle in disguise.
DEFERRED = {
    "r1jax.main": "the CLI imports a command's code only when the command runs",
    "r1jax.data.tasks": "reasoning-gym is an optional extra",
    "r1jax.kernels.grouped_logprob.api": "the Pallas backend for the device in use",
    "r1jax.kernels.kl.api": "the Pallas backend for the device in use",
    "r1jax.checkpoint": "model export / import only when a model is exported or loaded",
    "r1jax.sharding": "memory_estimate builds an abstract model",
    "r1jax.distributed": "the checkpoint sync point of the preemption path",
}


def test_no_r1jax_imports_inside_functions():
    bad = [f"{name} -> {t}" for name, tree in modules() if name not in DEFERRED
           for t in r1jax_imports(tree, top_level=False)]
    assert not bad, bad


# A package split like kernels/ into an api, engines and shared pieces: its modules, bottom rung first. A module
# imports only from lower rungs (not sideways: the two engines share decode.py, not each other), and every module
# of the package has a rung.
PACKAGE_ORDER = {
    "r1jax.sampling": [
        ("config",), ("select", "padding"), ("decode",), ("static", "continuous", "reference"), ("api",),
    ],
}


def ladder_violations(package: str, imports: dict[str, list[str]]) -> list[str]:
    rung = {f"{package}.{m}": i for i, names in enumerate(PACKAGE_ORDER[package]) for m in names}
    bad = []
    for name, targets in imports.items():
        for target in targets:
            hit = [m for m in rung if target == m or target.startswith(m + ".")]
            if hit and rung[hit[0]] >= rung[name]:
                bad.append(f"{name} -> {target}")
    return bad


def test_package_modules_import_down_their_ladder():
    for package, rungs in PACKAGE_ORDER.items():
        members = {name: list(r1jax_imports(tree, top_level=True)) for name, tree in modules()
                   if name.startswith(package + ".")}
        assert sorted(members) == sorted(f"{package}.{m}" for names in rungs for m in names)
        assert not ladder_violations(package, members)
    assert ladder_violations("r1jax.sampling", {"r1jax.sampling.static": ["r1jax.sampling.continuous.rollout"],
                                                "r1jax.sampling.select": ["r1jax.sampling.config.Rollout"]}) == [
        "r1jax.sampling.static -> r1jax.sampling.continuous.rollout"]


def test_the_check_sees_an_upward_import():
    tree = ast.parse("from r1jax.trainers import grpo\nfrom r1jax import rollouts\n")
    assert [t for t in r1jax_imports(tree, top_level=True) if layer(t) > layer("r1jax.data.sources")] == [
        "r1jax.trainers.grpo", "r1jax.rollouts"]
    tree = ast.parse("from r1jax.sampling.config import Rollout\n")  # the model layer must not reach the sampler
    assert [layer(t) > layer("r1jax.models.logprobs") for t in r1jax_imports(tree, top_level=True)] == [True]
