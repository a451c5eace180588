"""A tiny training run folder per the PIPELINE contract, for the model-card and release tests.

The adapter is real (peft ``save_pretrained`` of a LoRA on the conftest ``tiny_model``), the tokenizer is SmolLM2's;
config, manifest, eval results and loss log follow ``/work/notes/CONTRACTS.md`` with made-up values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

TRAIN_CONFIG: dict[str, Any] = {
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "dataset": "lavita/AlpaCare-MedInstruct-52k",
    "preset": "demo",
    "seed": 42,
    "lora_r": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"],
    "learning_rate": 0.0002,
    "epochs": 1,
    "max_steps": 3,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "precision": "auto",
    "max_length": 512,
    "safety_filter": "drop",
}

MANIFEST: dict[str, Any] = {
    "source": "lavita/AlpaCare-MedInstruct-52k",
    "preset": "demo",
    "seed": 42,
    "sizes": {"train": 6, "validation": 2, "test": 2},
    "cleaning": {"empty_instruction_or_output": 3, "duplicates": 5, "too_short": 1, "over_token_limit": 0},
    "safety_filter": {"mode": "drop", "counts": {"dosage": 7, "prescription": 2, "examples_flagged": 8}},
    "splits": {"train": [11, 12, 13, 14, 15, 16], "validation": [21, 22], "test": [31, 32]},
    "created_at": "2025-11-22T10:00:00+00:00",
}

EVAL_RESULTS: dict[str, Any] = {
    "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "adapter": "runs/tiny",
    "generated_at": "2025-11-22T11:00:00+00:00",
    "test_split": {
        "n": 2,
        "perplexity_base": 14.2567,
        "perplexity_adapter": 9.8123,
        "n_generated": 2,
        "violation_rate": 0.125,
        "disclaimer_rate": 0.9375,
        "blocked_rate": 0.0625,
        "rougeL": 0.213456,
    },
    "medinstruct_test": None,
}

LOSS_LOG = (
    "step,epoch,train_loss,eval_loss,learning_rate\n1,0.3,2.9,,0.0002\n2,0.6,2.5,2.7,0.0001\n3,1.0,2.25,2.6,0.0\n"
)

REVIEW_REPORT: dict[str, Any] = {
    "n_reviewers": 31,
    "n_ratings": 620,
    "n_items": 200,
    "violation_rate": 0.035,
    "disclaimer_rate": 0.98,
    "scores": {
        "safety": {"mean": 4.2, "median": 4.0},
        "helpfulness": {"mean": 3.6, "median": 4.0},
        "clarity": {"mean": 4.1, "median": 4.0},
        "factuality": {"mean": 3.4, "median": 3.0},
    },
    "krippendorff_alpha": {"safety": 0.71, "helpfulness": 0.52, "clarity": None, "factuality": 0.44},
    "criteria": [
        {"name": "reviewers >= 30", "value": 31, "threshold": 30, "passed": True},
        {"name": "safety violation rate < 2%", "value": 0.035, "threshold": 0.02, "passed": False},
        {"name": "mean safety score >= 4", "value": 4.2, "threshold": 4.0, "passed": True},
    ],
    "go": False,
    "violation_definition": "a rating with safety <= 2 or any violation category ticked",
}


def write_fake_run(
    run_dir: Path, model: Any, tokenizer: Any, *, eval_results: bool = True, loss_log: bool = True
) -> Path:
    """Write a tiny run folder (real LoRA adapter + tokenizer + contract files, plus non-release leftovers)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(run_dir)
    tokenizer.save_pretrained(run_dir)
    (run_dir / "train_config.yaml").write_text(yaml.safe_dump(TRAIN_CONFIG, sort_keys=False))
    (run_dir / "manifest.json").write_text(json.dumps(MANIFEST))
    if eval_results:
        (run_dir / "eval_results.json").write_text(json.dumps(EVAL_RESULTS))
    if loss_log:
        (run_dir / "loss_log.csv").write_text(LOSS_LOG)
    # What a Trainer leaves behind and a release must not ship.
    (run_dir / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    (run_dir / "checkpoints" / "checkpoint-3" / "optimizer.pt").write_bytes(b"\0" * 16)
    (run_dir / "training_args.bin").write_bytes(b"\0" * 16)
    return run_dir
