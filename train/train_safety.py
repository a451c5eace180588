"""Train the safety classifier head shipped as ``alpacare/safety_head.npz``.

    . .venv/bin/activate && HF_HUB_OFFLINE=1 python train/train_safety.py --shared ../shared/data

Reads the sentences in ``alpacare/safety_data/`` (ours) plus our labels on shared answers (texts read from
``--shared``; skipped when that folder is absent), fits per classifier category (diagnosis, prescription,
decision_rule) a logistic regression on MiniLM embeddings + cue features + word n-grams and averages it with a small
MLP, picks the thresholds that give the best out-of-fold reply recall at a reply false-positive rate of
``--max-reply-fpr`` on our labeled answers (never on ``safety_dev.jsonl``), and prints the out-of-fold figures as
one JSON line.

``--encoder-epochs 1`` first fine-tunes MiniLM with a LoRA adapter on the same sentences and fits the head on its
embeddings (the adapter ships inside the head file). Measured 2026-12-06 and not adopted: out-of-fold reply recall
0.844 at FPR 0.097 (frozen MiniLM, same data: 0.828 at 0.10), but on our 25 read reply sets 1224 caught and 44
false positives against the shipped head's 1237 and 67, and fewer caught even with its cut lowered to the shipped
head's 67 false positives (1230); on the unread sets t, w and y, 138 caught and 14 false positives against 141 and 16.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alpacare.safety import CLASSIFIER_CATEGORIES, HEAD_PATH
from alpacare.safety_training import (
    LORA_RANK,
    MLP_HIDDEN,
    answer_examples,
    apply_conventions,
    fit_head,
    referenced_examples,
    save_head,
    train_crossfit_adapters,
    train_encoder_adapter,
    written_examples,
)

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data", help="shared data folder")
    parser.add_argument("--output", type=Path, default=HEAD_PATH, help="where to write the head (npz)")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regressions")
    parser.add_argument(
        "--min-count", type=int, default=10, help="n-grams seen in fewer training sentences are dropped"
    )
    parser.add_argument(
        "--max-reply-fpr", type=float, default=0.10, help="out-of-fold reply false-positive rate the thresholds keep"
    )
    parser.add_argument(
        "--max-fpr", type=float, default=0.02, help="sentence FPR per head, used only without shared answers"
    )
    parser.add_argument(
        "--mlp-hidden",
        type=int,
        default=MLP_HIDDEN,
        help="hidden units of the MLP averaged with each regression (0: none)",
    )
    parser.add_argument(
        "--extra",
        type=Path,
        nargs="*",
        default=[],
        help="more written-sentence files to train on (e.g. alpacare/safety_data/candidates/*.jsonl)",
    )
    parser.add_argument(
        "--encoder-epochs",
        type=float,
        default=0.0,
        help="epochs of LoRA fine-tuning of MiniLM before the head (three runs: two cross-fit halves, then all; "
        "~35 min for 1 epoch here); 0, the shipped head's recipe: frozen MiniLM",
    )
    parser.add_argument("--lora-rank", type=int, default=LORA_RANK, help="rank of the encoder's LoRA adapter")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.lora_rank < 1:
        parser.error("--lora-rank must be at least 1")
    for path in args.extra:
        if not path.is_file():
            parser.error(f"--extra: no such file: {path}")

    written = written_examples(seed=args.seed, extra=args.extra)
    examples = apply_conventions(written + referenced_examples(args.shared) + answer_examples(args.shared))
    adapter, crossfit = None, None
    if args.encoder_epochs > 0:
        tune = {"epochs": args.encoder_epochs, "rank": args.lora_rank, "seed": args.seed}
        print(
            "fine-tuning MiniLM twice, each without one half of the answers (for out-of-fold figures)", file=sys.stderr
        )
        crossfit = train_crossfit_adapters(examples, **tune)
        print("fine-tuning MiniLM on all the examples (the shipped adapter)", file=sys.stderr)
        adapter = train_encoder_adapter(examples, **tune)
        print("fitting the head", file=sys.stderr)
    head = fit_head(
        examples,
        c=args.C,
        max_fpr=args.max_fpr,
        seed=args.seed,
        min_count=args.min_count,
        max_reply_fpr=args.max_reply_fpr,
        mlp_hidden=args.mlp_hidden,
        adapter=adapter,
        crossfit=crossfit,
    )
    save_head(head, args.output)
    probs, y = head["oof_probs"], head["y"]
    report = {"examples": len(examples), "shared_examples": sum(e.source == "shared" for e in examples)}
    for k, category in enumerate(CLASSIFIER_CATEGORIES):
        t = float(head["thresholds"][k])
        pos, neg = y[:, k] == 1, head["clean"]
        report[category] = {
            "positives": int(pos.sum()),
            "threshold": round(t, 3),
            "oof_recall": round(float((probs[pos, k] >= t).mean()), 3),
            "oof_fpr": round(float((probs[neg, k] >= t).mean()), 4),
        }
    report["reply_oof"] = head["reply_oof"]
    report["head"] = str(args.output)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
