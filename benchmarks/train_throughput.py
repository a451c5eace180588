"""LoRA training throughput: the seeds' pipeline against ours, same model, same real data, one run.

    python benchmarks/train_throughput.py --json

(a) baseline, the seeds'/peers' pipeline: plain ``transformers.Trainer``, every example padded to 512 tokens,
    batch 1, gradient accumulation 8, fp32, SDPA attention.
(b) ours, as ``train/configs/smollm2-135m-demo.yaml`` trains: ``alpacare.fastpath.FastTrainer``, the config's
    batch size / accumulation / precision / sampling (group_by_length), batches padded to their longest example.

Both train the same LoRA (the demo config's r, alpha, dropout, target modules, learning rate and schedule) on the
first ``--n`` examples of iCliniq (``../shared/data/alpacare/icliniq/gpt-4.jsonl``: ``input`` is the patient's
question, ``output`` the target; the instruction field is empty there, so a fixed instruction is used), formatted
and masked by the project's own ``alpacare.data.tokenize_example``. Real tokens/s counts non-padding tokens per
second of ``trainer.train()``. Training quality: the validation loss of both adapters (and of the base model) on
the next ``--eval-n`` examples, computed by one and the same fp32 evaluator.

The matmul peak is the best of fp32 and bf16 2048×2048 matmuls measured in this run, and
``mfu = 4 · N_params · tokens_per_s / peak`` (a LoRA step is ~4 FLOPs per parameter and token: forward, and the
backward through frozen weights that needs input gradients only). Prints one JSON line; exits 0 with
``{"skipped": reason}`` when ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ALPACARE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "alpacare/icliniq/gpt-4.jsonl"
DEMO_CONFIG = ROOT / "train/configs/smollm2-135m-demo.yaml"
INSTRUCTION = "Answer the patient's question."
BASELINE_MAX_LENGTH = 512


def matmul_gflops(dtype: Any, size: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of ``repeats`` size×size matmuls in ``dtype`` (after one warm-up)."""
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def load_examples(tokenizer: Any, n: int, offset: int, max_length: int) -> list[dict[str, list[int]]]:
    """iCliniq rows ``offset .. offset+n`` as training features (the project's formatting and masking)."""
    from alpacare.data import tokenize_example

    rows = []
    with DATA.open() as f:
        for i, line in enumerate(f):
            if i >= offset + n:
                break
            if i >= offset:
                row = json.loads(line)
                rows.append({"instruction": row.get("instruction") or INSTRUCTION, "input": row["input"],
                             "output": row["output"]})  # fmt: skip
    return [tokenize_example(tokenizer, row, max_length) for row in rows]


def make_args(out: str, **kwargs: Any) -> Any:
    """Quiet ``TrainingArguments``: one epoch, no saving, no eval during training, no logging integrations."""
    from transformers import TrainingArguments

    base = dict(output_dir=out, num_train_epochs=1, save_strategy="no", eval_strategy="no", report_to=[],
                logging_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0)  # fmt: skip
    return TrainingArguments(**{**base, **kwargs})


def run(trainer_cls: type, model: Any, args: Any, train: Any, collator: Any, **trainer_kwargs: Any) -> dict:
    """Train once; wall and CPU time and real (non-padding) tokens of ``trainer.train()``."""
    from accelerate.state import AcceleratorState

    # Each pipeline has its own precision; accelerate keeps one global state per process unless reset.
    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = trainer_cls(model=model, args=args, train_dataset=train, data_collator=collator, **trainer_kwargs)
    tokens = sum(len(ids) for ids in train["input_ids"]) * args.num_train_epochs
    start, cpu = time.perf_counter(), time.process_time()
    result = trainer.train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": round(seconds, 2), "tokens": int(tokens), "tokens_per_s": round(tokens / seconds, 1),
            "tokens_per_cpu_s": round(tokens / cpu, 1), "train_loss": round(result.training_loss, 4),
            "steps": trainer.state.global_step}  # fmt: skip


def eval_loss(model: Any, dataset: Any, collator: Any, batch_size: int = 4) -> float:
    """Token-mean validation loss, fp32, no autocast: one and the same evaluator for every model."""
    import torch
    from accelerate.utils import extract_model_from_parallel

    # A Trainer that trained in bf16 leaves accelerate's autocast wrapper on ``model.forward``: take it off.
    model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    return total / count


ABLATIONS = ("fast_attention", "sparse_dropout", "bf16_weights", "drop_padding_mask", "loss_positions_only",
             "fused_cross_entropy", "fused_lora", "fused_norm")  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the options, run the benchmark with stdout kept for the JSON line, print it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the JSON line only (the default output)")
    parser.add_argument("--n", type=int, default=32, help="training examples (first N of iCliniq gpt-4)")
    parser.add_argument("--eval-n", type=int, default=16, help="validation examples (the next ones)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="the config 'ours' trains as")
    parser.add_argument("--repeats", type=int, default=1, help="train each pipeline N times (report all, use best)")
    parser.add_argument("--skip-baseline", action="store_true", help="only (b), e.g. to compare settings")
    parser.add_argument("--ablate", action="store_true", help="also train (b) with each FastTrainer speed-up off")
    parser.add_argument("--off", default="", help="comma-separated FastTrainer speed-ups to switch off in (b)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    opts = parser.parse_args(argv)

    if not DATA.exists():
        result: dict[str, Any] = {"skipped": f"shared data not found: {DATA}"}
    else:
        with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its metrics: keep stdout for the JSON
            result = benchmark(opts)
    print(json.dumps(result))
    return result


def benchmark(opts: argparse.Namespace) -> dict[str, Any]:
    """Both pipelines on the same data, in one process; the result dict."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, set_seed

    from alpacare.data import IGNORE_INDEX
    from alpacare.fastpath import FastTrainer
    from alpacare.modeling import load_tokenizer
    from alpacare.training import build_model, load_config, model_dtype, training_precision

    if opts.threads:
        torch.set_num_threads(opts.threads)
    load_before = os.getloadavg()[0]
    config = load_config(opts.config)
    peak_fp32 = matmul_gflops(torch.float32)
    peak_bf16 = matmul_gflops(torch.bfloat16)
    peak = max(peak_fp32, peak_bf16)

    tokenizer = load_tokenizer(config.base_model)
    train = Dataset.from_list(load_examples(tokenizer, opts.n, 0, config.max_length))
    valid = Dataset.from_list(load_examples(tokenizer, opts.eval_n, opts.n, config.max_length))
    dynamic = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    padded = DataCollatorForSeq2Seq(
        tokenizer, padding="max_length", max_length=BASELINE_MAX_LENGTH, label_pad_token_id=IGNORE_INDEX
    )
    # Same optimization for both, so the loss comparison measures the pipelines, not the hyperparameters.
    optim = dict(learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler_type,
                 warmup_steps=config.warmup_steps, weight_decay=config.weight_decay,
                 max_grad_norm=config.max_grad_norm, seed=config.seed)  # fmt: skip
    precision = training_precision(config.precision)

    def fresh_model(dtype: str | None) -> Any:
        set_seed(config.seed)  # the same LoRA initialization for every run
        return build_model(config, dtype=dtype)

    def train_ours(**fast_flags: bool) -> tuple[dict, Any]:
        model = fresh_model(model_dtype(config, precision))
        args = make_args(
            tmp,
            per_device_train_batch_size=config.per_device_train_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            train_sampling_strategy=config.train_sampling_strategy,
            **optim,
            **precision,
        )
        return run(FastTrainer, model, args, train, dynamic, **fast_flags), model

    def train_baseline() -> tuple[dict, Any]:
        model = fresh_model(None)  # fp32
        args = make_args(tmp, per_device_train_batch_size=1, gradient_accumulation_steps=8, **optim)
        return run(Trainer, model, args, train, padded), model

    with tempfile.TemporaryDirectory() as tmp:
        model = fresh_model(None)
        n_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)  # the base model's
        with model.disable_adapter():
            eval_base = eval_loss(model, valid, dynamic)
        del model
        ours_runs, base_runs = [], []
        for _ in range(opts.repeats):  # interleaved, so slow phases of a shared machine hit both
            stats, model = train_ours(**dict.fromkeys(filter(None, opts.off.split(",")), False))
            ours_runs.append(stats | {"eval_loss": round(eval_loss(model, valid, dynamic), 4)})
            del model
            if not opts.skip_baseline:
                stats, model = train_baseline()
                base_runs.append(stats | {"eval_loss": round(eval_loss(model, valid, dynamic), 4)})
                del model
        ablation = {}
        if opts.ablate:
            for flag in ABLATIONS:
                ablation[f"no_{flag}"] = train_ours(**{flag: False})[0]["tokens_per_s"]
            ablation["none"] = train_ours(**dict.fromkeys(ABLATIONS, False))[0]["tokens_per_s"]

    def mfu(tokens_per_s: float) -> float:
        return round(4 * n_params * tokens_per_s / (peak * 1e9), 3)

    tps = max(r["tokens_per_s"] for r in ours_runs)
    result: dict[str, Any] = {
        "model": config.base_model,
        "n_params": n_params,
        "n_train": len(train),
        "n_eval": len(valid),
        "real_tokens": int(sum(len(x) for x in train["input_ids"])),
        "threads": torch.get_num_threads(),
        "loadavg_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "matmul_fp32_gflops": round(peak_fp32, 1),
        "matmul_bf16_gflops": round(peak_bf16, 1),
        "matmul_peak_gflops": round(peak, 1),
        "tokens_per_s": tps,
        "mfu": mfu(tps),
        "eval_loss_base_model": round(eval_base, 4),
        "eval_loss_ours": ours_runs[0]["eval_loss"],
        "ours_settings": {
            "trainer": "FastTrainer",
            "precision": "bf16" if precision["bf16"] else "fp16" if precision["fp16"] else "fp32",
            "batch": config.per_device_train_batch_size,
            "grad_accum": config.gradient_accumulation_steps,
            "sampling": config.train_sampling_strategy,
            "lora": {
                "r": config.lora_r,
                "alpha": config.lora_alpha,
                "dropout": config.lora_dropout,
                "targets": list(config.target_modules),
                "lr": config.learning_rate,
            },  # fmt: skip
        },
        "ours_runs": ours_runs,
    }
    if base_runs:
        base_tps = max(r["tokens_per_s"] for r in base_runs)
        result |= {
            "baseline_tokens_per_s": base_tps,
            "speedup": round(tps / base_tps, 2),
            "baseline_mfu": mfu(base_tps),
            "eval_loss_baseline": base_runs[0]["eval_loss"],
            "baseline_settings": {
                "trainer": "Trainer",
                "precision": "fp32",
                "batch": 1,
                "grad_accum": 8,
                "padding": f"max_length {BASELINE_MAX_LENGTH}",
            },  # fmt: skip
            "baseline_runs": base_runs,
        }
    if ablation:
        result["ablation_tokens_per_s"] = ablation
    return result


if __name__ == "__main__":
    main()
