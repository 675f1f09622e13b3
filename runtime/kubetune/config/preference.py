"""Preference training (Axolotl's `rl:` keys): offline preference losses from trl (docs/training.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from .base import Section, field

DEFAULT_BETA = 0.1  # trl's DPOConfig / ORPOConfig / CPOConfig / KTOConfig default
DEFAULT_SIMPO_GAMMA = 0.5  # trl's CPOConfig.simpo_gamma
DEFAULT_CPO_ALPHA = 1.0  # trl's CPOConfig.cpo_alpha (the weight of the chosen answers' NLL)
# TR-DPO's reference sync: Axolotl's trl-block defaults (what it passes to trl), not trl's own 0.6 / 512.
DEFAULT_REF_MIXUP_ALPHA = 0.9
DEFAULT_REF_SYNC_STEPS = 64
# trl DPOTrainer's loss types that kubetune runs (dpo_loss_type).
DpoLossType = Literal["sigmoid", "ipo", "robust", "exo_pair", "sft"]
# The rl types that compare the policy with a reference policy (ORPO and SimPO have none).
WITH_REFERENCE = ("dpo", "ipo", "kto")


@dataclass(frozen=True)
class PreferenceObjective:
    """What a preference run optimises, resolved from the keys with trl's defaults."""

    rl: str  # dpo | ipo | orpo | kto | simpo
    loss_type: str  # trl's loss type: sigmoid | ipo | robust | exo_pair | sft (DPOTrainer), orpo, kto, simpo
    beta: float
    simpo_gamma: float = DEFAULT_SIMPO_GAMMA
    cpo_alpha: float = DEFAULT_CPO_ALPHA
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    label_smoothing: float = 0.0  # trl's, for the robust and exo_pair losses
    use_weighting: bool = False  # WPO: each pair's loss weighted by its two completions' probabilities
    # rl: dpo with a list of trl loss types (dpo_loss_type, dpo_loss_weights): ((type, weight), ...), whose
    # weighted sum is the loss, as DPOTrainer's loss_type / loss_weights; empty: loss_type alone.
    dpo_mix: tuple[tuple[str, float], ...] = ()
    # TR-DPO: every `ref_sync_steps` optimizer steps the frozen reference becomes
    # alpha x policy + (1 - alpha) x reference; None when the reference stays fixed.
    ref_sync: tuple[float, int] | None = None

    @property
    def dpo_losses(self) -> tuple[tuple[str, float], ...]:
        """(trl loss type, weight) of each term of a dpo / ipo loss."""
        return self.dpo_mix or ((self.loss_type, 1.0),)

    @property
    def needs_reference(self) -> bool:
        return self.rl in WITH_REFERENCE

    @property
    def paired(self) -> bool:
        """False for KTO, whose rows are single completions with a desirable/undesirable label."""
        return self.rl != "kto"


class TrlConfig(Section):
    """`trl`: Axolotl's block of trl trainer settings. kubetune honours those that its offline losses
    read; the GRPO / vLLM / generation keys are refused (docs/training.md lists each)."""

    beta: float | None = field(
        None,
        gt=0,
        description="trl's beta, as `rl_beta` (Axolotl reads this one first; setting both is an error).",
    )
    sync_ref_model: bool | None = field(
        None,
        description="rl: dpo / ipo / kto with a full fine-tune: TR-DPO, the frozen reference is mixed "
        "towards the policy every `ref_model_sync_steps` optimizer steps (trl's SyncRefModelCallback). "
        "Not with an adapter (the reference is the base with the adapter disabled) nor with "
        "precompute_ref_log_probs. Default: false.",
    )
    ref_model_mixup_alpha: float | None = field(
        None,
        gt=0,
        le=1,
        description="With sync_ref_model: the reference becomes alpha x policy + (1 - alpha) x reference. "
        f"Default: {DEFAULT_REF_MIXUP_ALPHA} (Axolotl's).",
    )
    ref_model_sync_steps: int | None = field(
        None,
        ge=1,
        description=f"With sync_ref_model: optimizer steps between two mixes. Default: {DEFAULT_REF_SYNC_STEPS} "
        "(Axolotl's).",
    )


class PreferenceKeys(Section):
    """Preference training"""

    rl: Literal["dpo", "ipo", "orpo", "kto", "simpo"] | None = field(
        None,
        description="Train on preferences instead of SFT, with trl's losses: `dpo` (the sigmoid loss, or "
        "`dpo_loss_type`), `ipo`, `orpo` (odds ratio + NLL, no reference model), `kto` (unpaired rows "
        "with a boolean `label`), `simpo` (CPO's simpo loss, no reference model). The reference policy "
        "(dpo, ipo, kto) is the base with the adapter disabled for LoRA, a frozen copy for a full "
        "fine-tune, or log-probs precomputed once (`precompute_ref_log_probs`). Datasets: preference "
        "types (chat_template.default, chat_template.argilla, chatml.intel) or, for kto, kto types "
        "(chatml.argilla, chatml.intel, chatml.ultra, llama3.ultra, ...). grpo is not implemented yet.",
    )
    rl_beta: float | None = field(
        None,
        gt=0,
        description="The preference loss's beta (trl's `beta`; for orpo the odds-ratio weight, as "
        "`orpo_alpha`). Default: 0.1.",
    )
    dpo_beta: float | None = field(None, gt=0, description="Axolotl's older spelling of `rl_beta`.")
    dpo_loss_type: DpoLossType | Annotated[list[DpoLossType], Field(min_length=1)] | None = field(
        None,
        description="trl's loss type for `rl: dpo`: `sigmoid` (DPO, the default), `ipo`, `robust` (rDPO, "
        "for noisy preference labels), `exo_pair` (EXO; these two read `dpo_label_smoothing`) or `sft` "
        "(the chosen answers' NLL); or, as Axolotl writes it, a list of them, whose losses add up "
        "weighted by `dpo_loss_weights` (RPO: `[sigmoid, sft]`).",
    )
    dpo_loss_weights: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)] | None = field(
        None,
        description="rl: dpo: the weight of each loss of the `dpo_loss_type` list (trl's loss_weights), as "
        "many as it has. Default: 1 each.",
    )
    dpo_label_smoothing: float | None = field(
        None,
        ge=0,
        lt=0.5,
        description="trl's label_smoothing: the assumed share of flipped preference labels, read by "
        "dpo_loss_type robust (0 <= it < 0.5) and exo_pair (> 0; the EXO paper uses 1e-3). Default: 0.",
    )
    orpo_alpha: float | None = field(
        None,
        gt=0,
        description="rl: orpo: the weight of the odds-ratio term against the chosen answers' NLL (trl's "
        "ORPOConfig beta, the paper's lambda). Default: 0.1.",
    )
    simpo_gamma: float | None = field(
        None,
        ge=0,
        description="rl: simpo: the target reward margin (trl's CPOConfig simpo_gamma). Default: 0.5.",
    )
    cpo_alpha: float | None = field(
        None,
        ge=0,
        description="rl: simpo: the weight of the NLL of the chosen answers added to the SimPO loss (trl's "
        "CPOConfig cpo_alpha; 0 is the paper's plain SimPO). Default: 1.0.",
    )
    kto_desirable_weight: float | None = field(
        None, gt=0, description="rl: kto: the weight of the desirable rows' losses. Default: 1.0."
    )
    kto_undesirable_weight: float | None = field(
        None, gt=0, description="rl: kto: the weight of the undesirable rows' losses. Default: 1.0."
    )
    dpo_use_weighting: bool | None = field(
        None,
        description="rl: dpo / ipo: WPO weighting (trl's DPOConfig use_weighting): each pair's loss times the "
        "product of its chosen and rejected completions' weights, exp of the mean over the completion's "
        "tokens of log p(token) - log sum p(v)^2 (no gradient). Default: false.",
    )
    precompute_ref_log_probs: bool | None = field(
        None,
        description="rl: dpo / ipo / kto: compute the reference log-probs once, before training, into the "
        "prepared-data cache, so that no training step runs the reference (a full fine-tune then needs "
        "no frozen copy of the model). Default: false.",
    )
    trl: TrlConfig | None = field(
        None,
        description="Axolotl's block of trl trainer settings: `beta`, and the reference-model sync of a "
        "full fine-tune (`sync_ref_model`, `ref_model_mixup_alpha`, `ref_model_sync_steps`). The GRPO, "
        "vLLM and generation keys are refused (grpo is not implemented yet).",
    )

    def preference_objective(self) -> PreferenceObjective | None:
        """The resolved objective of a preference run; None for SFT."""
        if self.rl is None:
            return None
        trl = self.trl or TrlConfig()
        beta = next(
            (b for b in (trl.beta, self.rl_beta, self.dpo_beta, self.orpo_alpha) if b is not None),
            DEFAULT_BETA,
        )
        ref_sync = None
        if trl.sync_ref_model:
            ref_sync = (
                DEFAULT_REF_MIXUP_ALPHA if trl.ref_model_mixup_alpha is None else trl.ref_model_mixup_alpha,
                DEFAULT_REF_SYNC_STEPS if trl.ref_model_sync_steps is None else trl.ref_model_sync_steps,
            )
        types = (
            self.dpo_loss_type if isinstance(self.dpo_loss_type, list) else [self.dpo_loss_type or "sigmoid"]
        )
        loss_type = {"dpo": types[0]}.get(self.rl, self.rl)
        dpo_mix: tuple[tuple[str, float], ...] = ()
        if self.rl == "dpo" and (len(types) > 1 or self.dpo_loss_weights):
            weights = self.dpo_loss_weights or [1.0] * len(types)
            dpo_mix = tuple(zip(types, (float(w) for w in weights), strict=True))
        return PreferenceObjective(
            rl=self.rl,
            loss_type=loss_type,
            beta=beta,
            simpo_gamma=DEFAULT_SIMPO_GAMMA if self.simpo_gamma is None else self.simpo_gamma,
            cpo_alpha=DEFAULT_CPO_ALPHA if self.cpo_alpha is None else self.cpo_alpha,
            desirable_weight=1.0 if self.kto_desirable_weight is None else self.kto_desirable_weight,
            undesirable_weight=1.0 if self.kto_undesirable_weight is None else self.kto_undesirable_weight,
            label_smoothing=self.dpo_label_smoothing or 0.0,
            use_weighting=bool(self.dpo_use_weighting),
            dpo_mix=dpo_mix,
            ref_sync=ref_sync,
        )

    def preference_loss(self) -> tuple[str, float] | None:
        """(trl loss type, beta) of a preference run; None for SFT."""
        objective = self.preference_objective()
        return None if objective is None else (objective.loss_type, objective.beta)
