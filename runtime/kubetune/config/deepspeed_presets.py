"""kubetune's own DeepSpeed ZeRO presets, under the names of Axolotl's `deepspeed_configs/*.json`.

Axolotl's examples write `deepspeed: deepspeed_configs/zero3.json`, a file of Axolotl's repository
root. When such a path does not exist next to the config (nor as given, if absolute), kubetune uses its
own preset of that name (written by kubetune from DeepSpeed's documented config keys; the "auto" values
are filled from the config by the engine):

  zero1, zero2, zero3                 ZeRO stage 1 / 2 / 3 (overlapped communication; stage 3 gathers the
                                      16-bit weights for the final save)
  zero3_bf16                          zero3 in bf16
  zero3_bf16_cpuoffload_params        + parameters offloaded to CPU
  zero3_bf16_cpuoffload_all           + parameters and optimizer states offloaded to CPU
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

PRESETS_DIR = Path(__file__).with_name("deepspeed")
PRESET_FOLDER = "deepspeed_configs"  # the directory name Axolotl's examples use


def preset_names() -> list[str]:
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


def preset_for(value: str) -> Path | None:
    """kubetune's preset for `deepspeed_configs/<name>.json` (None for any other path or name)."""
    parts = [part for part in PurePosixPath(value.replace("\\", "/")).parts if part != "."]
    if len(parts) != 2 or parts[0] != PRESET_FOLDER or not parts[1].endswith(".json"):
        return None
    path = PRESETS_DIR / parts[1]
    return path if path.is_file() else None


def resolve_deepspeed_path(value: str, source_dir: Path | None) -> Path:
    """The DeepSpeed JSON file a config names: the file itself (relative paths against the config's
    directory, else the working directory) when it exists, else kubetune's preset of that name, else the
    (missing) file itself."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (source_dir or Path.cwd()) / path
    if path.is_file():
        return path
    return preset_for(value) or path
