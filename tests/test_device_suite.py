"""`python -m benchmarks.measure.device_suite --smoke` runs end to end on CPU and its numerical checks pass.

The suite is meant for an accelerator that is lent only now and then; running its smoke mode here (tiny shapes,
interpret-mode Pallas) keeps every section working between those runs.
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTIONS = ("ceilings", "kernels", "train", "decode", "rollout")


def test_device_suite_smoke(tmp_path):
    out = tmp_path / "suite.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.measure.device_suite", "--smoke", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] is True and r["backend"] == "cpu"
    assert set(r["sections"]) == set(SECTIONS)
    for name in SECTIONS:
        assert r["sections"][name]["ok"], (name, r["sections"][name].get("error"))
    assert r["all_ok"] is True
    assert {"before", "after", "loaded"} <= set(r["load_avg"])

    k = r["sections"]["kernels"]
    assert k["passed"] is True and k["pallas_interpret"] is True
    assert set(k["logprob"]) == set(k["kl"]) == {"xla", "chunked", k["pallas_implementation"]}
    for op, outputs in (("logprob", {"logp", "entropy", "dh", "dw"}), ("kl", {"kl", "dh", "dw"})):
        for impl, row in k[op].items():
            assert set(row["errors"]) == outputs, (op, impl)
            for name, e in row["errors"].items():
                assert e["finite"] and e["rel_l2"] < k["tolerance_rel_l2"], (op, impl, name, e)
            assert row["fwd_bwd_s"]["median"] > 0 and row["temp_bytes"] >= 0

    c = r["sections"]["ceilings"]
    assert c["matmul_flop_per_s"] > 0 and c["copy_bytes_per_s"] > 0
    t = r["sections"]["train"]
    assert t["loss_finite"] and t["model_flops_per_step"] > 0 and t["mfu_vs_measured_matmul"] > 0
    for row in r["sections"]["decode"]["batches"].values():
        assert row["bytes_per_step"] > r["sections"]["decode"]["weight_bytes"]
        assert row["roofline_step_s"] > 0
    assert r["sections"]["rollout"]["tokens_per_s"] > 0
