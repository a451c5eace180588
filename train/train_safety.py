"""Train the safety classifier head shipped as ``alpacare/safety_head.npz``.

    . .venv/bin/activate && HF_HUB_OFFLINE=1 python train/train_safety.py --shared ../shared/data

Reads the sentences in ``alpacare/safety_data/`` (ours) plus our labels on shared answers (texts read from
``--shared``; skipped when that folder is absent), fits per classifier category (diagnosis, prescription,
decision_rule) a logistic regression on MiniLM embeddings + cue features + word n-grams and averages it with a small
MLP, picks the thresholds that give the best out-of-fold reply recall at a reply false-positive rate of
``--max-reply-fpr`` on our labeled answers (never on ``safety_dev.jsonl``), and prints the out-of-fold figures as
one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alpacare.safety import CLASSIFIER_CATEGORIES, HEAD_PATH
from alpacare.safety_training import (
    MLP_HIDDEN,
    answer_examples,
    fit_head,
    referenced_examples,
    save_head,
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
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in args.extra:
        if not path.is_file():
            parser.error(f"--extra: no such file: {path}")

    written = written_examples(seed=args.seed, extra=args.extra)
    examples = written + referenced_examples(args.shared) + answer_examples(args.shared)
    head = fit_head(
        examples,
        c=args.C,
        max_fpr=args.max_fpr,
        seed=args.seed,
        min_count=args.min_count,
        max_reply_fpr=args.max_reply_fpr,
        mlp_hidden=args.mlp_hidden,
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
