"""Where results go, and experiment trackers."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator
from pydantic_core import PydanticCustomError

from .base import Section, field
from .sources import check_object_store_uri


class OutputKeys(Section):
    """Outputs and tracking"""

    output_dir: str = field(
        "./model-out",
        description="Directory for checkpoints, the trained adapter or model, the tokenizer and "
        "`training_summary.json` (relative paths resolve against the config's directory). Default: `./model-out`.",
        min_length=1,
    )
    save_safetensors: bool = field(
        True, description="Save weights as safetensors. kubetune writes only safetensors: must be true."
    )
    output_uri: str | None = field(
        None,
        description="Object-store prefix (`s3://bucket/prefix`, `gs://`, `az://`) the finished result is "
        "uploaded to by rank 0 after the final save: the adapter (or the full model), the tokenizer and "
        "`training_summary.json`, under the same names as in `output_dir`. Credentials come from the "
        "environment (a Secret on Kubernetes); the run checks the destination is writable before training, "
        "and the summary and `status.outputs` record where the files went. kubetune's own key (Axolotl has "
        "none for object storage). Needs the `cloud` extra.",
    )
    hub_model_id: str | None = field(
        None, description="Hub repository to push the result to when training ends."
    )

    use_tensorboard: bool = field(
        False,
        description="Write TensorBoard event files under `output_dir/runs/` (rank 0): per step `train/loss`, "
        "`train/learning_rate`, `train/grad_norm`, `train/tokens_per_second`, and `eval/loss`, `eval/perplexity`. "
        "A resumed run writes on in the same directory. Needs the `tracking` extra (tensorboard).",
    )

    use_wandb: bool | None = field(
        None,
        description="Log to Weights & Biases from rank 0: the config, and the metrics `use_tensorboard` writes, "
        "by step; run files under `output_dir/wandb/`. A resumed run continues the same W&B run (its id is kept "
        "in `output_dir/tracking.json`). The API key comes from `WANDB_API_KEY` in the environment. Needs the "
        "`tracking` extra (wandb). Default: on when `wandb_project` is set.",
    )
    wandb_project: str | None = field(None, description="Weights & Biases project.")
    wandb_entity: str | None = field(None, description="Weights & Biases entity (user or team).")
    wandb_name: str | None = field(None, description="Weights & Biases run name.")
    wandb_run_id: str | None = field(
        None, description="Weights & Biases run id: continue that run (resume `allow`)."
    )
    wandb_mode: Literal["online", "offline", "disabled"] | None = field(
        None,
        description="Weights & Biases mode: `offline` keeps the history in the run directory under "
        "`output_dir/wandb/` (upload it later with `wandb sync`). Default: `online`.",
    )
    wandb_watch: str | None = field(
        None, description="Weights & Biases model watching: `gradients`, `parameters` or `all`."
    )
    wandb_log_model: str | None = field(
        None, description="Upload to Weights & Biases: `checkpoint` (every checkpoint) or `end`."
    )

    use_mlflow: bool | None = field(
        None,
        description="Log to MLflow from rank 0: the config as params, and the metrics `use_tensorboard` "
        "writes, by step. A resumed run (a group restart) continues the same MLflow run (its id is kept in "
        "`output_dir/tracking.json`). Needs the `tracking` extra (the mlflow-skinny client). "
        "Default: on when `mlflow_tracking_uri` is set.",
    )
    mlflow_tracking_uri: str | None = field(
        None,
        description="MLflow tracking URI (`http://mlflow:5000`, `file:/path`, ...). Default: MLflow's own "
        "(the `MLFLOW_TRACKING_URI` environment variable, e.g. from a Secret or ConfigMap of the job).",
    )
    mlflow_experiment_name: str | None = field(
        None, description="MLflow experiment (created when missing). Default: MLflow's `Default`."
    )
    mlflow_run_name: str | None = field(None, description="MLflow run name. Default: one MLflow makes up.")
    hf_mlflow_log_artifacts: bool | None = field(
        None, description="Upload the outputs to MLflow as artifacts."
    )

    @field_validator("output_uri", mode="before")
    @classmethod
    def _object_store(cls, value: object) -> object:
        return check_object_store_uri(value, what="output_uri", required=True)

    @field_validator("save_safetensors")
    @classmethod
    def _safetensors_only(cls, value: bool) -> bool:
        if not value:
            raise PydanticCustomError(
                "safetensors_only",
                "kubetune saves weights only as safetensors; false is not supported",
                {"fix": "remove save_safetensors (or set it to true)"},
            )
        return value
