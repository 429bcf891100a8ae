"""`r1jax sweep` and `r1jax results`: a sweep(add) expanded into runs with their own workdirs, run one after another
(each a fresh `r1jax train` process), one results table; `--print-launch tpu` commands that start each run on every
worker of a TPU VM slice. The runs use a toy experiment (a few logged numbers, no model) so the test takes seconds.
"""

from __future__ import annotations

import json
import pathlib
import shlex

import pytest

from r1jax import main, sweep

REPO = pathlib.Path(__file__).resolve().parents[1]

TOY = '''
"""A toy experiment: 'trains' by logging loss = (lr - 0.3)² · (1 + tag length) / step for `steps` steps."""
import ml_collections

ENTRY = "r1jax_experiment_toy_sweep:train"  # this file, as r1jax.config_lib.load_module registers it


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.lr = 0.1
    c.steps = 3
    c.tag = "a"
    c.shape = (1, 2)
    return c


def sweep(add):
    add(lr=0.1)
    add({"lr": 0.2}, tag="bb")
    add(**{"lr": 0.3, "shape": (2, 1)}, name="third")


def train(config, workdir):
    from r1jax import metrics

    writer = metrics.MetricsWriter(workdir)
    for step in range(1, config.steps + 1):
        loss = (config.lr - 0.3) ** 2 * (1 + len(config.tag)) / step
        writer.write(step, {"toy/loss": loss, "toy/shape_sum": float(sum(config.shape))})
    writer.close()
    return {"toy/loss": loss}
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    path = tmp_path / "toy_sweep.py"
    path.write_text(TOY)
    return path


def test_sweep_runs_three_workdirs_and_one_results_table(toy, tmp_path, capsys):
    out = tmp_path / "sw"
    rc = main.run(["sweep", "--config", f"{toy}:x", "--workdir", str(out), "--config.steps=2"])
    assert rc == 0
    names = ["lr=0.1", "lr=0.2,tag=bb", "third"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
    manifest = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in manifest["runs"]] == names
    assert [r["returncode"] for r in manifest["runs"]] == [0, 0, 0]
    assert manifest["common_overrides"] == ["--config.steps=2"]
    for name in names:  # every run got the common override (2 steps) and its own
        steps = [json.loads(line)["step"] for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]

    table = (out / "results.md").read_text()
    assert capsys.readouterr().out.endswith(table)
    lines = table.strip().splitlines()
    assert lines[0] == "| run | lr | tag | shape | step | toy/loss | toy/shape_sum |"
    # final loss = (lr - 0.3)² (1 + len(tag)) / 2, formatted to 4 significant digits
    assert lines[2] == "| lr=0.1 | 0.1 | — | — | 2 | 0.04 | 3 |"
    assert lines[3] == "| lr=0.2,tag=bb | 0.2 | bb | — | 2 | 0.015 | 3 |"
    assert lines[4] == "| third | 0.3 | — | [2, 1] | 2 | 0 | 3 |"
    assert len(lines) == 5

    # `r1jax results` rebuilds the same table, and takes chosen columns
    assert main.run(["results", "--workdir", str(out)]) == 0
    assert (out / "results.md").read_text() == table
    assert main.run(["results", "--workdir", str(out), "--keys", "toy/loss"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "| third | 0.3 | — | [2, 1] | 2 | 0 |"


def test_print_launch_tpu_starts_each_run_on_every_worker(toy, tmp_path, capsys):
    argv = ["sweep", "--config", f"{toy}:x", "--workdir", "gs://bucket/sw", "--config.steps=5"]
    rc = main.run(
        [*argv, "--print-launch", "tpu", "--tpu-name", "my-v5e", "--zone", "us-west4-a", "--remote-dir", "r1"]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert not (tmp_path / "sw").exists()  # printing runs nothing
    expected_overrides = [
        ["--config.lr=0.1"],
        ["--config.lr=0.2", "--config.tag=bb"],
        ["--config.lr=0.3", "--config.shape=(2, 1)"],
    ]
    for line, name, overrides in zip(lines, ["lr=0.1", "lr=0.2,tag=bb", "third"], expected_overrides):
        words = shlex.split(line)
        assert words[:8] == [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "ssh",
            "my-v5e",
            "--zone=us-west4-a",
            "--worker=all",
        ]
        assert len(words) == 9 and words[8].startswith("--command=")
        remote = words[8].removeprefix("--command=")
        cd, _, command = remote.partition(" && ")
        assert cd == "cd r1"
        assert shlex.split(command) == [
            "r1jax",
            "train",
            "--config",
            f"{toy}:x",
            "--workdir",
            f"gs://bucket/sw/{name}",
            "--config.steps=5",
            *overrides,
        ]
    # local launch lines are the same commands without ssh
    assert main.run([*argv, "--print-launch", "local"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert shlex.split(first)[:6] == ["r1jax", "train", "--config", f"{toy}:x", "--workdir", "gs://bucket/sw/lr=0.1"]
    with pytest.raises(ValueError, match="--print-launch=tpu needs --tpu-name and --zone"):
        main.run([*argv, "--print-launch", "tpu"])


def test_sweep_typo_fails_before_running_naming_the_run(tmp_path):
    bad = tmp_path / "bad_sweep.py"
    bad.write_text(TOY.replace("add(lr=0.1)", 'add(lr=0.1, **{"lrr": 1.0})'))
    with pytest.raises(ValueError, match=r"sweep run 'lr=0.1,lrr=1.0': --config.lrr: unknown field 'lrr'"):
        sweep.expand(f"{bad}:x")
    assert not (tmp_path / "sw").exists()
    nosweep = tmp_path / "nosweep.py"
    nosweep.write_text(TOY.split("def sweep")[0])
    with pytest.raises(ValueError, match="defines no sweep"):
        sweep.expand(f"{nosweep}:x")


def test_r1_zero_sweep_expands_to_valid_runs():
    runs = sweep.expand(str(REPO / "experiments" / "r1_zero.py") + ":tiny")
    assert len(runs) == 6 and len({r.name for r in runs}) == 6
    assert runs[0].override_args() == ["--config.rl.loss_type=dapo", "--config.rl.group_size=4"]
