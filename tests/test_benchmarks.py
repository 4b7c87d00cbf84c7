"""The benchmarks still run and print their ratios (their figures come from `make bench`, not from here)."""

from __future__ import annotations

import pytest

from benchmarks import (
    audit_verify,
    batch_intake,
    email_send,
    pipeline_email,
    print_letters,
    render,
    trigger_latency,
)


@pytest.mark.parametrize(
    "benchmark",
    [audit_verify, render, print_letters, email_send, pipeline_email, batch_intake, trigger_latency],
    ids=[
        "audit_verify",
        "render",
        "print_letters",
        "email_send",
        "pipeline_email",
        "batch_intake",
        "trigger_latency",
    ],
)
def test_the_benchmark_runs_and_prints_its_ratio(
    benchmark: object, capsys: pytest.CaptureFixture[str]
) -> None:
    benchmark.run(quick=True)  # type: ignore[attr-defined]
    output = capsys.readouterr().out
    assert "ratio" in output
    assert "x" in output.split("ratio", 1)[1]
