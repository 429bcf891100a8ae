"""Code-execution sandbox and the code reward: run a completion's Python program against a problem's tests.

Three layers, each in its own module, each using only the ones above it in this list:

- `confinement.py`: one program in a fresh process under limits (CPU, memory, output, processes, wall clock),
  without network, seeing only its own work dir and the system's files (`launcher.py` confines itself, then
  execs the program);
- `asserts.py`: assert code parsed into checks (a call on literal arguments, a value to compare with) that
  the parent decides; `cases.py` holds the test forms and their data-file spellings;
- `verdicts.py`: runs the tests and decides pass / fail in this process, never inside the candidate's
  (`harness.py` is the program the candidate's functions are served from, and the checking process).

THREAT_MODEL.md beside this file says what the untrusted program must not reach, how each is enforced,
and which test shows it.
"""

from r1jax.rewards.sandbox.asserts import Check, convert_asserts
from r1jax.rewards.sandbox.cases import TestCase, parse_tests
from r1jax.rewards.sandbox.confinement import (
    RunResult,
    SandboxConfig,
    isolation_report,
    live_group_members,
    run_program,
)
from r1jax.rewards.sandbox.verdicts import FAILED, call_outputs, code_reward, run_checked, run_test, run_tests

__all__ = [
    "FAILED",
    "Check",
    "RunResult",
    "SandboxConfig",
    "TestCase",
    "call_outputs",
    "code_reward",
    "convert_asserts",
    "isolation_report",
    "live_group_members",
    "parse_tests",
    "run_checked",
    "run_program",
    "run_test",
    "run_tests",
]
