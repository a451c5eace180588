"""Fast LoRA training: a drop-in ``transformers.Trainer`` and hardware-aware precision settings.

Importing this module is light (no torch, no transformers): ``FastTrainer`` is built on first access
through a module ``__getattr__`` (PEP 562), so ``from alpacare.fastpath import FastTrainer`` works and
imports transformers only at that moment.

What makes ``FastTrainer`` faster than the plain ``Trainer`` for supervised fine-tuning:

* the vocabulary projection (``lm_head``, 49152 × 576 on SmolLM2, a large share of the compute) runs only
  on positions whose next token carries a loss (labels != -100), not on prompt or padding positions.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import Trainer as FastTrainer  # noqa: F401

Precision = Literal["auto", "bf16", "fp16", "fp32"]

IGNORE_INDEX = -100

# CPU flags that give native bf16 matmuls (oneDNN uses them); without them bf16 on CPU is emulated and slow.
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (read from ``/proc/cpuinfo``; False if unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return any(flag in flags for flag in _CPU_BF16_FLAGS)
    return False


def _cuda_state() -> tuple[bool, bool]:
    """(CUDA available, CUDA supports bf16); (False, False) without torch."""
    try:
        import torch
    except ImportError:
        return False, False
    if not torch.cuda.is_available():
        return False, False
    return True, bool(torch.cuda.is_bf16_supported())


def resolve_precision(precision: Precision = "auto") -> dict[str, Any]:
    """``TrainingArguments`` kwargs for a precision.

    ``auto`` picks bf16 where the hardware has it (CUDA with bf16, or a CPU with AMX-BF16/AVX512-BF16),
    else fp16 on CUDA, else fp32. Explicit ``bf16``/``fp16`` are returned as asked (``TrainingArguments``
    itself raises if the device cannot do them).

    Args:
        precision: "auto", "bf16", "fp16" or "fp32".

    Returns:
        ``{"bf16": bool, "fp16": bool}``, to splat into ``TrainingArguments``.
    """
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    if precision == "auto":
        cuda, cuda_bf16 = _cuda_state()
        if cuda:
            precision = "bf16" if cuda_bf16 else "fp16"
        else:
            precision = "bf16" if cpu_has_bf16() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def shifted_loss_mask(labels: Any) -> Any:
    """Positions whose logits carry a loss, shape ``[B, T-1]``: logits at t predict labels[t+1]."""
    return labels[:, 1:] != IGNORE_INDEX


def _find_lm_head(model: Any) -> Any:
    """The output embedding (``lm_head``) of a causal LM, through PEFT and other wrappers."""
    inner = model
    if hasattr(inner, "get_base_model"):  # peft.PeftModel
        inner = inner.get_base_model()
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings; FastTrainer needs a causal LM")
    return head


@functools.cache
def _build_fast_trainer() -> type:
    import torch
    import torch.nn.functional as F
    import transformers

    class FastTrainer(transformers.Trainer):
        """``transformers.Trainer`` that computes logits only where labels carry a loss.

        A drop-in replacement: same arguments, same loss value as ``Trainer`` (token-mean cross entropy over
        shifted labels, normalized by ``num_items_in_batch`` under gradient accumulation), less compute.
        Falls back to ``Trainer.compute_loss`` when a custom ``compute_loss_func``/label smoothing is set or
        when full logits must be returned for ``compute_metrics``.
        """

        def compute_loss(
            self,
            model: torch.nn.Module,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: torch.Tensor | int | None = None,
        ) -> torch.Tensor | tuple[torch.Tensor, Any]:
            labels = inputs.get("labels")
            needs_full_logits = return_outputs and self.compute_metrics is not None
            if (
                labels is None
                or needs_full_logits
                or self.label_smoother is not None
                or self.compute_loss_func is not None
            ):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

            mask = shifted_loss_mask(labels)  # [B, T-1]
            targets = labels[:, 1:][mask]  # [N]
            head = _find_lm_head(self.accelerator.unwrap_model(model))

            def keep_loss_positions(_module: Any, args: tuple) -> tuple:
                # hidden: [B, T, H] -> [N, H]; the last position predicts nothing.
                return (args[0][:, :-1][mask],)

            handle = head.register_forward_pre_hook(keep_loss_positions)
            try:
                model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
                outputs = model(**model_inputs)
            finally:
                handle.remove()
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]  # [N, V]
            # fp32 cross entropy, as transformers' ForCausalLMLoss does.
            loss = F.cross_entropy(logits.float(), targets, reduction="sum")
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch
                if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                    loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            else:
                loss = loss / targets.numel() if targets.numel() else loss
            return (loss, outputs) if return_outputs else loss

    FastTrainer.__module__ = __name__
    return FastTrainer


def __getattr__(name: str) -> Any:
    if name == "FastTrainer":
        return _build_fast_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
