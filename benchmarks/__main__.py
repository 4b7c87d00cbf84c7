"""`make bench`: run every benchmark (or those named) and print their figures."""

from __future__ import annotations

import argparse
import importlib
import time

BENCHMARKS = [
    "audit_verify",
    "render",
    "print_letters",
    "email_send",
    "pipeline_email",
    "batch_intake",
    "trigger_latency",
]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", choices=[*BENCHMARKS, []], help="benchmarks to run (default: all)"
    )
    args = parser.parse_args()
    for name in args.names or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        started = time.perf_counter()
        print(f"== {name}: {module.__doc__.strip().splitlines()[0]}")
        module.run()
        print(f"   ({time.perf_counter() - started:.1f}s)\n")


if __name__ == "__main__":
    main()
