"""LoRA training: Trainer parts, a tiny run (loss falls, adapter reloads), resume, 2-process DDP, real SmolLM2."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from alpacare import training
from alpacare.evaluation import DEFAULT_MEDINSTRUCT
from alpacare.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}
RUN_FILES = {"train_config.yaml", "manifest.json"}
CONTRACT_KEYS = {"n", "perplexity_base", "perplexity_adapter", "n_generated", "violation_rate", "disclaimer_rate",
                 "blocked_rate", "rougeL"}  # fmt: skip


def read_loss_log(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "loss_log.csv").open() as f:
        return list(csv.DictReader(f))


def losses(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r[column]]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer, saved as a local base model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=1024,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            # Large weights: with the default 0.02 the frozen lm_head caps every logit near 0, so no adapter
            # can move the loss far from ln(vocab) and "the loss falls" would drown in noise.
            initializer_range=0.5,
        )
    )
    path = tmp_path_factory.mktemp("tiny-base")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(base: Path, output_dir: Path, **overrides) -> TrainConfig:
    """A fast run on the offline sample: fp32, lr high enough for a random 16-wide model to learn in 12 steps."""
    values = dict(
        base_model=str(base), dataset="sample", preset="sample", safety_filter="off", max_length=256,
        lora_r=8, lora_alpha=16, target_modules=ALL_LINEAR, output_dir=str(output_dir), max_steps=12,
        per_device_train_batch_size=4, per_device_eval_batch_size=8, gradient_accumulation_steps=1,
        learning_rate=3e-2, precision="fp32", logging_steps=1, eval_steps=6, save_steps=6,
        early_stopping_patience=2,
    )  # fmt: skip
    values.update(overrides)
    return TrainConfig(**values)


class TestParts:
    @pytest.mark.parametrize(
        ("requested", "cuda", "cpu_bf16", "expected"),
        [
            ("fp16", False, True, {"bf16": True, "fp16": False}),  # GPU config on a bf16 CPU: auto
            ("fp16", False, False, {"bf16": False, "fp16": False}),  # ... on an old CPU: fp32
            ("bf16", False, False, {"bf16": False, "fp16": False}),
            ("bf16", False, True, {"bf16": True, "fp16": False}),
            ("fp32", False, True, {"bf16": False, "fp16": False}),
            ("auto", False, False, {"bf16": False, "fp16": False}),
        ],
    )
    def test_precision_only_where_the_hardware_has_it(self, monkeypatch, requested, cuda, cpu_bf16, expected):
        import torch

        from alpacare import fastpath

        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(fastpath, "cpu_has_bf16", lambda *a, **k: cpu_bf16)
        assert training.training_precision(requested) == expected

    def test_fp16_kept_on_cuda(self, monkeypatch):
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
        assert training.training_precision("fp16") == {"bf16": False, "fp16": True}

    @pytest.mark.parametrize(
        ("value", "expected"),
        [(None, None), ("", None), ("last", True), ("True", True), ("ck/checkpoint-4", "ck/checkpoint-4")],
    )
    def test_resume_argument(self, value, expected):
        assert training.resume_argument(value) == expected

    def test_loss_log_callback_writes_train_and_eval_rows_only(self, tmp_path):
        path = tmp_path / "loss_log.csv"
        path.write_text("stale\n")
        callback = training.loss_log_callback(path)
        state = SimpleNamespace(is_world_process_zero=True, global_step=0, epoch=0.0)
        callback.on_train_begin(None, state, None)
        assert not path.exists()  # a fresh run starts a fresh log
        for step, logs in [
            (0, {"eval_loss": 3.0}),
            (5, {"loss": 2.5, "learning_rate": 1e-4}),
            (5, {"train_runtime": 9.0}),
        ]:
            state.global_step, state.epoch = step, step / 10
            callback.on_log(None, state, None, logs=logs)
        rows = read_loss_log(tmp_path)
        assert list(rows[0]) == list(training.LOSS_LOG_FIELDS)
        assert [(r["step"], r["train_loss"], r["eval_loss"], r["learning_rate"]) for r in rows] == [
            ("0", "", "3.0", ""),
            ("5", "2.5", "", "0.0001"),
        ]

    def test_other_ranks_do_not_write(self, tmp_path):
        callback = training.loss_log_callback(tmp_path / "loss_log.csv")
        state = SimpleNamespace(is_world_process_zero=False, global_step=1, epoch=0.1)
        callback.on_log(None, state, None, logs={"loss": 1.0})
        assert not (tmp_path / "loss_log.csv").exists()


@pytest.fixture(scope="module")
def tiny_run(tiny_base, tmp_path_factory) -> tuple[TrainConfig, Path]:
    config = tiny_config(tiny_base, tmp_path_factory.mktemp("runs") / "tiny")
    return config, training.train(config)


class TestTinyRun:
    def test_loss_goes_down(self, tiny_run):
        _, run_dir = tiny_run
        rows = read_loss_log(run_dir)
        train_losses, eval_losses = losses(rows, "train_loss"), losses(rows, "eval_loss")
        assert len(train_losses) == 12 and len(eval_losses) == 3  # at the start, step 6, step 12
        assert sum(train_losses[-4:]) / 4 < sum(train_losses[:4]) / 4 - 0.2
        assert eval_losses[-1] < eval_losses[0] - 0.3  # eval_on_start gives the initial validation loss

    def test_run_folder_holds_only_adapter_tokenizer_config_manifest(self, tiny_run):
        _, run_dir = tiny_run
        files = {p.name for p in run_dir.iterdir()}
        assert ADAPTER_FILES | RUN_FILES | {"loss_log.csv", "checkpoints", "tokenizer.json"} <= files
        assert not {"model.safetensors", "pytorch_model.bin", "training_args.bin", "README.md"} & files
        assert any((run_dir / "checkpoints").glob("checkpoint-*"))
        with zipfile.ZipFile(run_dir.parent / f"{run_dir.name}.zip") as archive:
            names = set(archive.namelist())
        assert ADAPTER_FILES | RUN_FILES | {"tokenizer.json", "tokenizer_config.json"} <= names
        assert not {"loss_log.csv", "model.safetensors"} & names and not any(
            n.startswith("checkpoints") for n in names
        )

    def test_train_config_and_manifest(self, tiny_run):
        config, run_dir = tiny_run
        saved = training.load_config(run_dir / "train_config.yaml")
        assert saved == config
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["preset"] == "sample" and manifest["seed"] == 42
        assert manifest["sizes"] == {"train": 60, "validation": 8, "test": 8}

    def test_adapter_reloads_changes_the_model_and_generates(self, tiny_run, tiny_base):
        import torch

        from alpacare.modeling import load_model

        _, run_dir = tiny_run
        loaded = load_model(str(tiny_base), adapter=str(run_dir))
        inputs = loaded.tokenizer("Explain sleep.", return_tensors="pt")
        with torch.inference_mode():
            adapted = loaded.model(**inputs).logits
            with loaded.model.disable_adapter():
                base = loaded.model(**inputs).logits
            output = loaded.model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert not torch.allclose(adapted, base, atol=1e-4)  # the trained update was saved and reloaded
        assert output.shape[-1] == inputs["input_ids"].shape[-1] + 5 or output[0, -1] == loaded.tokenizer.eos_token_id


def test_resume_from_the_last_checkpoint_continues_the_run(tiny_base, tmp_path):
    first = tiny_config(tiny_base, tmp_path / "run", max_steps=4, eval_steps=2, save_steps=2, eval_on_start=False)
    training.train(first)
    resumed = tiny_config(
        tiny_base, tmp_path / "run", max_steps=6, eval_steps=2, save_steps=2, eval_on_start=False,
        resume_from_checkpoint="last",
    )  # fmt: skip
    training.train(resumed)
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    steps = [int(r["step"]) for r in read_loss_log(tmp_path / "run") if r["train_loss"]]
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed run appends to the same log, from step 5


def test_two_process_gloo_run_saves_exactly_one_adapter(tiny_base, tmp_path):
    """``torchrun --nproc_per_node 2`` on CPU (gloo): DDP splits the data, rank 0 alone writes the run folder."""
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        str(ROOT / "train" / "train_lora.py"), "--config", str(ROOT / "train/configs/smollm2-135m-demo.yaml"),
        "--base_model", str(tiny_base), "--output_dir", str(run_dir), "--safety_filter", "off",
        "--num_train_epochs", "1", "--eval_on_start", "false", "--max_length", "256", "--precision", "fp32",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = result.stdout + result.stderr
    assert logs.count("Saved the adapter run folder") == 1
    assert [p.name for p in run_dir.glob("adapter_model.safetensors")] == ["adapter_model.safetensors"]
    assert (tmp_path / "ddp.zip").is_file()
    # 60 training rows, batch 4 per process: 2 processes take ceil(60 / 8) = 8 steps per epoch (1 process: 15).
    (checkpoint,) = (run_dir / "checkpoints").glob("checkpoint-*")
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == math.ceil(60 / 8)


@pytest.mark.slow
def test_end_to_end_on_smollm2(smollm2_path, tmp_path):
    """The issue's check: 3 steps of the demo config on the real SmolLM2, then evaluate.py with a small N."""
    run_dir = tmp_path / "d"
    train = [sys.executable, "train/train_lora.py", "--config", "train/configs/smollm2-135m-demo.yaml",
             "--output_dir", str(run_dir), "--max_steps", "3"]  # fmt: skip
    result = subprocess.run(train, capture_output=True, text=True, timeout=900, env=subprocess_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ADAPTER_FILES | RUN_FILES <= {p.name for p in run_dir.iterdir()}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["safety_filter"]["mode"] == "drop" and manifest["sizes"]["train"] > 0

    evaluate = [sys.executable, "train/evaluate.py", "--run_dir", str(run_dir), "--n_generate", "1",
                "--max_new_tokens", "16", "--n_medinstruct", "2"]  # fmt: skip
    result = subprocess.run(evaluate, capture_output=True, text=True, timeout=900, env=subprocess_env(), cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert set(results) == {"base_model", "adapter", "generated_at", "test_split", "medinstruct_test"}
    blocks = [("test_split", manifest["sizes"]["test"])]
    if DEFAULT_MEDINSTRUCT.is_file():  # ../shared/data (CC BY-NC, read in place); the block is null without it
        blocks.append(("medinstruct_test", 2))
    else:
        assert results["medinstruct_test"] is None
    for block, n in blocks:
        assert set(results[block]) == CONTRACT_KEYS
        assert results[block]["n"] == n and results[block]["n_generated"] == 1
        assert 1 < results[block]["perplexity_adapter"] < 100 and 1 < results[block]["perplexity_base"] < 100
    # Three steps at lr 5e-4 already move the adapter towards the targets of the held-out test split.
    assert results["test_split"]["perplexity_adapter"] < results["test_split"]["perplexity_base"]
