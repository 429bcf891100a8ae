"""The Markdown table of docs/scaling.md ("Compiled for TPU") from `r1jax compile --json` reports.

    r1jax compile --config experiments/r1_zero.py:qwen2.5-0.5b --topology v5e:2x2 --config.mesh.shape='(1,4,1)' \\
        --json /tmp/0.5b_v5e.json
    python -m benchmarks.measure.compile_table /tmp/0.5b_v5e.json [more.json ...]

One row per program and report: per-chip total (with what stays resident) against HBM, whether it fits, compile
time, TFLOP per chip, the roofline bound and how often the program runs per RL step.
"""

from __future__ import annotations

import json
import sys


def rows(report: dict) -> list[str]:
    config = report["config"].rpartition(":")[2]
    settings = " ".join(o.removeprefix("--config.") for o in report.get("overrides", ()))
    out = []
    for p in report["programs"]:
        total = f"{p['total_gib']:.1f}" if "total_gib" in p else "-"
        if p["fits"]:
            fits = "yes"
        elif p["compiled"]:
            fits = f"no: {p['shortfall_gib']:.1f} GiB over"
        else:
            fits = "no (XLA: out of HBM)" if "HBM" in p.get("error", "") else "no (does not compile)"
        if p["compiled"]:
            bound = f"{p['roofline_s'] * 1e3:.1f} ms"
            tflop = f"{p['flops'] / 1e12:.2f}"
        else:
            bound = tflop = "-"
        out.append(
            f"| {config} | {settings} | {report['topology']} ({report['chip']}) | {p['name']} | {total} / "
            f"{report['hbm_gib']:g} | {fits} | {p['compile_s']:.0f} | {tflop} | {bound} | {p['runs']:g} |"
        )
    return out


def main(paths) -> str:
    lines = [
        "| preset | overrides | topology | program | GiB per chip / HBM | fits | compile s | TFLOP per chip | "
        "roofline bound | runs per step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        with open(path) as f:
            lines += rows(json.load(f))
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
