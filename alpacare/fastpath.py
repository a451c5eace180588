"""Fast LoRA training on CPUs (and GPUs): a drop-in ``transformers.Trainer`` and hardware-aware precision.

Importing this module is light (no torch, no transformers): ``FastTrainer`` is built on first access through a
module ``__getattr__`` (PEP 562), so ``from alpacare.fastpath import FastTrainer`` works and imports transformers
only at that moment.

Where the time of a LoRA step on a small model goes on a CPU (torch.profiler, SmolLM2-135M, batch 4 × 512,
bf16 autocast, all seven projections adapted), and what ``FastTrainer`` does about it, same maths each time:

* ``lm_head`` (49152 × 576) on every position: computed only where the next token carries a loss (labels
  != -100), i.e. not on the prompt or padding (about half of the positions on iCliniq).
* attention, ~1/3 of the step: torch's CPU flash-attention kernel runs at ~50 GFLOP/s whatever the dtype. A
  causal attention written as batched matmuls (bf16 GEMMs, GQA without repeating K/V, causal blocks skipped)
  runs ~3× faster. Used only where it is exact (causal, no mask, no cache, no dropout, no softcap), else SDPA.
* the attention mask: right padding needs none in a causal LM (a real token never attends to a later pad, and
  pads carry no loss), and without it the fast attention applies.
* LoRA dropout, ~1/6 of the step: ``nn.Dropout`` draws one Mersenne-Twister number per element of each adapted
  layer's input (~150k draws per token on SmolLM2). The same i.i.d. Bernoulli mask is drawn from geometric gaps
  between dropped positions: p·n draws instead of n (20× fewer at p = 0.05).
* frozen base weights under bf16 autocast: autocast re-casts every fp32 weight on every forward (frozen
  weights are not cached); they are stored in bf16 for the run instead (embeddings and norms stay fp32, so the
  residual stream and the maths are exactly autocast's), and peft's cast of the LoRA input to fp32 is skipped
  (autocast would cast it back).

Everything is switched on for ``train()``/``evaluate()`` and restored afterwards, so the model leaves the
trainer as it came (same weights, attention, dropout modules).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch
    from transformers import Trainer as FastTrainer  # noqa: F401

Precision = Literal["auto", "bf16", "fp16", "fp32"]

IGNORE_INDEX = -100
FAST_ATTENTION = "alpacare_causal"

# CPU flags that give native bf16 dot products (oneDNN uses them); without them bf16 on a CPU is emulated and slow.
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


# ------------------------------------------------------------------------------------------------------ precision


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


# --------------------------------------------------------------------------------------------- loss positions


def shifted_loss_mask(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose logits carry a loss, shape ``[B, T-1]``: logits at t predict labels[t+1]."""
    return labels[:, 1:] != IGNORE_INDEX


def is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row of a ``[B, T]`` mask is ones then zeros (padding only at the end, if any)."""
    import torch

    lengths = attention_mask.sum(dim=1, keepdim=True)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return bool(torch.equal(attention_mask.bool(), positions[None, :] < lengths))


def drop_redundant_attention_mask(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` without ``attention_mask`` when it only marks right padding that carries no loss.

    In a causal LM a real token attends only to earlier tokens, so right padding never reaches it; the padded
    positions' own outputs are wrong without the mask but they carry no loss (labels -100), so the loss and its
    gradients are unchanged. Without a mask, attention can use its plain causal kernels.
    """
    mask = inputs.get("attention_mask")
    labels = inputs.get("labels")
    if mask is None or labels is None or mask.dim() != 2 or "position_ids" in inputs:
        return inputs
    if not is_right_padded(mask) or bool((labels[mask == 0] != IGNORE_INDEX).any()):
        return inputs
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


def _find_lm_head(model: Any) -> Any:
    """The output embedding (``lm_head``) of a causal LM, through PEFT and other wrappers."""
    inner = _base_model(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if head is None:
        raise ValueError(f"{type(inner).__name__} has no output embeddings; FastTrainer needs a causal LM")
    return head


def _base_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# ---------------------------------------------------------------------------------------- fused cross entropy

# Model types whose logits are exactly ``lm_head(hidden)`` (no bias, no softcapping or logit scaling after it).
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt_neo", "gpt2", "smollm3"})
CE_CHUNK_ROWS = 256  # [256, 49152] logits: 25 MB in bf16, stays in cache far better than all rows at once


@functools.cache
def _fused_ce_function() -> type:
    import torch

    class FusedLinearCrossEntropy(torch.autograd.Function):
        """Summed cross entropy of ``hidden @ weight.T`` against ``targets``, by row chunks, weight frozen.

        The gradient w.r.t. ``hidden`` ((softmax - one_hot) @ weight) is computed chunk by chunk in the forward,
        so the ``[N, V]`` logits, their fp32 copy, log-softmax and its gradient are never materialized (the
        "fused linear cross entropy" of Liger-Kernel / Apple's cut-cross-entropy, in plain torch). The softmax
        runs in fp32 inside torch's kernel on logits of the compute dtype, as HF does under autocast.
        """

        @staticmethod
        def forward(ctx: Any, hidden: Any, weight: Any, targets: Any) -> Any:
            grad = torch.empty_like(hidden)
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], CE_CHUNK_ROWS):
                rows = slice(start, start + CE_CHUNK_ROWS)
                target = targets[rows]
                index = torch.arange(target.numel(), device=hidden.device)
                logits = hidden[rows] @ weight.t()  # [c, V]
                probs = torch.softmax(logits, dim=-1)
                p_target = probs[index, target].float()
                if bool((p_target == 0).any()):  # underflow: exact log-softmax for this chunk (rare)
                    nll = -torch.log_softmax(logits.float(), dim=-1)[index, target]
                else:
                    nll = -torch.log(p_target)
                loss += nll.sum()
                probs[index, target] -= 1  # d loss / d logits = softmax - one_hot
                grad[rows] = probs @ weight
            ctx.save_for_backward(grad)
            return loss

        @staticmethod
        def backward(ctx: Any, grad_loss: Any) -> tuple[Any, None, None]:
            (grad,) = ctx.saved_tensors
            return grad * grad_loss.to(grad.dtype), None, None

    return FusedLinearCrossEntropy


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, targets, reduction="sum")`` for a frozen ``weight``, chunked.

    Args:
        hidden: ``[N, H]`` hidden states (any float dtype; the matmuls run in it, so cast first for bf16).
        weight: ``[V, H]`` output embedding, same dtype as ``hidden``, not trained.
        targets: ``[N]`` token ids.
    """
    import torch

    with torch.autocast(hidden.device.type, enabled=False):
        return _fused_ce_function().apply(hidden, weight.detach(), targets)


def plain_head(model: Any) -> bool:
    """True when the model's logits are exactly ``lm_head(hidden)`` with a frozen, bias-free ``lm_head``."""
    base = _base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    return (
        head is not None
        and model_type in PLAIN_HEAD_MODEL_TYPES
        and getattr(head, "bias", None) is None
        and not head.weight.requires_grad
    )


# --------------------------------------------------------------------------------------------------- attention


def causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, chunks: int | None = None
) -> torch.Tensor:
    """Causal self-attention as batched matmuls; returns ``[B, T, H, D]`` (the layout HF attention returns).

    Hand-written because torch's CPU flash-attention kernel runs at ~50 GFLOP/s in fp32 and bf16 alike, while
    bf16 GEMMs run at ~400 GFLOP/s per core. Query heads that share a K/V head are stacked along the rows of one
    GEMM (no ``repeat_kv`` copy), and the query rows are cut into ``chunks`` blocks that each multiply only the
    keys they can see (a 4-block split skips 3/8 of the score matrix). Softmax runs in fp32 inside the kernel and
    is stored in the input dtype, as in HF's eager attention.

    Args:
        query: ``[B, H, T, D]``.
        key: ``[B, Hkv, T, D]`` with H a multiple of Hkv.
        value: ``[B, Hkv, T, D]``.
        scaling: the softmax scale (``D ** -0.5`` for most models).
        chunks: number of query blocks (default: 4 from T = 256, fewer below).
    """
    import torch

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    rep = heads // kv_heads
    chunks = chunks or max(1, min(4, length // 64))
    q = query.reshape(batch * kv_heads, rep, length, dim)
    k = key.reshape(batch * kv_heads, length, dim)
    v = value.reshape(batch * kv_heads, length, value.shape[-1])
    bounds = [round(length * i / chunks) for i in range(chunks + 1)]
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        rows = end - start
        q_block = q[:, :, start:end].reshape(batch * kv_heads, rep * rows, dim)  # [B·Hkv, rep·rows, D]
        keys = torch.arange(end, device=query.device)
        future = keys[None, :] > keys[start:end, None]  # [rows, end]: True where a key is after the query
        bias = torch.zeros(rows, end, dtype=query.dtype, device=query.device).masked_fill_(future, float("-inf"))
        scores = torch.baddbmm(bias.repeat(rep, 1), q_block, k[:, :end].transpose(1, 2), alpha=scaling)
        probs = torch.softmax(scores, dim=-1)  # [B·Hkv, rep·rows, end]
        outputs.append(torch.bmm(probs, v[:, :end]).view(batch, kv_heads, rep, rows, -1))
    out = torch.cat(outputs, dim=3) if len(outputs) > 1 else outputs[0]  # [B, Hkv, rep, T, Dv]
    return out.reshape(batch, heads, length, -1).transpose(1, 2)


def fast_attention_forward(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """HF ``AttentionInterface`` function: ``causal_attention`` where it is exact, else HF's SDPA path."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    is_causal = kwargs.get("is_causal")
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    plain = (
        attention_mask is None
        and is_causal
        and dropout == 0.0
        and query.shape[2] > 1
        and query.shape[2] == key.shape[2]
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
        and kwargs.get("cache") is None
        and kwargs.get("sliding_window") is None
        and getattr(module, "sliding_window", None) is None
        and query.shape[1] % key.shape[1] == 0
    )
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return causal_attention(query, key, value, scale).contiguous(), None


@functools.cache
def register_fast_attention() -> str:
    """Register ``fast_attention_forward`` with transformers (once) and return its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FAST_ATTENTION, fast_attention_forward)
    AttentionMaskInterface.register(FAST_ATTENTION, sdpa_mask)  # SDPA-style masks: None when causal is enough
    return FAST_ATTENTION


# ----------------------------------------------------------------------------------------------------- dropout


class _DropStream:
    """Dropped positions of one endless i.i.d. Bernoulli(p) sequence, handed out in consecutive pieces.

    The gaps between successive dropped positions of an i.i.d. Bernoulli(p) sequence are i.i.d. Geometric(p),
    so drawing the gaps gives exactly the distribution of ``nn.Dropout``'s mask with ~p·n random numbers
    instead of n (the CPU generator costs ~3 ns a number, far more than the multiply it feeds). Gaps are drawn
    in large pools and each mask takes the next ``n`` positions of the sequence: consecutive pieces of an i.i.d.
    sequence are independent, and a few ops per mask instead of a dozen matter at ~200 masks per step.
    """

    POOL = 1 << 20  # gaps per draw: ~20M positions at p = 0.05, a few decoder layers of masks

    def __init__(self, p: float, device: Any) -> None:
        self.p, self.device = p, device
        self.log_q = math.log1p(-p)
        self.positions: Any = None  # sorted 1-based positions of dropped elements in the sequence
        self.offset = 0  # positions <= offset are handed out

    def _extend(self) -> None:
        import torch

        # Geometric(p) on {1, 2, ...} by inversion, floor(log(1-u) / log(1-p)) + 1: a vectorized log of fast
        # uniforms, ~3x cheaper than ``Tensor.geometric_`` (a scalar log per draw).
        u = torch.rand(self.POOL, device=self.device)
        gaps = u.neg_().log1p_().div_(self.log_q).floor_().long().add_(1)
        if self.positions is None:
            self.positions = torch.cumsum(gaps, 0).add_(self.offset)
            return
        pending = int(torch.searchsorted(self.positions, self.offset, right=True))  # first not handed out
        new = torch.cumsum(gaps, 0).add_(self.positions[-1])
        self.positions = torch.cat([self.positions[pending:], new])

    def take(self, n: int) -> Any:
        """Indices in ``[0, n)`` of the dropped elements of the next ``n`` positions."""
        import torch

        end = self.offset + n
        while self.positions is None or int(self.positions[-1]) <= end:
            self._extend()
        lo, hi = torch.searchsorted(self.positions, torch.tensor([self.offset, end]), right=True).tolist()
        dropped = self.positions[lo:hi] - (self.offset + 1)
        self.offset = end
        return dropped


_DROP_STREAMS: dict[tuple[float, str], _DropStream] = {}


def reset_dropout_streams() -> None:
    """Forget the pooled random gaps, so the next masks come from torch's generator as seeded now."""
    _DROP_STREAMS.clear()


def dropped_indices(n: int, p: float, device: Any = None) -> torch.Tensor:
    """Flat indices of the elements an ``nn.Dropout(p)`` would zero in a tensor of ``n`` elements."""
    key = (p, str(device or "cpu"))
    if key not in _DROP_STREAMS:
        _DROP_STREAMS[key] = _DropStream(p, device)
    return _DROP_STREAMS[key].take(n)


def bernoulli_keep_mask(shape: tuple[int, ...], p: float, dtype: Any, device: Any = None) -> torch.Tensor:
    """Dropout keep-mask: ``0`` with probability ``p``, else ``1/(1-p)`` (see ``_DropStream``)."""
    import torch

    n = math.prod(shape)
    keep = torch.full((n,), 1.0 / (1.0 - p), dtype=dtype, device=device)
    keep[dropped_indices(n, p, device)] = 0
    return keep.view(shape)


@functools.cache
def _sparse_dropout_class() -> type:
    import torch
    import torch.nn.functional as F

    class SparseDropout(torch.nn.Module):
        """``nn.Dropout`` with the mask of ``bernoulli_keep_mask`` (same distribution, fewer random draws)."""

        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.training or self.p == 0.0:
                return x
            if self.p >= 0.5:  # few kept positions: the plain kernel is as cheap
                return F.dropout(x, self.p, True)
            return x * bernoulli_keep_mask(tuple(x.shape), self.p, x.dtype, x.device)

        def extra_repr(self) -> str:
            return f"p={self.p}"

    return SparseDropout


def sparse_dropout(p: float) -> Any:
    """A ``SparseDropout(p)`` module."""
    return _sparse_dropout_class()(p)


# ---------------------------------------------------------------------------------------------- model patches


@contextlib.contextmanager
def fast_attention(model: Any) -> Iterator[bool]:
    """Switch the model to ``fast_attention_forward`` while inside; yields False when the model can't."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current not in ("sdpa", "eager") or not hasattr(base, "set_attn_implementation"):
        yield False
        return
    base.set_attn_implementation(register_fast_attention())
    try:
        yield True
    finally:
        base.set_attn_implementation(current)


@contextlib.contextmanager
def sparse_lora_dropout(model: Any) -> Iterator[int]:
    """Replace peft's LoRA ``nn.Dropout`` modules by ``SparseDropout`` while inside; yields how many."""
    import torch

    swapped: list[tuple[Any, str, Any]] = []
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, drop in list(dropouts.items()):
            if type(drop) is torch.nn.Dropout and 0.0 < drop.p < 1.0:
                fast = sparse_dropout(drop.p)
                fast.train(drop.training)
                dropouts[name] = fast
                swapped.append((dropouts, name, drop))
    try:
        yield len(swapped)
    finally:
        for dropouts, name, drop in swapped:
            drop.train(dropouts[name].training)
            dropouts[name] = drop


@contextlib.contextmanager
def bf16_frozen_weights(model: Any) -> Iterator[int]:
    """Store the frozen fp32 weights in bf16 while inside (for bf16 autocast); yields how many tensors.

    Under CPU autocast a frozen weight is cast to bf16 again on every forward (autocast caches casts only for
    leaves that require grad), and every activation is cast again at every matmul. With the frozen base in bf16
    (the trained LoRA weights stay fp32, as their optimizer needs) the GEMMs are the same and the casts are gone;
    the residual stream is then bf16 as in any bf16 model (norms still compute in fp32 inside). peft's cast of
    the LoRA input to the fp32 LoRA dtype is switched off (autocast casts it back anyway).
    """
    import torch

    # Parameters only (tied ones come once): buffers such as rotary ``inv_freq`` stay fp32 for exact angles.
    originals = [(p, p.data) for p in model.parameters() if not p.requires_grad and p.dtype == torch.float32]
    for tensor, data in originals:
        tensor.data = data.to(torch.bfloat16)
    casting = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    flags = [m.cast_input_dtype_enabled for m in casting]
    for m in casting:
        m.cast_input_dtype_enabled = False
    try:
        yield len(originals)
    finally:
        for tensor, data in originals:
            tensor.data = data
        for m, flag in zip(casting, flags, strict=True):
            m.cast_input_dtype_enabled = flag


@functools.cache
def _lora_linear_function() -> type:
    import torch

    class LoraLinearFunction(torch.autograd.Function):
        """``x @ W.T + b + scaling · dropout(x) @ A.T @ B.T`` with a hand-written backward.

        Autograd on peft's modules runs, per adapted layer, a full dropout mask and its multiply, the LoRA GEMMs,
        a scaling multiply and an add in the forward, and in the backward the same again plus an accumulation of
        the two input gradients. Here dropout zeroes the dropped ~p·n elements of one copy of x (1/(1-p) goes
        into the scaling), the LoRA output is added inside the base GEMM's output (``addmm_``) and the masked LoRA
        input gradient inside the base input gradient's GEMM (``addmm``). W and b are frozen; all tensors share
        one dtype (cast by the caller).
        """

        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, bias: Any, lora_a: Any, lora_b: Any, scaling: float, p: float):
            x2 = x.reshape(-1, x.shape[-1])  # [T, in]
            out = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())  # [T, out]
            dropped, kept = None, x2
            if p > 0:
                # dropout(x) = m ⊙ x / (1-p): zero the dropped elements of a copy, fold 1/(1-p) into the scaling
                dropped = dropped_indices(x2.numel(), p, x2.device)
                kept = x2.clone()
                kept.view(-1)[dropped] = 0
                scaling = scaling / (1.0 - p)
            hidden = kept @ lora_a.t()  # [T, r]
            out.addmm_(hidden, lora_b.t(), alpha=scaling)
            ctx.save_for_backward(kept, dropped, hidden, weight, lora_a, lora_b)
            ctx.scaling = scaling
            return out.view(*x.shape[:-1], out.shape[-1])

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple:
            kept, dropped, hidden, weight, lora_a, lora_b = ctx.saved_tensors
            g = grad.reshape(-1, grad.shape[-1])  # [T, out]
            grad_hidden = (g @ lora_b).mul_(ctx.scaling)  # [T, r]
            # (kept.T @ grad_hidden).T: oneDNN runs this layout ~20% faster than grad_hidden.T @ kept
            grad_a = (kept.t() @ grad_hidden).t() if ctx.needs_input_grad[3] else None  # [r, in]
            grad_b = (g.t() @ hidden).mul_(ctx.scaling) if ctx.needs_input_grad[4] else None  # [out, r]
            grad_x = None
            if ctx.needs_input_grad[0]:
                lora_grad = grad_hidden @ lora_a  # [T, in]
                if dropped is not None:
                    lora_grad.view(-1)[dropped] = 0
                grad_x = lora_grad.addmm_(g, weight).view(*grad.shape[:-1], weight.shape[1])  # in place: no copy
            return grad_x, None, None, grad_a, grad_b, None, None

    return LoraLinearFunction


def _fused_lora_forward(layer: Any, original: Any) -> Any:
    """A forward for a peft LoRA ``Linear`` through ``LoraLinearFunction`` (dropout included).

    Anything unusual goes through peft's own forward: several or disabled adapters, merged weights, DoRA and
    other variants, a LoRA bias, extra arguments, a dropout that is not ``nn.Dropout``, a trained base weight.
    Under autocast everything is cast to the autocast dtype (as autocast would for these GEMMs).
    """
    import torch

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapters = layer.active_adapters
        if args or kwargs or layer.disable_adapters or layer.merged or len(adapters) != 1:
            return original(x, *args, **kwargs)
        name = adapters[0]
        if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
            return original(x, *args, **kwargs)
        base, lora_a, lora_b, drop = layer.base_layer, layer.lora_A[name], layer.lora_B[name], layer.lora_dropout[name]
        if lora_b.bias is not None or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return original(x, *args, **kwargs)
        if isinstance(drop, torch.nn.Dropout) or type(drop).__name__ == "SparseDropout":
            p = drop.p if drop.training else 0.0
        elif isinstance(drop, torch.nn.Identity):
            p = 0.0
        else:
            return original(x, *args, **kwargs)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        tensors = [x, base.weight, base.bias, lora_a.weight, lora_b.weight]
        if any(t is not None and t.dtype != dtype for t in tensors) and not torch.is_autocast_enabled(device):
            return original(x, *args, **kwargs)  # mixed dtypes without autocast: peft's casting rules apply
        x, weight, bias, a, b = (t.to(dtype) if t is not None else None for t in tensors)
        with torch.autocast(device, enabled=False):
            return _lora_linear_function().apply(x, weight, bias, a, b, layer.scaling[name], p)

    return forward


# RMSNorm classes computing exactly ``weight * (x.float() * rsqrt(mean(x²) + eps)).to(x.dtype)`` (Gemma's is not).
RMS_NORM_CLASSES = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})


@functools.cache
def _rms_norm_function() -> type:
    import torch

    class RMSNormFunction(torch.autograd.Function):
        """HF's Llama RMSNorm with a hand-written backward: ~10 passes over the activations instead of ~20.

        Forward as HF: the mean square in fp32 (``vector_norm`` reads the bf16 input once, accumulating in
        fp32), ``x·rstd`` in fp32, cast to the input dtype, times the weight. Backward: with u = x·rstd,
        dx = rstd·du − x·(rstd³/H)·Σ(du·x), in fp32, cast back.
        """

        @staticmethod
        def forward(ctx: Any, x: Any, weight: Any, eps: float) -> Any:
            norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)  # [..., 1]
            rstd = torch.rsqrt(norm.square_().div_(x.shape[-1]).add_(eps))
            normed = torch.mul(x, rstd).to(x.dtype)  # fp32 product, as HF's x.float() * rstd
            ctx.save_for_backward(x, rstd, weight)
            return weight * normed

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple:
            x, rstd, weight = ctx.saved_tensors
            grad_x = grad_w = None
            if ctx.needs_input_grad[0]:
                du = (grad * weight).float()  # d loss / d (x·rstd), in fp32 as HF's cast backward gives it
                dot = torch.mul(du, x).sum(dim=-1, keepdim=True)
                coef = rstd.pow(3).mul_(dot).div_(x.shape[-1])
                grad_x = du.mul_(rstd).addcmul_(x, coef, value=-1).to(x.dtype)
            if ctx.needs_input_grad[1]:
                normed = torch.mul(x, rstd).to(x.dtype)
                grad_w = (grad * normed).reshape(-1, x.shape[-1]).sum(0, dtype=torch.float32).to(weight.dtype)
            return grad_x, grad_w, None

    return RMSNormFunction


@contextlib.contextmanager
def _instance_forwards(patches: list[tuple[Any, Any]]) -> Iterator[int]:
    """Set each ``(module, forward)`` pair's instance ``forward`` while inside; yields how many modules.

    On exit each module gets back what it had: the class's forward, or an instance forward another library set
    (an accelerate hook, say). A module that lost our forward meanwhile raises, as it should: the patch was not
    in effect (see ``_kernelize_on_hold``).
    """
    _missing = object()
    saved = [module.__dict__.get("forward", _missing) for module, _ in patches]
    for module, forward in patches:
        module.forward = forward
    try:
        yield len(patches)
    finally:
        for (module, _), before in zip(patches, saved, strict=True):
            if before is _missing:
                del module.forward  # back to the class's forward
            else:
                module.forward = before


def _rms_norm_forward(module: Any) -> Any:
    """``module``'s forward through ``RMSNormFunction``."""

    def forward(hidden: Any) -> Any:
        return _rms_norm_function().apply(hidden, module.weight, module.variance_epsilon)

    return forward


@contextlib.contextmanager
def _kernelize_on_hold(model: Any) -> Iterator[None]:
    """Keep transformers from re-kernelizing ``model`` while inside.

    With the ``kernels`` package installed, transformers (5.2x) turns hub kernels on by default and re-runs
    ``kernelize`` on every ``train()``/``eval()`` switch; ``kernelize`` pops the instance ``forward`` of every
    kernel-capable layer (RMSNorm among them), which silently dropped our fused norm after the first step. No
    public switch holds it for a while, so the flag ``use_kernels`` reads is cleared here and set back on exit.
    """
    held = [m for m in model.modules() if getattr(m, "_use_kernels", False)]
    for m in held:
        m._use_kernels = False
    try:
        yield
    finally:
        for m in held:
            m._use_kernels = True


@contextlib.contextmanager
def fused_rms_norms(model: Any) -> Iterator[int]:
    """Give the model's Llama-style RMSNorm modules the ``RMSNormFunction`` forward while inside."""
    norms = [m for m in model.modules() if type(m).__name__ in RMS_NORM_CLASSES and hasattr(m, "variance_epsilon")]
    with _kernelize_on_hold(model), _instance_forwards([(m, _rms_norm_forward(m)) for m in norms]) as count:
        yield count


@contextlib.contextmanager
def fused_lora_linears(model: Any) -> Iterator[int]:
    """Give peft's LoRA ``Linear`` layers the ``addmm`` forward of ``_fused_lora_forward`` while inside."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # no peft: nothing to fuse
        yield 0
        return
    import torch

    layers = [
        m
        for m in model.modules()
        if type(m) is LoraLinear and isinstance(m.base_layer, torch.nn.Linear) and not m.fan_in_fan_out
    ]
    with _instance_forwards([(m, _fused_lora_forward(m, m.forward)) for m in layers]) as count:
        yield count


# ------------------------------------------------------------------------------------------------- the trainer


@functools.cache
def _build_fast_trainer() -> type:
    import torch
    import torch.nn.functional as F
    import transformers

    class FastTrainer(transformers.Trainer):
        """``transformers.Trainer`` for causal-LM fine-tuning, faster on the same maths (see the module doc).

        A drop-in replacement: same arguments, same loss (token-mean cross entropy over shifted labels,
        normalized by ``num_items_in_batch`` under gradient accumulation). Each speed-up can be switched off with
        a keyword: ``fast_attention``, ``sparse_dropout``, ``bf16_weights``, ``drop_padding_mask``,
        ``loss_positions_only``, ``fused_cross_entropy``, ``fused_lora``, ``fused_norm``. Falls back to
        ``Trainer.compute_loss`` when a custom ``compute_loss_func`` or label smoothing is set, or when full
        logits must be returned for ``compute_metrics``.
        """

        def __init__(
            self,
            *args: Any,
            fast_attention: bool = True,
            sparse_dropout: bool = True,
            bf16_weights: bool = True,
            drop_padding_mask: bool = True,
            loss_positions_only: bool = True,
            fused_cross_entropy: bool = True,
            fused_lora: bool = True,
            fused_norm: bool = True,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self.fast_attention = fast_attention
            self.sparse_dropout = sparse_dropout
            self.bf16_weights = bf16_weights
            self.drop_padding_mask = drop_padding_mask
            self.loss_positions_only = loss_positions_only
            self.fused_cross_entropy = fused_cross_entropy
            self.fused_lora = fused_lora
            self.fused_norm = fused_norm
            self._head_cache: tuple[Any, ...] = ()
            self._fast_depth = 0

        @contextlib.contextmanager
        def fast_model(self) -> Iterator[dict[str, Any]]:
            """Apply the model patches (re-entrant: evaluation inside training reuses them)."""
            if self._fast_depth:
                self._fast_depth += 1
                try:
                    yield {}
                finally:
                    self._fast_depth -= 1
                return
            model = self.model
            cpu_autocast = self.args.bf16 and self.args.device.type == "cpu"
            reset_dropout_streams()  # masks follow torch's generator as the Trainer seeded it
            with contextlib.ExitStack() as stack:
                applied = {
                    "fast_attention": stack.enter_context(_fast_attention_cm(model)) if self.fast_attention else False,
                    "sparse_dropout": stack.enter_context(sparse_lora_dropout(model)) if self.sparse_dropout else 0,
                    "fused_lora": stack.enter_context(fused_lora_linears(model)) if self.fused_lora else 0,
                    "fused_norm": stack.enter_context(fused_rms_norms(model)) if self.fused_norm else 0,
                    "bf16_weights": stack.enter_context(bf16_frozen_weights(model))
                    if self.bf16_weights and cpu_autocast
                    else 0,
                }
                self._fast_depth = 1
                try:
                    yield applied
                finally:
                    self._fast_depth = 0

        def _head_weight(self, head: Any, dtype: Any) -> Any:
            """``head.weight`` in ``dtype``, cast once per weight version (it is frozen: one cast per run)."""
            weight = head.weight
            key = (weight.data_ptr(), weight._version, dtype)
            if self._head_cache[:3] != key:
                self._head_cache = (*key, weight.detach().to(dtype))
            return self._head_cache[3]

        def train(self, *args: Any, **kwargs: Any) -> Any:
            with self.fast_model():
                return super().train(*args, **kwargs)

        def evaluate(self, *args: Any, **kwargs: Any) -> Any:
            with self.fast_model():
                return super().evaluate(*args, **kwargs)

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
            if self.drop_padding_mask:
                inputs = drop_redundant_attention_mask(inputs)
            if not self.loss_positions_only:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

            mask = shifted_loss_mask(labels)  # [B, T-1]
            targets = labels[:, 1:][mask]  # [N]
            unwrapped = self.accelerator.unwrap_model(model)
            head = _find_lm_head(unwrapped)
            fused = self.fused_cross_entropy and plain_head(unwrapped)
            captured: dict[str, Any] = {}

            def keep_loss_positions(_module: Any, args: tuple) -> tuple:
                hidden = args[0][:, :-1][mask]  # [B, T, H] -> [N, H]; the last position predicts nothing
                if not fused:
                    return (hidden,)
                device = hidden.device.type
                captured["hidden"] = hidden
                captured["dtype"] = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
                return (hidden[:0],)  # lm_head runs on no row: the fused loss below does its work

            handle = head.register_forward_pre_hook(keep_loss_positions)
            try:
                outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
            finally:
                handle.remove()
            if fused:
                hidden = captured["hidden"]
                dtype = captured["dtype"] or hidden.dtype
                loss = fused_linear_cross_entropy(hidden.to(dtype), self._head_weight(head, dtype), targets)
            else:
                logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]  # [N, V]
                # fp32 cross entropy, as transformers' ForCausalLMLoss does.
                loss = F.cross_entropy(logits.float(), targets, reduction="sum")
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch
                if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                    loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            else:
                loss = loss / max(targets.numel(), 1)
            return (loss, outputs) if return_outputs else loss

    FastTrainer.__module__ = __name__
    return FastTrainer


_fast_attention_cm = fast_attention  # the trainer's keyword of the same name shadows it inside the class


def __getattr__(name: str) -> Any:
    if name == "FastTrainer":
        return _build_fast_trainer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
