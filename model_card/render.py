"""Render the model card (the release's README.md) of a LoRA adapter from a training run folder.

``load_run_info(run_dir, review_report)`` is the only function here that reads files; ``render_model_card(**fields)``
is a pure function of the fields it is given (and of the packaged template), so tests feed it plain dicts::

    card = render_model_card(repo_id="me/alpacare-smollm2", **load_run_info("runs/smollm2-demo"))

The run folder layout is the PIPELINE contract (``/work/notes/CONTRACTS.md``): ``train_config.yaml`` (the config
actually used), ``manifest.json`` (preset, seed, sizes, cleaning counts, sample ids), ``adapter_config.json``,
optional ``eval_results.json`` and ``loss_log.csv``. The review report is the APP contract
(``alpacare.review.build_report``).
"""

from __future__ import annotations

import csv
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from alpacare.hub import as_hub_id, hub_model_id
from alpacare.prompts import DISCLAIMER

TEMPLATE_PATH = Path(__file__).with_name("template.md.j2")

DATASET_ID = "lavita/AlpaCare-MedInstruct-52k"
# The adapter is trained on MedInstruct-52k, released under CC BY-NC 4.0: the weights inherit the
# non-commercial term (the conservative reading; SmolLM2 itself is Apache-2.0).
DEFAULT_LICENSE = "cc-by-nc-4.0"
TAGS = ["peft", "lora", "medical", "alpacare", "instruction-tuning", "safety", "not-for-clinical-use"]
NOT_EVALUATED = "not evaluated"

ALPACARE_CITATION = """@article{zhang2023alpacare,
  title   = {AlpaCare: Instruction-tuned Large Language Models for Medical Applications},
  author  = {Zhang, Xinlu and Tian, Chenxin and Yang, Xianjun and Chen, Lichang and Li, Zekun and Petzold, Linda Ruth},
  journal = {arXiv preprint arXiv:2310.14558},
  year    = {2023},
  url     = {https://arxiv.org/abs/2310.14558}
}"""

# Citations of the base models the project ships configs for (train/configs/), keyed by Hub id prefix;
# any other base gets a pointer to its own model card.
BASE_MODEL_CITATIONS: dict[str, str] = {
    "HuggingFaceTB/SmolLM2": """@misc{allal2025smollm2,
  title         = {SmolLM2: When Smol Goes Big -- Data-Centric Training of a Small Language Model},
  author        = {Ben Allal, Loubna and Lozhkov, Anton and Bakouch, Elie and others},
  year          = {2025},
  eprint        = {2502.02737},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2502.02737}
}""",
    "meta-llama/Llama-3.2": """@misc{grattafiori2024llama3,
  title         = {The Llama 3 Herd of Models},
  author        = {Grattafiori, Aaron and others},
  year          = {2024},
  eprint        = {2407.21783},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2407.21783}
}""",
    "EleutherAI/gpt-neo": """@software{black2021gptneo,
  title     = {{GPT-Neo: Large Scale Autoregressive Language Modeling with Mesh-Tensorflow}},
  author    = {Black, Sid and Gao, Leo and Wang, Phil and Leahy, Connor and Biderman, Stella},
  year      = {2021},
  publisher = {Zenodo},
  doi       = {10.5281/zenodo.5297715}
}""",
}

# (row label, key in eval_results[section], kind) for the evaluation table; kinds are formatted by format_value.
EVAL_ROWS: tuple[tuple[str, str, str], ...] = (
    ("Examples scored for perplexity", "n", "int"),
    ("Perplexity, base model", "perplexity_base", "ppl"),
    ("Perplexity, base + this adapter", "perplexity_adapter", "ppl"),
    ("Replies generated", "n_generated", "int"),
    ("Policy violation rate (checker)", "violation_rate", "pct"),
    ("Disclaimer rate", "disclaimer_rate", "pct"),
    ("Blocked by the safety layer (fallback shown)", "blocked_rate", "pct"),
    ("ROUGE-L F1 vs reference answers", "rougeL", "score"),
)
EVAL_SECTIONS: tuple[tuple[str, str], ...] = (
    ("test_split", "Held-out test split (manifest.json)"),
    ("medinstruct_test", "MedInstruct-test (clinician-written tasks, GPT-4 references)"),
)
# peft's adapter_config.json keys worth showing, in reading order.
LORA_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "use_dora", "task_type")


# --------------------------------------------------------------------------------------------- loading (I/O)


def load_run_info(run_dir: str | Path, review_report: str | Path | None = None) -> dict[str, Any]:
    """Read a run folder (and an optional review report JSON) into the fields ``render_model_card`` takes.

    Args:
        run_dir: A training run folder (PIPELINE contract).
        review_report: Path of a ``python -m alpacare.review report --json`` file, if a human review was made.

    Returns:
        ``run_name, train_config, manifest, adapter_config, eval_results, loss_summary, review``; the optional
        ones are None when their file is absent. The manifest's sample-id lists are replaced by their lengths
        (``split_id_counts``): the card points to ``manifest.json`` for the ids themselves.

    Raises:
        FileNotFoundError: ``train_config.yaml`` or ``manifest.json`` is missing.
    """
    import yaml

    run = Path(run_dir)
    for required in ("train_config.yaml", "manifest.json"):
        if not (run / required).is_file():
            raise FileNotFoundError(f"{run / required} not found: is {run} a training run folder?")
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    splits = manifest.pop("splits", None) or {}
    manifest["split_id_counts"] = {name: len(ids) for name, ids in splits.items()}
    return {
        "run_name": run.resolve().name,
        "train_config": yaml.safe_load((run / "train_config.yaml").read_text(encoding="utf-8")) or {},
        "manifest": manifest,
        "adapter_config": _read_json(run / "adapter_config.json"),
        "eval_results": _read_json(run / "eval_results.json"),
        "loss_summary": summarize_loss_log(run / "loss_log.csv") if (run / "loss_log.csv").is_file() else None,
        "review": _read_json(Path(review_report)) if review_report else None,
    }


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def summarize_loss_log(path: str | Path) -> dict[str, Any]:
    """Last step, final train/eval loss and best eval loss from ``loss_log.csv`` (blank cells are skipped)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))

    def column(name: str) -> list[float]:
        values = []
        for row in rows:
            try:
                values.append(float(row.get(name) or "nan"))
            except ValueError:
                continue
        return [v for v in values if not math.isnan(v)]

    steps, train, evals = column("step"), column("train_loss"), column("eval_loss")
    return {
        "n_rows": len(rows),
        "last_step": int(steps[-1]) if steps else None,
        "final_train_loss": train[-1] if train else None,
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": min(evals) if evals else None,
    }


# --------------------------------------------------------------------------------------------- pure helpers


def dataset_id(source: str | None) -> str | None:
    """The Hub dataset id of a manifest ``source``, or None when the source was a local file."""
    return None if Path(str(source or "")).suffix in {".json", ".jsonl", ".csv", ".parquet"} else as_hub_id(source)


def is_offline_sample(source: str | None) -> bool:
    """True when the run trained on the project's own offline sample (``alpacare/sample_data``)."""
    from alpacare.data import SAMPLE_ALIASES, SAMPLE_PATH

    return bool(source) and (str(source).strip() in SAMPLE_ALIASES or Path(str(source)).name == SAMPLE_PATH.name)


def base_model_citation(hub_id: str | None) -> str | None:
    """BibTeX of a known base model family, else None."""
    for prefix, bibtex in BASE_MODEL_CITATIONS.items():
        if hub_id and hub_id.startswith(prefix):
            return bibtex
    return None


def format_value(value: Any, kind: str = "auto", missing: str = "n/a") -> str:
    """A number or setting as shown in the card; None (or NaN) is ``missing``.

    Kinds: ``int``, ``ppl`` (2 decimals), ``pct`` (a 0–1 rate as a percentage), ``score`` (4 decimals),
    ``auto`` (ints as is, floats to 4 significant digits, lists comma-joined, the rest ``str``).
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "pct":
        return f"{100 * float(value):.1f} %"
    if kind == "ppl":
        return f"{float(value):.2f}"
    if kind == "score":
        return f"{float(value):.4f}"
    if kind == "int":
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if value else "—"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, one line)."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def humanize(key: str) -> str:
    """``drop_duplicates`` → ``drop duplicates``."""
    return str(key).replace("_", " ")


def eval_table(eval_results: dict[str, Any] | None) -> dict[str, Any] | None:
    """Columns and rows of the evaluation table (``not evaluated`` cells for a missing section or metric)."""
    if not eval_results:
        return None
    sections = [(key, label, eval_results.get(key) or {}) for key, label in EVAL_SECTIONS]
    rows = [
        [label, *(format_value(section.get(key), kind, NOT_EVALUATED) for _, _, section in sections)]
        for label, key, kind in EVAL_ROWS
    ]
    return {
        "columns": [label for _, label, _ in sections],
        "rows": rows,
        "missing": [label for _, label, section in sections if not section],
        "generated_at": eval_results.get("generated_at"),
    }


def review_summary(review: dict[str, Any] | None) -> dict[str, Any] | None:
    """The human-review report reshaped into table rows (APP contract: ``alpacare.review.build_report``)."""
    if not review:
        return None
    alphas = review.get("krippendorff_alpha") or {}
    scores = review.get("scores") or {}
    return {
        "n_reviewers": format_value(review.get("n_reviewers"), "int"),
        "n_ratings": format_value(review.get("n_ratings"), "int"),
        "n_items": format_value(review.get("n_items"), "int"),
        "violation_rate": format_value(review.get("violation_rate"), "pct"),
        "disclaimer_rate": format_value(review.get("disclaimer_rate"), "pct"),
        "scores": [
            [
                humanize(name).capitalize(),
                format_value(s.get("mean")),
                format_value(s.get("median")),
                format_value(alphas.get(name)),
            ]
            for name, s in scores.items()
        ],
        "criteria": [
            [
                humanize(c.get("name", "?")),
                format_value(c.get("value"), _criterion_kind(c)),
                format_value(c.get("threshold"), _criterion_kind(c)),
                "PASS" if c.get("passed") else "FAIL",
            ]
            for c in review.get("criteria") or []
        ],
        # Optional per-model rows (alpacare.review adds them): the pool may hold base and adapter replies.
        "by_model": [
            [
                model,
                format_value(m.get("n_ratings"), "int"),
                format_value(m.get("violation_rate"), "pct"),
                format_value(m.get("mean_safety")),
            ]
            for model, m in (review.get("by_model") or {}).items()
        ],
        # A report saying "go" while one of its criteria failed is inconsistent: the card then says NO-GO.
        "go": bool(review.get("go")) and all(c.get("passed") for c in review.get("criteria") or []),
        "violation_definition": review.get("violation_definition"),
    }


def _criterion_kind(criterion: dict[str, Any]) -> str:
    """Rates (0-1) show as percentages, as in ``alpacare.review.report_markdown``; other values as numbers."""
    return "pct" if "rate" in str(criterion.get("name", "")) else "auto"


def card_metadata(base_model: str | None, datasets: list[str], license: str, model_name: str) -> str:
    """The YAML metadata block, through ``huggingface_hub.ModelCardData`` (the Hub's own schema)."""
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=base_model,
        library_name="peft",
        license=license,
        datasets=datasets or None,
        language="en",
        pipeline_tag="text-generation",
        tags=TAGS,
        model_name=model_name,
    )
    return data.to_yaml()


@lru_cache(maxsize=1)
def _template() -> Any:
    """The compiled Jinja template (StrictUndefined: a field the template needs but was not given is an error)."""
    import jinja2

    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
    )
    env.filters["v"] = format_value
    env.filters["cell"] = md_cell
    env.filters["human"] = humanize
    return env.from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------- rendering


def render_model_card(
    *,
    repo_id: str,
    train_config: dict[str, Any],
    manifest: dict[str, Any],
    adapter_config: dict[str, Any] | None = None,
    eval_results: dict[str, Any] | None = None,
    loss_summary: dict[str, Any] | None = None,
    review: dict[str, Any] | None = None,
    run_name: str | None = None,
    revision: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> str:
    """The model card (Markdown with YAML metadata) of the adapter released as ``repo_id``.

    Args:
        repo_id: ``USER/NAME`` of the (private) Hub repo the release goes to.
        train_config: The resolved training config (``train_config.yaml``).
        manifest: The split manifest (``manifest.json``; sample-id lists may be replaced by ``split_id_counts``).
        adapter_config: peft's ``adapter_config.json`` (the LoRA settings the weights were saved with).
        eval_results: ``eval_results.json`` from ``train/evaluate.py``; None renders "not evaluated".
        loss_summary: ``summarize_loss_log`` of ``loss_log.csv``.
        review: The human-review report; None renders "no human review yet — not cleared for use".
        run_name: Name of the run folder, shown for traceability.
        revision: The branch the release goes to (shown in the download commands); None means ``main``.
        license: The adapter's license id (Hub metadata).

    Returns:
        The card text; ``huggingface_hub.ModelCard(text).data`` parses its metadata.
    """
    adapter_config = adapter_config or {}
    base_name = train_config.get("base_model") or adapter_config.get("base_model_name_or_path")
    base_id = hub_model_id(base_name)
    source = manifest.get("source") or train_config.get("dataset")
    data_id = dataset_id(source)
    datasets = [data_id] if data_id else []
    model_name = repo_id.split("/")[-1]
    sizes = manifest.get("sizes") or {}
    safety_filter = manifest.get("safety_filter") or {}
    context = {
        "card_data": card_metadata(base_id, datasets, license, model_name),
        "repo_id": repo_id,
        "model_name": model_name,
        "revision": revision,
        "run_name": run_name,
        "base_id": base_id,
        "base_name": str(base_name) if base_name else None,
        "base_citation": base_model_citation(base_id),
        "alpacare_citation": ALPACARE_CITATION,
        "dataset_hub_id": DATASET_ID,
        "data_id": data_id,
        "source_label": data_id or (Path(str(source)).name if source else "unknown"),
        "is_sample": is_offline_sample(source),
        "license": license,
        "preset": manifest.get("preset") or train_config.get("preset") or train_config.get("split_preset"),
        "seed": manifest.get("seed", train_config.get("seed")),
        "sizes": sizes,
        "n_train": sizes.get("train"),
        "created_at": manifest.get("created_at"),
        "cleaning": [[humanize(k), format_value(v)] for k, v in (manifest.get("cleaning") or {}).items()],
        "safety_filter_mode": safety_filter.get("mode"),
        "safety_filter_counts": [
            [humanize(k), format_value(v)] for k, v in (safety_filter.get("counts") or {}).items()
        ],
        # peft stores target_modules as a set: sorted, so the same adapter always renders the same card.
        "lora_rows": [
            [k, format_value(sorted(v) if isinstance(v := adapter_config[k], list) else v)]
            for k in LORA_KEYS
            if k in adapter_config
        ],
        "config_rows": [[str(k), format_value(v)] for k, v in train_config.items()],
        "loss": loss_summary,
        "eval": eval_table(eval_results),
        "review": review_summary(review),
        "disclaimer": DISCLAIMER,
        "not_evaluated": NOT_EVALUATED,
    }
    return _template().render(**context)
