"""Evaluate a run folder: perplexity of base vs base+adapter, safety and disclaimer rates, ROUGE-L.

For the run's test split (rebuilt from ``manifest.json`` by source row id) and for MedInstruct-test (a local
file, reference answers in ``gpt-4-answer``):

* perplexity of the base model and of base + adapter over the reference answers (the training target: answer,
  disclaimer, EOS; loss positions exactly as in training), side by side;
* for the first ``n_generate`` prompts, the model's raw greedy output and the reply ``safe_generate`` returns:
  ``violation_rate`` = share of raw outputs ``alpacare.safety.check`` flags (before any fallback),
  ``disclaimer_rate`` = share of raw outputs that end with the disclaimer (the behaviour training teaches;
  served replies always get it appended), ``blocked_rate`` = share of replies ``safe_generate`` replaced by the
  fallback, ``rougeL`` = ROUGE-L F of the served replies against the references, disclaimer removed from both.

The results go to ``RUN/eval_results.json`` (``CONTRACTS.md``), the generations to ``RUN/eval_generations.jsonl``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alpacare.data import DEFAULT_MAX_LENGTH, IGNORE_INDEX, Row, rows_for_split, tokenize_example
from alpacare.prompts import DISCLAIMER, ensure_disclaimer

log = logging.getLogger(__name__)

ROUGE_L_METRIC = Path(__file__).parent / "metrics" / "rouge_l"
# ../shared/data next to the repository (CC BY-NC: read in place, never copied), or $ALPACARE_SHARED_DATA.
SHARED_DATA = Path(os.environ.get("ALPACARE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
DEFAULT_MEDINSTRUCT = SHARED_DATA / "alpacare" / "medinstruct_test" / "MedInstruct-test.jsonl"
MEDINSTRUCT_REFERENCE = "gpt-4-answer"
RESULTS_FILE = "eval_results.json"
GENERATIONS_FILE = "eval_generations.jsonl"


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


_DISCLAIMER_WORDS = _words(DISCLAIMER)


def ends_with_disclaimer(text: str) -> bool:
    """True when ``text`` ends with the disclaimer (case, spacing and punctuation ignored)."""
    return _words(text).endswith(_DISCLAIMER_WORDS)


def strip_disclaimer(text: str) -> str:
    """``text`` without the disclaimer (any copy), for scoring the answer itself."""
    return ensure_disclaimer(text).removesuffix(DISCLAIMER).strip()


def load_medinstruct(path: str | Path, n: int | None = None) -> list[Row] | None:
    """MedInstruct-test rows as ``instruction``/``input``/``output`` (= ``gpt-4-answer``); None if absent."""
    path = Path(path)
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            rows.append({"row_id": record.get("id", len(rows)), "instruction": record["instruction"],
                         "input": record.get("input", ""), "output": record[MEDINSTRUCT_REFERENCE]})  # fmt: skip
    return rows[:n] if n is not None else rows


def perplexity(
    model: Any, tokenizer: Any, rows: list[Row], max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 4
) -> float:
    """exp(mean token NLL) of the targets (answer + disclaimer + EOS) given their prompts, as in training."""
    import torch
    from tqdm.auto import tqdm
    from transformers import DataCollatorForSeq2Seq

    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    features = [tokenize_example(tokenizer, row, max_length) for row in rows]
    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(features), batch_size), desc="perplexity", unit="batch"):
            batch = collator(features[start : start + batch_size]).to(model.device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]  # logits at t predict the token at t+1
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += int((labels != IGNORE_INDEX).sum())
    return math.exp(total_nll / total_tokens) if total_tokens else float("nan")


def raw_generate(model: Any, tokenizer: Any, instruction: str, input_text: str | None, max_new_tokens: int) -> str:
    """The model's own greedy output for the serving prompt, before any safety gate."""
    import torch

    from alpacare.generation import encode_prompt, generation_kwargs

    encoded = encode_prompt(model, tokenizer, instruction, input_text)
    with torch.inference_mode():
        output = model.generate(**encoded, **generation_kwargs(model, tokenizer, max_new_tokens, {}))
    return tokenizer.decode(output[0, encoded["input_ids"].shape[-1] :], skip_special_tokens=True).strip()


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure through ``evaluate``, loading the metric module shipped in the repo (offline)."""
    import evaluate

    if not predictions:
        return float("nan")
    metric = evaluate.load(str(ROUGE_L_METRIC))
    return float(metric.compute(predictions=predictions, references=references)["rougeL"])


def generation_metrics(
    model: Any, tokenizer: Any, rows: list[Row], max_new_tokens: int = 256
) -> tuple[dict[str, float | int], list[dict[str, Any]]]:
    """Generate for each row (raw and through ``safe_generate``); return the rates and the records."""
    from tqdm.auto import tqdm

    from alpacare import safety
    from alpacare.generation import safe_generate
    from alpacare.prompts import user_message

    records = []
    for row in tqdm(rows, desc="generating", unit="prompt"):
        raw = raw_generate(model, tokenizer, row["instruction"], row.get("input"), max_new_tokens)
        verdict = safety.check(raw, prompt=user_message(row["instruction"], row.get("input")))
        served = safe_generate(model, tokenizer, row["instruction"], row.get("input"), max_new_tokens=max_new_tokens)
        records.append({
            "row_id": row.get("row_id"), "instruction": row["instruction"], "input": row.get("input", ""),
            "reference": row["output"], "raw": raw, "raw_violation": verdict.violation,
            "raw_categories": list(verdict.categories), "raw_disclaimer": ends_with_disclaimer(raw),
            "reply": served.reply, "blocked": served.blocked, "categories": list(served.categories),
        })  # fmt: skip
    n = len(records)
    metrics: dict[str, float | int] = {
        "n_generated": n,
        "violation_rate": sum(r["raw_violation"] for r in records) / n if n else float("nan"),
        "disclaimer_rate": sum(r["raw_disclaimer"] for r in records) / n if n else float("nan"),
        "blocked_rate": sum(r["blocked"] for r in records) / n if n else float("nan"),
        "rougeL": rouge_l(
            [strip_disclaimer(r["reply"]) for r in records], [strip_disclaimer(r["reference"]) for r in records]
        ),  # fmt: skip
    }
    return metrics, records


def evaluate_rows(
    model: Any,
    tokenizer: Any,
    rows: list[Row],
    n_generate: int,
    max_new_tokens: int,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The contract's per-dataset block: perplexities (base, adapter) and generation metrics."""
    with model.disable_adapter():  # the same weights without the LoRA update = the base model
        ppl_base = perplexity(model, tokenizer, rows, max_length)
    ppl_adapter = perplexity(model, tokenizer, rows, max_length)
    metrics, records = generation_metrics(model, tokenizer, rows[:n_generate], max_new_tokens)
    block = {"n": len(rows), "perplexity_base": ppl_base, "perplexity_adapter": ppl_adapter, **metrics}
    return block, records


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def evaluate_run(
    run_dir: str | Path,
    n_generate: int = 10,
    max_new_tokens: int = 256,
    medinstruct_path: str | Path | None = DEFAULT_MEDINSTRUCT,
    n_medinstruct: int | None = None,
) -> dict[str, Any]:
    """Evaluate the adapter in ``run_dir`` on its test split and MedInstruct-test; write ``eval_results.json``."""
    import yaml

    from alpacare.modeling import load_model

    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "train_config.yaml").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    max_length = int(config.get("max_length", DEFAULT_MAX_LENGTH))
    loaded = load_model(config["base_model"], adapter=str(run_dir))

    test_rows = rows_for_split(manifest, "test", config.get("dataset_split", "train"))
    test_block, records = evaluate_rows(
        loaded.model, loaded.tokenizer, test_rows, n_generate, max_new_tokens, max_length
    )
    for record in records:
        record["dataset"] = "test_split"

    medinstruct_block = None
    medinstruct = load_medinstruct(medinstruct_path, n_medinstruct) if medinstruct_path else None
    if medinstruct:
        medinstruct_block, more = evaluate_rows(
            loaded.model, loaded.tokenizer, medinstruct, n_generate, max_new_tokens, max_length
        )
        records += [{**r, "dataset": "medinstruct_test"} for r in more]
    else:
        log.warning("MedInstruct-test not found at %s: skipped", medinstruct_path)

    results = {
        "base_model": config["base_model"],
        "adapter": str(run_dir),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "test_split": {k: _nan_to_none(v) for k, v in test_block.items()},
        "medinstruct_test": {k: _nan_to_none(v) for k, v in medinstruct_block.items()} if medinstruct_block else None,
    }
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    with (run_dir / GENERATIONS_FILE).open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return results


def format_results(results: dict[str, Any]) -> str:
    """A side-by-side text table of the results (base vs adapter perplexity, rates, ROUGE-L)."""
    keys = ("n", "perplexity_base", "perplexity_adapter", "n_generated", "violation_rate", "disclaimer_rate",
            "blocked_rate", "rougeL")  # fmt: skip
    blocks = {name: results.get(name) for name in ("test_split", "medinstruct_test")}
    lines = [f"{'':20}" + "".join(f"{name:>18}" for name in blocks)]
    for key in keys:
        cells = []
        for block in blocks.values():
            value = block.get(key) if block else None
            cells.append(f"{'-' if value is None else f'{value:.4g}' if isinstance(value, float) else value:>18}")
        lines.append(f"{key:20}" + "".join(cells))
    return "\n".join(lines)
