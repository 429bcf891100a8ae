"""Named data formats (r1jax/data/formats.py): GSM8K / MATH / AIME / Countdown rows in the layouts users have."""

import json

import datasets
import pytest

from r1jax.data import formats, sources
from r1jax.rewards.accuracy import accuracy_reward


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_gsm8k_gold_is_the_number_after_the_hashes(tmp_path):
    rows = [
        {"question": "q1", "answer": "It costs 1,000 + 234 = <<1000+234=1234>>1234.\n#### 1,234"},
        {"question": "q2", "answer": "Half of 9 is <<9/2=4.5>>4.5\n#### 4.5"},
    ]
    src = formats.load(_jsonl(tmp_path / "train.jsonl", rows), "gsm8k")
    assert [r["answer"] for r in src] == ["1234", "4.5"]
    assert src[0]["solution"] == "It costs 1,000 + 234 = 1234."  # calculator notes removed, final line cut
    golds = [r["answer"] for r in src]
    assert accuracy_reward(["<answer>1,234</answer>", "<answer>4.5</answer>"], golds) == [1.0, 1.0]
    assert accuracy_reward(["<answer>1234</answer>", "<answer>9/2</answer>"], golds) == [1.0, 1.0]
    assert accuracy_reward(["<answer>1,235</answer>", "<answer>4</answer>"], golds) == [0.0, 0.0]


def test_math_gold_from_boxed_or_answer_field(tmp_path):
    rows = [
        {"problem": "p1", "solution": "So the answer is $\\boxed{\\frac{1}{2}}$."},  # MATH train: no answer field
        {"problem": "p2", "solution": "Thus $\\boxed{0.5}$.", "level": "Level 3", "type": "Algebra"},
        {"problem": "p3", "solution": "$\\boxed{\\sqrt{2}}$ is wrong here", "answer": "\\frac{\\sqrt{2}}{2}"},
    ]
    src = formats.load(_jsonl(tmp_path / "math.jsonl", rows), "math")
    golds = [r["answer"] for r in src]
    assert golds == ["\\frac{1}{2}", "0.5", "\\frac{\\sqrt{2}}{2}"]
    assert src[1]["meta"] == {"level": "Level 3", "type": "Algebra"}
    assert [r["question"] for r in formats.load(str(tmp_path / "math.jsonl"), "math", levels=(3, 4, 5))] == ["p2"]
    preds = ["<answer>0.5</answer>", "<answer>\\frac{1}{2}</answer>", "<answer>\\frac{1}{\\sqrt{2}}</answer>"]
    assert accuracy_reward(preds, golds) == [1.0, 1.0, 1.0]
    assert accuracy_reward(["<answer>0.25</answer>", "<answer>2</answer>", "<answer>2</answer>"], golds) == [0.0] * 3


def test_aime_capitalised_fields_and_zero_padded_answers(tmp_path):
    rows = [{"ID": "2024-I-2", "Problem": "p", "Solution": "s", "Answer": "023"}, {"problem": "q", "answer": 540}]
    src = formats.load(_jsonl(tmp_path / "aime.jsonl", rows), "aime")
    assert [(r["id"], r["answer"]) for r in src] == [("2024-I-2", "23"), ("aime.jsonl:1", "540")]
    assert accuracy_reward(["<answer>23</answer>", "<answer>054</answer>"], [r["answer"] for r in src]) == [1.0, 0.0]


def test_countdown_rows_are_scored_by_the_expression_verifier(tmp_path):
    src = formats.load(_jsonl(tmp_path / "cd.jsonl", [{"target": 16, "nums": [2, 3, 10]}]), "countdown")
    (record,) = src
    assert record["task"] == "countdown"
    assert record["meta"] == {"numbers": [2, 3, 10], "target": 16, "require_all": True}
    scores = accuracy_reward(
        ["<answer>2*3+10</answer>", "<answer>16</answer>", "<answer>2*3*10</answer>", "<answer>10+3+3</answer>"],
        ["16"] * 4, examples=[record] * 4,
    )
    assert scores == [1.0, 0.0, 0.0, 0.0]  # a bare target, a wrong value, a number used twice: 0
    (unused,) = formats.load(_jsonl(tmp_path / "cd2.jsonl", [{"target": 12, "nums": [2, 10, 5]}]), "countdown")
    assert accuracy_reward(["<answer>10+2</answer>"], ["12"], examples=[unused]) == [0.0]  # TinyZero: use all


def test_datasets_save_to_disk_and_hub_exports_read_without_datasets(tmp_path):
    rows = [{"question": f"q{i}", "answer": f"w\n#### {i}"} for i in range(5)]
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0, 1])}).save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "hub" / "main").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "hub" / "main" / "train-00000-of-00001.parquet"))
    ds.select([3]).to_json(str(tmp_path / "hub" / "main" / "test-00000-of-00001.jsonl"))

    assert [r["answer"] for r in formats.load(str(tmp_path / "single"), "gsm8k")] == ["0", "1", "2", "3", "4"]
    assert [r["answer"] for r in formats.load(str(tmp_path / "dict"), "gsm8k", split="test")] == ["0", "1"]
    assert [r["answer"] for r in formats.load(str(tmp_path / "hub"), "gsm8k", split="test")] == ["3"]
    assert len(formats.load(str(tmp_path / "hub"), "gsm8k", split="train")) == 5
    with pytest.raises(ValueError, match="splits \\['train', 'test'\\]"):
        formats.load(str(tmp_path / "dict"), "gsm8k")


def test_sample_files_load_in_their_formats(tmp_path):
    paths = formats.write_samples(str(tmp_path), n=6)
    for name, fmt, split in [
        ("gsm8k", "gsm8k", "train"), ("gsm8k", "gsm8k", "test"), ("math", "math", "train"),
        ("math500", "math", None), ("aime", "aime", None), ("countdown", "countdown", None),
    ]:
        records = list(formats.load(paths[name], fmt, split=split))
        assert len(records) == 6, name
        # every gold answer is accepted by the accuracy reward when written in the answer tag
        scores = accuracy_reward([f"<answer>{r['answer']}</answer>" for r in records], [r["answer"] for r in records],
                                 examples=records if fmt == "countdown" else None)
        if fmt == "countdown":
            assert scores == [0.0] * 6  # the target alone is not an expression over the numbers
        else:
            assert scores == [1.0] * 6, name


def test_malformed_rows_name_file_and_line_and_unknown_format_names_the_known(tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "#### 3"}, {"question": "q", "answer": "42"}])
    with pytest.raises(sources.DataError, match=r"bad\.jsonl:2: .*####"):
        formats.load(path, "gsm8k")
    assert len(formats.load(path, "gsm8k", on_error="skip")) == 1
    with pytest.raises(ValueError, match=r"data.format='gsm8kk': expected one of \['aime', 'countdown', 'gsm8k'"):
        formats.load(path, "gsm8kk")
    with pytest.raises(sources.DataError, match=r"aime.jsonl:1: field 'answer' is not an integer"):
        formats.load(_jsonl(tmp_path / "aime.jsonl", [{"problem": "p", "answer": "x+1"}]), "aime")


def test_chat_traces_become_templated_sft_records(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"},
                      {"role": "assistant", "content": "<think>one and one</think> 2"}]},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "<think>..</think> 4"}]},
        {"messages": [{"role": "assistant", "content": "no question"}]},
    ]
    path = _jsonl(tmp_path / "traces.jsonl", rows)
    with pytest.raises(sources.DataError, match=r"traces\.jsonl:3: .*user turn followed by an assistant"):
        formats.load_traces(path, lambda q: f"User: {q} Assistant:")
    records = list(formats.load_traces(path, lambda q: f"User: {q} Assistant:", on_error="skip"))
    assert [(r["prompt"], r["response"]) for r in records] == [
        ("User: 1+1? Assistant:", "<think>one and one</think> 2"), ("User: 2+2? Assistant:", "<think>..</think> 4")]
