"""LoRA fine-tuning: a YAML config parsed into a dataclass, the Trainer set-up, and the run folder.

``train(config)`` prepares the splits (``alpacare.data``), wraps the base model with a peft LoRA adapter, trains
with ``alpacare.fastpath.FastTrainer`` (a drop-in ``transformers.Trainer``): evaluation every ``eval_steps``,
checkpoints in ``RUN/checkpoints``, ``resume_from_checkpoint``, early stopping on the validation loss, bf16/fp16
only where the hardware has it, tqdm progress bars and ``RUN/loss_log.csv``. It then writes the run folder of
``CONTRACTS.md``: the adapter, the tokenizer, ``train_config.yaml`` and ``manifest.json``, and ``RUN.zip`` of them.

Several GPUs (or CPU processes) go through ``torchrun``/``accelerate launch``: the Trainer handles DDP, and only
the main process writes the run folder.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpacare.data import (
    DEFAULT_DATASET,
    DEFAULT_MAX_LENGTH,
    DEFAULT_TOKEN_LIMIT,
    IGNORE_INDEX,
    SPLIT_PRESETS,
    Row,
    prepare_splits,
    tokenize_example,
    write_manifest,
)

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOSS_LOG = "loss_log.csv"
CONFIG_FILE = "train_config.yaml"
MANIFEST_FILE = "manifest.json"
LOSS_LOG_FIELDS = ("step", "epoch", "train_loss", "eval_loss", "learning_rate")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SAFETY_MODES = ("drop", "flag", "off")
RESUME_LAST = {"true", "last", "latest"}


@dataclass
class TrainConfig:
    """Everything a training run uses; every field is a YAML key and a ``--flag`` of ``train/train_lora.py``."""

    # Model
    base_model: str = field(default="embedded", metadata={"help": "Hub id or local folder; 'embedded' = SmolLM2."})
    model_dtype: str = field(
        default="auto",
        metadata={"help": "Weights dtype: 'auto' = half precision on CUDA when training in bf16/fp16, else fp32."},
    )
    # Data
    dataset: str = field(default=DEFAULT_DATASET, metadata={"help": "Hub id, local file, or 'sample'."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the source dataset to read."})
    preset: str = field(default="demo", metadata={"help": f"Split preset: {', '.join(SPLIT_PRESETS)}."})
    seed: int = field(default=42, metadata={"help": "Seed of the split shuffle and of training."})
    safety_filter: str = field(default="drop", metadata={"help": "Safety filter on targets: drop, flag or off."})
    token_limit: int = field(default=DEFAULT_TOKEN_LIMIT, metadata={"help": "Cleaning drops longer examples."})
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata={"help": "Training truncation length (tokens)."})
    # LoRA
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_bias: str = field(default="none", metadata={"help": "none, all or lora_only (peft LoraConfig.bias)."})
    # Optimization
    output_dir: str = field(default="runs/smollm2-demo", metadata={"help": "The run folder RUN."})
    num_train_epochs: float = 1.0
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: epochs)."})
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 8
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "linear"
    warmup_steps: float = field(default=0.0, metadata={"help": "Steps, or a ratio of all steps when < 1."})
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = field(default="auto", metadata={"help": "auto, bf16, fp16 or fp32 (see resolve_precision)."})
    gradient_checkpointing: bool = False
    train_sampling_strategy: str = field(default="random", metadata={"help": "random or group_by_length."})
    # Monitoring and checkpoints
    logging_steps: int = 10
    eval_steps: int = 200
    save_steps: int = 200
    save_total_limit: int = 2
    eval_on_start: bool = field(default=True, metadata={"help": "Evaluate before the first step (initial loss)."})
    early_stopping_patience: int = field(default=3, metadata={"help": "Evaluations without improvement; 0: off."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'last' for the newest one in RUN/checkpoints."}
    )
    report_to: str = field(default="none", metadata={"help": "Trainer integrations (tensorboard, wandb, none)."})

    def __post_init__(self) -> None:
        errors = validation_errors(self)
        if errors:
            raise ValueError("invalid training config: " + "; ".join(errors))


def validation_errors(config: TrainConfig) -> list[str]:
    """What is wrong with a config (empty when it is valid)."""
    errors = []
    if config.preset not in SPLIT_PRESETS:
        errors.append(f"preset {config.preset!r} not in {sorted(SPLIT_PRESETS)}")
    if config.safety_filter not in SAFETY_MODES:
        errors.append(f"safety_filter {config.safety_filter!r} not in {SAFETY_MODES}")
    if config.precision not in PRECISIONS:
        errors.append(f"precision {config.precision!r} not in {PRECISIONS}")
    if config.lora_bias not in ("none", "all", "lora_only"):
        errors.append(f"lora_bias {config.lora_bias!r} not in none/all/lora_only")
    if not config.target_modules:
        errors.append("target_modules is empty")
    if not 0 <= config.lora_dropout < 1:
        errors.append("lora_dropout must be in [0, 1)")
    positive = ("lora_r", "lora_alpha", "per_device_train_batch_size", "per_device_eval_batch_size",
                "gradient_accumulation_steps", "learning_rate", "max_length", "token_limit", "logging_steps",
                "eval_steps", "save_steps")  # fmt: skip
    errors += [f"{name} must be > 0" for name in positive if not getattr(config, name) > 0]
    if config.max_steps <= 0 and config.num_train_epochs <= 0:
        errors.append("set num_train_epochs > 0 or max_steps > 0")
    if config.early_stopping_patience > 0 and config.save_steps % config.eval_steps:
        # load_best_model_at_end (needed to keep the best adapter) requires checkpoints at evaluation steps.
        errors.append("with early stopping, save_steps must be a multiple of eval_steps")
    return errors


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """``--config X.yaml`` then ``--field value`` overrides (TRL's ``TrlParser``, a ``HfArgumentParser``)."""
    from trl import TrlParser

    (config,) = TrlParser(TrainConfig).parse_args_and_config(argv)
    return config


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """A config from a YAML file, with keyword overrides (unknown keys raise ``ValueError``)."""
    import yaml

    values = yaml.safe_load(Path(path).read_text()) or {}
    values.update(overrides)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}")
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------------------ Trainer parts


def training_precision(precision: str) -> dict[str, bool]:
    """``TrainingArguments`` bf16/fp16 flags: the requested precision if the hardware has it, else ``auto``.

    The GPU configs ask for fp16 (seed 001); on a CPU, fp16 autocast is emulated and slow, so they fall back to
    what ``resolve_precision("auto")`` picks (bf16 on CPUs with AMX/AVX512-BF16, else fp32).
    """
    from alpacare.fastpath import resolve_precision

    if precision in ("auto", "fp32"):
        return resolve_precision(precision)
    import torch

    auto = resolve_precision("auto")
    has_it = torch.cuda.is_available() if precision == "fp16" else auto["bf16"]
    if not has_it:
        log.warning("precision %s is not available on this hardware: using %s", precision, _precision_name(auto))
        return auto
    return resolve_precision(precision)


def _precision_name(flags: dict[str, bool]) -> str:
    return "bf16" if flags.get("bf16") else "fp16" if flags.get("fp16") else "fp32"


def model_dtype(config: TrainConfig, precision_flags: dict[str, bool]) -> str | None:
    """Dtype to load the base weights in (None: the library default, fp32)."""
    if config.model_dtype != "auto":
        return config.model_dtype
    import torch

    # Frozen base weights need no fp32 master copy: on a GPU, half precision halves their memory
    # (gpt-neo-2.7B: 10.8 GB -> 5.4 GB). peft keeps the LoRA weights in fp32, as AMP's grad scaler needs.
    if torch.cuda.is_available() and (precision_flags["bf16"] or precision_flags["fp16"]):
        return "bfloat16" if precision_flags["bf16"] else "float16"
    return None


def lora_config(config: TrainConfig) -> Any:
    """The peft ``LoraConfig`` of a run."""
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias=config.lora_bias,
    )


def build_model(config: TrainConfig, dtype: str | None = None) -> Any:
    """The base model wrapped with a fresh LoRA adapter (only the adapter is trainable)."""
    from peft import get_peft_model

    from alpacare.modeling import load_base_model

    model = load_base_model(config.base_model, dtype=dtype)
    if config.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks need an input with grad
    model = get_peft_model(model, lora_config(config))
    return model


def features_dataset(tokenizer: Any, rows: list[Row], max_length: int) -> Any:
    """A ``datasets.Dataset`` of ``tokenize_example`` features; rows with no label left are dropped (logged)."""
    from datasets import Dataset

    features = [tokenize_example(tokenizer, row, max_length) for row in rows]
    kept = [f for f in features if any(label != IGNORE_INDEX for label in f["labels"])]
    if len(kept) < len(features):
        log.warning(
            "%d examples dropped: their prompt alone exceeds max_length=%d", len(features) - len(kept), max_length
        )
    return Dataset.from_list(kept)


def training_arguments(config: TrainConfig, run_dir: Path, precision_flags: dict[str, bool]) -> Any:
    """``TrainingArguments``: checkpoints in RUN/checkpoints, eval and save every N steps, best model kept."""
    import torch
    from transformers import TrainingArguments

    early_stopping = config.early_stopping_patience > 0
    return TrainingArguments(
        output_dir=str(run_dir / CHECKPOINTS),
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        activation_checkpointing=config.gradient_checkpointing,
        train_sampling_strategy=config.train_sampling_strategy,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps",
        eval_steps=config.eval_steps,
        eval_on_start=config.eval_on_start,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=config.seed,
        report_to=[] if config.report_to == "none" else [config.report_to],
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient; skips DDP's extra graph walk
        use_cpu=not torch.cuda.is_available(),  # bf16 autocast on a CPU is only allowed with use_cpu
        **precision_flags,
    )


def loss_log_callback(path: Path, append: bool = False) -> Any:
    """A ``TrainerCallback`` appending ``step,epoch,train_loss,eval_loss,learning_rate`` rows to ``path``."""
    from transformers import TrainerCallback

    class LossLogCallback(TrainerCallback):
        """Writes every training-loss and eval-loss log to a CSV (main process only)."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero and not append:
                path.unlink(missing_ok=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            logs = logs or {}
            if not state.is_world_process_zero or not ({"loss", "eval_loss"} & set(logs)):
                return
            row = {
                "step": state.global_step,
                "epoch": round(state.epoch or 0.0, 4),
                "train_loss": logs.get("loss", ""),
                "eval_loss": logs.get("eval_loss", ""),
                "learning_rate": logs.get("learning_rate", ""),
            }
            new = not path.exists()
            with path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=LOSS_LOG_FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow(row)

    return LossLogCallback()


def resume_argument(value: str | None) -> str | bool | None:
    """``Trainer.train(resume_from_checkpoint=...)``: True for 'last' (newest checkpoint), else the path."""
    if not value:
        return None
    return True if value.strip().lower() in RESUME_LAST else value


# ---------------------------------------------------------------------------------------------------- run folder


def config_dict(config: TrainConfig, precision_flags: dict[str, bool] | None = None) -> dict[str, Any]:
    """Every config field, with ``precision`` resolved to what the run actually used."""
    values = dataclasses.asdict(config)
    if precision_flags is not None:
        values["precision"] = _precision_name(precision_flags)
    return values


def save_run(model: Any, tokenizer: Any, config: dict[str, Any], manifest: dict[str, Any], run_dir: Path) -> Path:
    """Write adapter, tokenizer, ``train_config.yaml``, ``manifest.json`` into RUN and zip them into RUN.zip.

    Returns the zip's path. Only the adapter is saved (peft ``save_pretrained``), never the base weights.
    """
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(run_dir)
    (run_dir / "README.md").unlink(missing_ok=True)  # peft's placeholder card; the release renders the real one
    adapter_files = [run_dir / "adapter_config.json", run_dir / "adapter_model.safetensors"]
    tokenizer_files = [Path(p) for p in tokenizer.save_pretrained(run_dir)]
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    write_manifest(manifest, run_dir / MANIFEST_FILE)
    files = [*adapter_files, *tokenizer_files, run_dir / CONFIG_FILE, run_dir / MANIFEST_FILE]
    zip_path = run_dir.parent / f"{run_dir.name}.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted({p for p in files if p.is_file()}):
            archive.write(path, arcname=path.name)  # flat: `unzip RUN.zip -d adapter/` gives a loadable folder
    return zip_path


def _needs_final_eval(trainer: Any) -> bool:
    """False when the loss log already ends with the validation loss of the adapter being saved."""
    state = trainer.state
    evals = [entry for entry in state.log_history if "eval_loss" in entry]
    if not evals or evals[-1].get("step") != state.global_step:
        return True
    best_step = getattr(state, "best_global_step", None)
    return bool(trainer.args.load_best_model_at_end and best_step and best_step != state.global_step)


def train(config: TrainConfig) -> Path:
    """Train a LoRA adapter as ``config`` says and write the run folder; returns RUN."""
    from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback

    from alpacare.fastpath import FastTrainer
    from alpacare.modeling import load_tokenizer

    run_dir = Path(config.output_dir)
    precision_flags = training_precision(config.precision)
    args = training_arguments(config, run_dir, precision_flags)
    tokenizer = load_tokenizer(config.base_model)
    with args.main_process_first(desc="data preparation"):
        data = prepare_splits(
            config.dataset,
            config.preset,
            config.seed,
            tokenizer=tokenizer,
            token_limit=config.token_limit,
            safety_mode=config.safety_filter,  # type: ignore[arg-type]  # validated in TrainConfig
            source_split=config.dataset_split,
        )
    train_dataset = features_dataset(tokenizer, data.splits["train"], config.max_length)
    eval_dataset = features_dataset(tokenizer, data.splits["validation"], config.max_length)
    model = build_model(config, dtype=model_dtype(config, precision_flags))

    resume = resume_argument(config.resume_from_checkpoint)
    callbacks = [loss_log_callback(run_dir / LOSS_LOG, append=resume is not None)]
    if config.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = FastTrainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        # Pads each batch to its longest example; labels padded with -100 so padding carries no loss.
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    if _needs_final_eval(trainer):
        trainer.evaluate()  # the final (best, with early stopping) adapter's validation loss, into the loss log
    if trainer.is_world_process_zero():
        zip_path = save_run(trainer.model, tokenizer, config_dict(config, precision_flags), data.manifest, run_dir)
        log.info("Saved the adapter run folder %s and %s", run_dir, zip_path)
    trainer.accelerator.wait_for_everyone()
    return run_dir
