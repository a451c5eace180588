"""Shared fixtures: paths to ../shared/data (skip when absent), a tiny random Llama, the real SmolLM2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ALPACARE_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Tests never reach the Hub: everything is local files, fakes at the Hub boundary, or the embedded model.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (CC BY-NC, read in place, never copied); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def safety_dev(shared_data: Path) -> list[dict]:
    """The labeled safety dev set (for measuring only)."""
    import json

    path = shared_data / "safety_dev.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The clean HF copy of the embedded SmolLM2-135M-Instruct (built from the GGUF on first use)."""
    from alpacare.modeling import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="session")
def tokenizer(smollm2_path: Path):
    """SmolLM2's real tokenizer (chat template included): local, fast, no download."""
    from alpacare.modeling import load_tokenizer

    return load_tokenizer(str(smollm2_path))


@pytest.fixture()
def tiny_model(tokenizer):
    """A tiny random Llama with SmolLM2's vocabulary: milliseconds per step, for unit tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
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
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def smollm2(smollm2_path: Path):
    """The real SmolLM2-135M-Instruct as a ``LoadedModel`` (for the few end-to-end tests)."""
    from alpacare.modeling import load_model

    return load_model()  # the embedded default, labelled as such (its cache is ``smollm2_path``)
