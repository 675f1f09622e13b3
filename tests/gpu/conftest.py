"""The engine's GPU tests reuse the CPU tests' fixtures: the tiny model and seed-based configs."""

from tests.unit.train.conftest import (  # noqa: F401 - pytest finds fixtures by name here
    _fresh_accelerate_state,
    make_config,
    seed_mapping,
    tiny,
    tiny_tp,
)


def pytest_runtest_logreport(report):
    """Print a failure's traceback the moment it happens. GPU runs are cut by the device call's time limit,
    and pytest prints its failure section only at the end: three of four H200 calls on 2026-12-05 came
    back with FAILED and no cause (bench/results/README.md)."""
    if report.failed:
        print(f"\n=== FAILED {report.nodeid} ({report.when})\n{report.longreprtext[-8000:]}\n", flush=True)
