import pytest
import yaml

# ../shared/seed-configs beside the clone (as /work/shared sits beside /work/main, and on CI).
from tests.paths import SEED_DIR

BASE = SEED_DIR / "llama3-lora.yml"
OVERLAYS = {
    "mistral-qlora-fsdp": SEED_DIR / "mistral-qlora-fsdp.overlay.yml",
    "nd-parallel": SEED_DIR / "nd-parallel.overlay.yml",
}


@pytest.fixture(scope="session")
def seed_mapping() -> dict:
    if not BASE.is_file():
        pytest.fail(f"seed configs not found at {SEED_DIR.resolve()}")
    return yaml.safe_load(BASE.read_text())
