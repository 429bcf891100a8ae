"""Tests for r1jax.data: file sources, malformed rows, shuffling, sharding, resumable iterators, SFT packing."""

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from array_record.python import array_record_module

from r1jax import data

ROWS = [
    {"problem": "1+1?", "solution": "2", "cases": [{"in": "1", "out": "2"}], "lang": "en"},
    {"problem": "2+3?", "solution": "5", "cases": [], "lang": "zh"},
    {"problem": "name a prime", "solution": "7", "cases": [], "lang": "en"},
]
FIELDS = data.PromptFields(question="problem", answer="solution", tests="cases", language="lang")


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return str(path)


def write_array_record(path, rows):
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
    for r in rows:
        writer.write(r if isinstance(r, bytes) else json.dumps(r).encode())
    writer.close()
    return str(path)


WRITERS = {"jsonl": write_jsonl, "parquet": write_parquet, "array_record": write_array_record}


def ids(batches):
    return [r["id"] for b in batches for r in b]


# ----------------------------------------------------------------------------- sources


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_reads_each_format(tmp_path, fmt):
    path = WRITERS[fmt](tmp_path / f"train.{fmt}", ROWS)
    source = data.load_prompts(path, FIELDS)
    assert source.records == [
        {"id": f"train.{fmt}:0", "question": "1+1?", "answer": "2", "tests": [{"in": "1", "out": "2"}],
         "language": "en"},
        {"id": f"train.{fmt}:1", "question": "2+3?", "answer": "5", "tests": [], "language": "zh"},
        {"id": f"train.{fmt}:2", "question": "name a prime", "answer": "7", "tests": [], "language": "en"},
    ]  # fmt: skip
    assert source.stats == {"num_records": 3, "num_skipped": 0}


def test_id_field_and_in_memory_records():
    # Numeric answers (common in math sets) become strings.
    records = [{"id": f"add-{i}", "question": f"{i}+1", "answer": i + 1, "solution": "...", "task": "add"}
               for i in range(3)]  # fmt: skip
    source = data.prompts_from_records(records, data.PromptFields(extras=("task",)))
    assert [r["id"] for r in source.records] == ["add-0", "add-1", "add-2"]
    assert source.records[2] == {"id": "add-2", "question": "2+1", "answer": "3", "tests": None, "language": None,
                                 "task": "add"}  # fmt: skip


BAD_JSONL = [
    ROWS[0],
    '{"problem": "unterminated',  # line 2: undecodable
    {"problem": "no answer", "lang": "en"},  # line 3: missing field
    ROWS[2],
    {"problem": ["not", "a", "str"], "solution": "1"},  # line 5: wrong type
    "[1, 2]",  # line 6: not an object
    {"problem": "bool answer", "solution": True},  # line 7: wrong type
]


@pytest.mark.parametrize(
    "line, problem",
    [(2, "undecodable JSON"), (3, "'solution' missing"), (5, "'problem' has type list"), (6, "JSON object"),
     (7, "'solution' has type bool")],
)  # fmt: skip
def test_malformed_row_names_file_and_line(tmp_path, line, problem):
    # Only the row under test is broken; the others are valid, so the error must be about this line.
    rows = [r if i + 1 == line else ROWS[0] for i, r in enumerate(BAD_JSONL)]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(data.DataError, match=rf"^{tmp_path}/bad\.jsonl:{line}: .*{problem}"):
        data.load_prompts(path, FIELDS)


def test_malformed_rows_parquet_and_array_record(tmp_path):
    path = write_parquet(tmp_path / "t.parquet", [ROWS[0], {"problem": "x", "solution": None, "lang": "en"}])
    with pytest.raises(data.DataError, match=r"t\.parquet:2: field 'solution' missing"):
        data.load_prompts(path, FIELDS)
    path = write_array_record(tmp_path / "t.array_record", [ROWS[0], ROWS[1], b"\xff\xfe not json"])
    with pytest.raises(data.DataError, match=r"t\.array_record:3: undecodable JSON"):
        data.load_prompts(path, FIELDS)


def test_skip_mode_counts_malformed_rows(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", BAD_JSONL)
    source = data.load_prompts(path, FIELDS, on_error="skip")
    assert [r["id"] for r in source.records] == ["bad.jsonl:0", "bad.jsonl:3"]
    assert source.stats == {"num_records": 2, "num_skipped": 5}
    assert [m.split(": ")[0] for m in source.skipped] == [f"{path}:{n}" for n in (2, 3, 5, 6, 7)]


def test_duplicate_ids(tmp_path):
    rows = [{"id": 7, "question": "a", "answer": "1"}, {"id": "8", "question": "b", "answer": "2"},
            {"id": "7", "question": "c", "answer": "3"}]  # fmt: skip
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    with pytest.raises(data.DataError, match=r"dup\.jsonl:3: duplicate id '7' \(first at .*dup\.jsonl:1\)"):
        data.load_prompts(path)
    assert data.load_prompts(path, on_error="skip").stats == {"num_records": 2, "num_skipped": 1}


# ----------------------------------------------------------------------------- prompt pipeline

RECORDS = [{"id": f"p{i}", "question": f"q{i}", "answer": str(i)} for i in range(24)]


def prompt_ids(seed, num_epochs=1, **kwargs):
    it, _ = data.make_prompt_iterator(RECORDS, batch_size=4, seed=seed, num_epochs=num_epochs, **kwargs)
    return ids(it)


def test_shuffle_is_deterministic_by_seed_and_reshuffles_each_epoch():
    order = prompt_ids(seed=1, num_epochs=2)
    assert order == prompt_ids(seed=1, num_epochs=2)
    assert order != prompt_ids(seed=2, num_epochs=2)
    first, second = order[:24], order[24:]
    assert sorted(first) == sorted(second) == sorted(r["id"] for r in RECORDS)
    assert first != second
    assert prompt_ids(seed=1, shuffle=False) == [r["id"] for r in RECORDS]


def test_prompt_iterator_resumes_exactly():
    full, _ = data.make_prompt_iterator(RECORDS, batch_size=4, seed=3, num_epochs=3)
    full = ids(full)
    assert len(full) == 72 and all(full.count(r["id"]) == 3 for r in RECORDS)

    it, _ = data.make_prompt_iterator(RECORDS, batch_size=4, seed=3, num_epochs=3)
    before = ids(next(it) for _ in range(5))
    state = json.loads(json.dumps(it.get_state()))  # as stored in the checkpoint
    next(it)  # the interrupted run went on past the checkpoint; that batch must come again
    fresh, _ = data.make_prompt_iterator(RECORDS, batch_size=4, seed=3, num_epochs=3)
    fresh.set_state(state)
    after = ids(fresh)
    assert before + after == full


@pytest.mark.parametrize("n, count", [(12, 3), (10, 3), (7, 1)])
def test_host_shards_are_disjoint_and_cover_the_data(n, count):
    records = RECORDS[:n]
    shards = []
    for index in range(count):
        it, _ = data.make_prompt_iterator(records, batch_size=1, seed=0, num_epochs=1, shard_index=index,
                                          shard_count=count)  # fmt: skip
        shards.append(set(ids(it)))
    assert all(len(s) == n // count for s in shards)  # equal: hosts stay in lockstep
    assert sum(len(s) for s in shards) == len(set().union(*shards))  # disjoint
    # All but the n % count records dropped to keep shards equal.
    assert set().union(*shards) == {r["id"] for r in records[: n - n % count]}


def test_default_shard_is_this_process():
    it, _ = data.make_prompt_iterator(RECORDS, batch_size=5, seed=0, num_epochs=1, drop_remainder=False)
    assert sorted(ids(it)) == sorted(r["id"] for r in RECORDS)  # one process: everything, last batch short


# ----------------------------------------------------------------------------- SFT


def encode(text):
    return [ord(c) - ord("a") + 3 for c in text]  # 'a' -> 3; 0, 1, 2 are pad, bos, eos


PAD, BOS, EOS, SEQ_LEN = 0, 1, 2, 16
KEYS = ("tokens_bt", "targets_bt", "loss_mask_bt", "segment_ids_bt", "positions_bt")


def sft_records(n=40, seed=0):
    rng = random.Random(seed)
    word = lambda k: "".join(rng.choice("abcdefgh") for _ in range(k))
    # Lengths up to 1 + 9 + 9 + 1 = 20 tokens: some exceed SEQ_LEN and get truncated.
    return [{"id": str(i), "prompt": word(rng.randint(1, 9)), "response": word(rng.randint(0, 9))} for i in range(n)]


def sft_iterator(records, **kwargs):
    return data.make_sft_iterator(records, encode=encode, eos_id=EOS, pad_id=PAD, bos_id=BOS, seq_len=SEQ_LEN,
                                  batch_size=3, seed=5, **kwargs)  # fmt: skip


def test_sft_packing_masks_segments_and_tokens():
    records = sft_records()
    it, stats = sft_iterator(records, num_epochs=1, drop_remainder=False)
    # Independent oracle: the full sequence of each example, truncated to SEQ_LEN + 1 tokens.
    expected = {}
    for r in records:
        seq = [BOS] + encode(r["prompt"]) + encode(r["response"]) + [EOS]
        n_prefix = 1 + len(r["prompt"])
        if n_prefix >= SEQ_LEN + 1:
            continue  # no response token survives truncation: dropped
        seq = seq[: SEQ_LEN + 1]
        expected.setdefault(tuple(seq), []).append(seq[n_prefix:])  # response targets (incl. EOS if kept)
    n_long = sum(1 + len(r["prompt"]) + len(r["response"]) + 1 > SEQ_LEN + 1 for r in records)
    n_dropped = sum(1 + len(r["prompt"]) >= SEQ_LEN + 1 for r in records)
    assert stats["num_truncated"] == n_long > 0 and stats["num_dropped"] == n_dropped
    assert stats["num_examples"] == len(records) - n_dropped

    seen = []
    for batch in it:
        assert sorted(batch) == sorted(KEYS)
        assert all(v.shape[1] == SEQ_LEN and v.dtype == np.int32 for v in batch.values())
        for tok, tgt, mask, seg, pos in zip(*(batch[k] for k in KEYS)):
            pad = seg == 0
            assert (tok[pad] == PAD).all() and (tgt[pad] == PAD).all() and (mask[pad] == 0).all()
            # Padding only at the end, segments numbered 1, 2, ... in order, each one contiguous.
            n_used = int((~pad).sum())
            assert not pad[:n_used].any()
            segs = seg[:n_used]
            assert (np.diff(segs) >= 0).all() and (np.unique(segs) == np.arange(1, segs.max() + 1)).all()
            for s in np.unique(segs):
                idx = np.flatnonzero(seg == s)
                assert (pos[idx] == np.arange(len(idx))).all()
                # Next-token pairs stay inside the document: the segment rebuilds one example's sequence.
                seq = tuple(tok[idx]) + (int(tgt[idx[-1]]),)
                assert (tgt[idx[:-1]] == tok[idx[1:]]).all()
                assert seq in expected, seq
                assert list(tgt[idx][mask[idx] == 1]) in expected[seq]
                assert (mask[idx] == 1).sum() == len(expected[seq][0])
                seen.append(seq)
    # Every example exactly once over the epoch.
    assert sorted(seen) == sorted(s for s, v in expected.items() for _ in v)


def test_sft_iterator_resumes_exactly():
    records = sft_records(30, seed=1)
    full, _ = sft_iterator(records, num_epochs=2)
    full = list(full)
    assert len(full) >= 8
    it, _ = sft_iterator(records, num_epochs=2)
    before = [next(it) for _ in range(4)]
    state = json.loads(json.dumps(it.get_state()))
    fresh, _ = sft_iterator(records, num_epochs=2)
    fresh.set_state(state)
    resumed = before + list(fresh)
    assert len(resumed) == len(full)
    for a, b in zip(resumed, full):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_sft_from_files_and_loss_mask_example(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"q": "ab", "a": "c"}, {"q": "x"}])
    with pytest.raises(data.DataError, match=r"sft\.jsonl:2: field 'a' missing"):
        data.load_sft_records(path, data.SFTFields(prompt="q", response="a"))
    records = data.load_sft_records(path, data.SFTFields(prompt="q", response="a"), on_error="skip")
    it, stats = data.make_sft_iterator(records, encode=encode, eos_id=EOS, pad_id=PAD, seq_len=8, batch_size=1,
                                       num_epochs=1)  # fmt: skip
    assert stats["num_skipped"] == 1 and stats["num_loss_tokens"] == 2
    (batch,) = list(it)
    # No BOS: tokens a b c EOS -> inputs a b c, targets b c EOS; loss on c and EOS.
    np.testing.assert_array_equal(batch["tokens_bt"][0, :4], [3, 4, 5, PAD])
    np.testing.assert_array_equal(batch["targets_bt"][0, :4], [4, 5, EOS, PAD])
    np.testing.assert_array_equal(batch["loss_mask_bt"][0], [0, 1, 1, 0, 0, 0, 0, 0])
