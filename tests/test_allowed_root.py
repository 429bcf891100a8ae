"""`model.allowed_root` confines every path a config names, checked once when the config is loaded: model
checkpoints, the teacher, tokenizers, data files, the reward model, and each stage of a pipeline config."""

import pathlib

import pytest

from r1jax import config_lib

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def dirs(tmp_path):
    root, outside = tmp_path / "allowed", tmp_path / "outside"
    for d in (root / "model", root / "data", outside):
        d.mkdir(parents=True)
    (root / "escape").symlink_to(outside)  # inside by name, outside once resolved
    return root, outside


def _load(experiment: str, root, overrides):
    return config_lib.load_config(str(EXPERIMENTS / experiment), [f"model.allowed_root={root}", *overrides])


# (experiment, the field, how an override sets it to PATH)
KINDS = {
    "checkpoint": ("r1_zero.py:runlocal", "model.checkpoint", "model.checkpoint={}"),
    "tokenizer": ("r1_zero.py:runlocal", "tokenizer.path", "tokenizer.path={}"),
    "train_files": ("r1_zero.py:runlocal", "data.train_files", "data.train_files={}"),
    "eval_files": ("r1_zero.py:runlocal", "data.eval_files", "data.eval_files={}"),
    "sft_files": ("rejection_sft.py:runlocal", "data.files", "data.files={}"),
    "teacher": ("distill.py:runlocal", "teacher.checkpoint", "teacher.checkpoint={}"),
    "reward_model": ("general_rl.py:runlocal", "rewards.reward_model", "rewards.reward_model={}"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_of_path_is_confined(kind, dirs):
    root, outside = dirs
    experiment, field, override = KINDS[kind]
    inside = root / "data" / "x.jsonl" if "files" in field else root / "model"
    c = _load(experiment, root, [override.format(inside)])  # inside: loads
    value = c
    for part in field.split("."):
        value = value[part]
    assert str(inside) in (value if isinstance(value, tuple) else (value,))
    for bad in (outside, root / ".." / "outside", root / "escape"):
        with pytest.raises(ValueError, match=rf"{field}='{bad}'.*outside the allowed root"):
            _load(experiment, root, [override.format(bad)])
    # Without a root nothing is confined.
    config_lib.load_config(str(EXPERIMENTS / experiment), [override.format(outside)])


def test_data_file_lists_are_checked_one_by_one(dirs):
    root, outside = dirs
    good = f"{root}/data/a.jsonl"
    _load("r1_zero.py:runlocal", root, [f"data.train_files={good},{root}/data/b.jsonl"])
    with pytest.raises(ValueError, match="data.train_files='.*outside/b.jsonl'"):
        _load("r1_zero.py:runlocal", root, [f"data.train_files={good},{outside}/b.jsonl"])


def test_teacher_root_and_pipeline_stages(dirs):
    root, outside = dirs
    # The teacher's own root confines the teacher, even when the student's model has none.
    spec = str(EXPERIMENTS / "distill.py:runlocal")
    with pytest.raises(ValueError, match="teacher.checkpoint="):
        config_lib.load_config(spec, [f"teacher.allowed_root={root}", f"teacher.checkpoint={outside}"])
    # A pipeline config nests one config per stage; each stage's root confines that stage's paths.
    spec = str(EXPERIMENTS / "pipeline.py:runlocal")
    overrides = [f"cold_start.model.allowed_root={root}", f"cold_start.tokenizer.path={outside}"]
    with pytest.raises(ValueError, match="cold_start.tokenizer.path="):
        config_lib.load_config(spec, overrides)
    config_lib.load_config(spec, [f"cold_start.model.allowed_root={root}", f"r1_zero.tokenizer.path={outside}"])
