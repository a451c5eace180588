"""FastTrainer matches the plain Trainer's loss; resolve_precision gives valid TrainingArguments kwargs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alpacare import fastpath


def _tiny_llama(vocab: int = 97, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def _batch(seed: int = 1):
    """Two right-padded rows with a masked prompt, a response, and padding (labels -100 on prompt and padding)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 97, (2, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    input_ids[1, 9:] = 0
    labels = input_ids.clone()
    labels[0, :5] = -100
    labels[1, :3] = -100
    labels[1, 9:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, **kw)


class TestImport:
    def test_module_import_is_light(self):
        code = "import sys, alpacare.fastpath; print('torch' in sys.modules, 'transformers' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["False", "False"]

    def test_fast_trainer_is_a_trainer(self):
        import transformers

        from alpacare.fastpath import FastTrainer

        assert issubclass(FastTrainer, transformers.Trainer)


class TestLoss:
    @pytest.mark.parametrize("num_items", [None, 13])
    def test_same_loss_as_trainer(self, tmp_path, num_items):
        import torch
        from transformers import Trainer

        from alpacare.fastpath import FastTrainer

        model = _tiny_llama()
        batch = _batch()
        plain = Trainer(model=model, args=_args(tmp_path))
        fast = FastTrainer(model=model, args=_args(tmp_path))
        with torch.no_grad():
            want = plain.compute_loss(model, dict(batch), num_items_in_batch=num_items)
            got = fast.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        assert got.item() == pytest.approx(want.item(), rel=1e-5)

    def test_same_gradients_as_trainer(self, tmp_path):
        import torch
        from transformers import Trainer

        from alpacare.fastpath import FastTrainer

        grads = []
        for cls in (Trainer, FastTrainer):
            model = _tiny_llama()
            trainer = cls(model=model, args=_args(tmp_path))
            trainer.compute_loss(model, _batch()).backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)

    def test_only_loss_positions_reach_lm_head(self, tmp_path):
        from alpacare.fastpath import FastTrainer

        model = _tiny_llama()
        seen = []
        model.lm_head.register_forward_hook(lambda _m, _a, out: seen.append(tuple(out.shape)))
        batch = _batch()
        FastTrainer(model=model, args=_args(tmp_path)).compute_loss(model, dict(batch))
        n_loss = int((batch["labels"][:, 1:] != -100).sum())
        assert seen == [(n_loss, 97)]


class TestPrecision:
    @pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
    def test_explicit(self, precision):
        kwargs = fastpath.resolve_precision(precision)
        assert kwargs == {"bf16": precision == "bf16", "fp16": precision == "fp16"}

    def test_rejects_unknown(self):
        with pytest.raises(ValueError):
            fastpath.resolve_precision("int8")  # type: ignore[arg-type]

    @pytest.mark.parametrize(("flags", "want"), [("avx512_bf16 avx2", True), ("amx_bf16", True), ("avx2 fma", False)])
    def test_auto_on_cpu_reads_flags(self, tmp_path, monkeypatch, flags, want):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {flags}\n")
        assert fastpath.cpu_has_bf16(cpuinfo) is want
        monkeypatch.setattr(fastpath, "_cuda_state", lambda: (False, False))
        monkeypatch.setattr(fastpath, "cpu_has_bf16", lambda: want)
        assert fastpath.resolve_precision("auto") == {"bf16": want, "fp16": False}

    @pytest.mark.parametrize(("cuda_bf16", "want"), [(True, "bf16"), (False, "fp16")])
    def test_auto_on_cuda(self, monkeypatch, cuda_bf16, want):
        monkeypatch.setattr(fastpath, "_cuda_state", lambda: (True, cuda_bf16))
        kwargs = fastpath.resolve_precision("auto")
        assert kwargs[want] is True and sum(kwargs.values()) == 1

    def test_auto_kwargs_build_training_arguments(self, tmp_path):
        args = _args(tmp_path, **fastpath.resolve_precision("auto"))
        assert args.bf16 == fastpath.resolve_precision("auto")["bf16"]
