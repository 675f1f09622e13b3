"""Preference training (Axolotl's `rl:` keys): offline pair losses, LoRA only (docs/training.md)."""

from __future__ import annotations

from typing import Literal

from .base import Section, field

DEFAULT_BETA = 0.1  # trl's DPOConfig default


class PreferenceKeys(Section):
    """Preference training"""

    rl: Literal["dpo", "ipo"] | None = field(
        None,
        description="Train on preference pairs instead of SFT: `dpo` (trl's sigmoid loss, or `dpo_loss_type`) "
        "or `ipo`. Needs `adapter: lora | qlora` (the reference is the base with the adapter disabled) and "
        "preference datasets (`chat_template.default`, `chatml.intel`). orpo, kto, simpo and grpo are not "
        "implemented yet.",
    )
    rl_beta: float | None = field(
        None, gt=0, description="The preference loss's beta (trl's `beta`). Default: 0.1."
    )
    dpo_beta: float | None = field(None, gt=0, description="Axolotl's older spelling of `rl_beta`.")
    dpo_loss_type: Literal["sigmoid", "ipo"] | None = field(
        None,
        description="trl's loss type for `rl: dpo`: `sigmoid` (DPO, the default) or `ipo`.",
    )

    def preference_loss(self) -> tuple[str, float] | None:
        """(trl loss type, beta) of a preference run; None for SFT."""
        if self.rl is None:
            return None
        loss = "ipo" if self.rl == "ipo" else (self.dpo_loss_type or "sigmoid")
        beta = self.rl_beta if self.rl_beta is not None else self.dpo_beta
        return loss, DEFAULT_BETA if beta is None else beta
