"""Every shipped training YAML loads, validates, takes CLI overrides and targets modules its model really has."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alpacare.training import TrainConfig, config_dict, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"

# What issue 2 asks of each config.
EXPECTED = {
    "gpt-neo-2.7b.yaml": {
        "base_model": "EleutherAI/gpt-neo-2.7B", "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj"], "num_train_epochs": 1, "preset": "demo",
        "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8, "learning_rate": 2e-4,
        "precision": "fp16", "eval_steps": 200,
    },
    "llama-3.2-1b-instruct.yaml": {
        "base_model": "meta-llama/Llama-3.2-1B-Instruct", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"], "lora_bias": "none", "num_train_epochs": 5, "preset": "colab",
        "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2, "learning_rate": 2e-4,
        "precision": "fp16", "logging_steps": 20, "save_steps": 100,
    },
    "smollm2-135m-demo.yaml": {"base_model": "embedded", "dataset": "sample", "preset": "sample", "precision": "auto"},
}  # fmt: skip


def tiny_model_for(config: TrainConfig):
    """A tiny random model of the config's architecture (no download)."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM, LlamaConfig, LlamaForCausalLM

    if "gpt-neo" in config.base_model.lower():
        return GPTNeoForCausalLM(
            GPTNeoConfig(
                vocab_size=64,
                hidden_size=16,
                num_layers=2,
                num_heads=2,
                max_position_embeddings=32,
                attention_types=[[["global", "local"], 1]],
                bos_token_id=0,
                eos_token_id=0,
            )  # fmt: skip
        )
    # Llama-3.2 and SmolLM2 are both LlamaForCausalLM.
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )  # fmt: skip
    )


def test_every_yaml_is_covered():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
class TestShippedConfigs:
    def test_loads_and_has_the_issue_values(self, name):
        config = parse_config(["--config", str(CONFIGS / name)])
        assert {k: getattr(config, k) for k in EXPECTED[name]} == EXPECTED[name]
        assert config == load_config(CONFIGS / name)  # parser and plain loader agree

    def test_every_key_is_a_field_and_early_stopping_is_consistent(self, name):
        import yaml

        values = yaml.safe_load((CONFIGS / name).read_text())
        assert set(values) <= {f.name for f in dataclasses.fields(TrainConfig)}
        config = load_config(CONFIGS / name)
        assert config.early_stopping_patience > 0 and config.save_steps % config.eval_steps == 0

    def test_cli_overrides_any_field(self, name, tmp_path):
        config = parse_config(
            [
                "--config",
                str(CONFIGS / name),
                "--max_steps",
                "3",
                "--output_dir",
                str(tmp_path),
                "--lora_r",
                "4",
                "--target_modules",
                "q_proj",
                "k_proj",
                "--safety_filter",
                "off",
            ]  # fmt: skip
        )
        assert (config.max_steps, config.output_dir, config.lora_r) == (3, str(tmp_path), 4)
        assert config.target_modules == ["q_proj", "k_proj"] and config.safety_filter == "off"
        assert config.learning_rate == load_config(CONFIGS / name).learning_rate  # the rest comes from the YAML

    def test_target_modules_exist_in_the_architecture(self, name):
        import torch
        from peft import get_peft_model

        from alpacare.training import lora_config

        config = load_config(CONFIGS / name)
        model = tiny_model_for(config)
        linear_names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert set(config.target_modules) <= linear_names
        peft_model = get_peft_model(model, lora_config(config))
        adapted = {
            n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if ".lora_A" in n
        }
        assert adapted == set(config.target_modules)

    def test_saved_train_config_reloads_to_the_same_config(self, name, tmp_path):
        import yaml

        config = load_config(CONFIGS / name)
        path = tmp_path / "train_config.yaml"
        path.write_text(yaml.safe_dump(config_dict(config), sort_keys=False))
        assert load_config(path) == config


def test_gpt_neo_attention_projections_live_in_attn_attention():
    """The comment in gpt-neo-2.7b.yaml: q/k/v/out_proj inside transformer.h.N.attn.attention; MLP is c_fc/c_proj."""
    config = load_config(CONFIGS / "gpt-neo-2.7b.yaml")
    names = [n for n, _ in tiny_model_for(config).named_modules()]
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        assert f"transformer.h.0.attn.attention.{proj}" in names
    assert "transformer.h.0.mlp.c_proj" in names


class TestValidation:
    @pytest.mark.parametrize(
        ("override", "message"),
        [
            ({"preset": "huge"}, "preset"),
            ({"safety_filter": "maybe"}, "safety_filter"),
            ({"precision": "fp8"}, "precision"),
            ({"lora_r": 0}, "lora_r"),
            ({"lora_dropout": 1.0}, "lora_dropout"),
            ({"target_modules": []}, "target_modules"),
            ({"eval_steps": 30, "save_steps": 40}, "multiple of eval_steps"),
            ({"max_steps": -1, "num_train_epochs": 0}, "num_train_epochs"),
        ],
    )
    def test_invalid_values_are_rejected(self, override, message):
        with pytest.raises(ValueError, match=message):
            load_config(CONFIGS / "smollm2-135m-demo.yaml", **override)

    def test_unknown_yaml_key_is_rejected(self, tmp_path):
        path = tmp_path / "bad.yaml"
        path.write_text("lora_r: 8\nlora_rank: 8\n")
        with pytest.raises(ValueError, match="lora_rank"):
            load_config(path)
        with pytest.raises(ValueError, match="lora_rank"):
            parse_config(["--config", str(path)])

    def test_early_stopping_off_allows_any_save_steps(self):
        config = load_config(
            CONFIGS / "smollm2-135m-demo.yaml", early_stopping_patience=0, eval_steps=30, save_steps=40
        )
        assert config.save_steps == 40
