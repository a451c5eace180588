"""Evaluate a trained run folder: base vs adapter perplexity, safety and disclaimer rates, ROUGE-L.

    python train/evaluate.py --run_dir runs/smollm2-demo --n_generate 10 --max_new_tokens 256

MedInstruct-test is read from ../shared/data/alpacare/medinstruct_test/MedInstruct-test.jsonl (``--medinstruct_path``;
skipped when absent; ``--n_medinstruct`` rows of its 216 are used, 50 by default, 0 for all). Works offline: the
base model comes from the run's train_config.yaml, ROUGE-L from the metric module shipped in alpacare/metrics.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# This script shares its name with the `evaluate` library, and Python puts the script's folder first on sys.path:
# drop that entry so that `import evaluate` (the library, used for ROUGE-L) does not import this file.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from alpacare.evaluation import DEFAULT_MEDINSTRUCT, evaluate_run, format_results  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, evaluate, print the side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="Run folder written by train/train_lora.py.")
    parser.add_argument("--n_generate", type=int, default=10, help="Prompts generated per dataset.")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--medinstruct_path", default=str(DEFAULT_MEDINSTRUCT), help="'' to skip MedInstruct-test.")
    # 50 of the 216 rows keep a CPU run within minutes (all 216 took ~20 CPU-min for the two perplexities here).
    parser.add_argument("--n_medinstruct", type=int, default=50, help="Use the first N rows (0: all 216).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = evaluate_run(args.run_dir, args.n_generate, args.max_new_tokens, args.medinstruct_path or None,
                           args.n_medinstruct or None)  # fmt: skip
    print(format_results(results))
    print(f"written: {args.run_dir}/eval_results.json")


if __name__ == "__main__":
    main()
