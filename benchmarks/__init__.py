"""Benchmarks of r1jax, run from the repository root as modules, e.g. `python -m benchmarks.measure.vs_trl`.

- `measure/`: measurements of the code: side by side with TRL and transformers, rooflines, memory, phase
  breakdowns, the accelerator suite, before / after comparisons (`ab`);
- `studies/`: runs of the pipeline that answer a question about the method (seeds pooled, kinds of reflection);
- `harness.py`: the measuring rules both share (pinned threads, load records, spreads).

Each script writes its figures with `--json PATH`; RESULTS.md holds the tables with their dates and commands.
"""
