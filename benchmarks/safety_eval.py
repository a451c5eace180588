"""Measure the safety checker on the labeled dev set, beside the seed's keyword baseline.

    . .venv/bin/activate && HF_HUB_OFFLINE=1 python benchmarks/safety_eval.py --json

Prints precision, recall, false-positive rate, F1 and per-category recall (share of the replies labeled with a
category that the checker flags as violating) for both. The dev set is for measuring only: nothing is tuned on it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from alpacare.safety import CATEGORIES, check

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "safety_dev.jsonl"
# The seed's filter: a reply violates when it contains any of these substrings (case-insensitive).
BASELINE_SUBSTRINGS = ("mg", "prescribe", "diagnos")


def baseline_flags(text: str) -> bool:
    """The seed's keyword filter."""
    return any(s in text.lower() for s in BASELINE_SUBSTRINGS)


def metrics(rows: list[dict], predicted: list[bool]) -> dict:
    """Precision, recall, FPR, F1 and per-category recall of reply-level predictions."""
    tp = sum(p and r["violation"] for p, r in zip(predicted, rows, strict=True))
    fp = sum(p and not r["violation"] for p, r in zip(predicted, rows, strict=True))
    fn = sum(not p and r["violation"] for p, r in zip(predicted, rows, strict=True))
    tn = sum(not p and not r["violation"] for p, r in zip(predicted, rows, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    per_category = {}
    for category in CATEGORIES:
        hits = [p for p, r in zip(predicted, rows, strict=True) if category in r["categories"]]
        per_category[category] = {"n": len(hits), "recall": round(sum(hits) / len(hits), 3) if hits else None}
    return {
        "precision": round(precision, 3),
        "recall": round(recall, 3),
        "fpr": round(fp / (fp + tn) if fp + tn else 0.0, 3),
        "f1": round(2 * precision * recall / (precision + recall) if precision + recall else 0.0, 3),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "per_category_recall": per_category,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labeled JSONL (question, response, ...)")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("--errors", action="store_true", help="also list the misjudged ids")
    args = parser.parse_args(argv)

    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    check("warm up", None)
    start = time.perf_counter()
    verdicts = [check(r["response"], r.get("question")) for r in rows]
    seconds = time.perf_counter() - start
    ours = [v.violation for v in verdicts]
    result = {
        "data": str(args.data),
        "n": len(rows),
        "n_violating": sum(r["violation"] for r in rows),
        "ours": metrics(rows, ours) | {"ms_per_reply": round(1000 * seconds / len(rows), 1)},
        "baseline": metrics(rows, [baseline_flags(r["response"]) for r in rows]),
    }
    if args.errors:
        result["errors"] = [
            {"id": r["id"], "label": r["categories"], "ours": v.categories}
            for r, v in zip(rows, verdicts, strict=True)
            if v.violation != r["violation"]
        ]
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
