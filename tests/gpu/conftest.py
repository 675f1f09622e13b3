"""The engine's GPU tests reuse the CPU tests' fixtures: the tiny model and seed-based configs."""

from tests.unit.train.conftest import (  # noqa: F401 - pytest finds fixtures by name here
    _fresh_accelerate_state,
    make_config,
    seed_mapping,
    tiny,
    tiny_tp,
)
