"""Paths the suites share. The reference configs sit in ../shared beside the checkout (on CI too)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_DIR = (REPO / ".." / "shared" / "seed-configs").resolve()
SEED = SEED_DIR / "llama3-lora.yml"
