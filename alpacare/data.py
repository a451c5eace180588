"""MedInstruct data: load (Hub id or local file), clean with counts, safety-filter, split, tokenize with masking.

The pipeline (``prepare_splits``) is, in order:

1. ``load_dataset_any``: a Hub id (``lavita/AlpaCare-MedInstruct-52k``) or a local json/jsonl/csv/parquet file,
   both through ``datasets.load_dataset`` (one code path). Every row gets ``row_id`` = its index in the source.
2. ``clean_rows``: the cleaning steps of ``CLEANING_STEPS``, each counted under its reason, in this order:
   drop rows with a missing/empty instruction or output; strip; collapse repeated spaces/newlines; standardize
   curly quotes and apostrophes; remove non-printable characters; drop duplicates on (instruction, input, output);
   drop an instruction or output of at most 5 characters; drop examples over a token limit (2048) once formatted
   with the training template. ``<noinput>`` and blank inputs become "" (no input).
3. ``alpacare.safety.filter_examples`` on the outputs (mode drop | flag | off), counted per category.
4. ``split_rows``: a seeded shuffle cut by a named preset (``SPLIT_PRESETS``).
5. ``build_manifest``: seed, preset, counts and the exact source row ids of every split (``manifest.json``).

``tokenize_example`` turns one row into ``input_ids``/``attention_mask``/``labels`` with the loss on the
response only, using the same prompt text and prompt tokens as serving (``encode_prompt``).
"""

from __future__ import annotations

import json
import logging
import random
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from alpacare.prompts import DISCLAIMER, ensure_disclaimer, format_prompt, format_target, normalize_input, prompt_style

log = logging.getLogger(__name__)

DEFAULT_DATASET = "lavita/AlpaCare-MedInstruct-52k"
SAMPLE_PATH = Path(__file__).parent / "sample_data" / "medinstruct_sample.jsonl"
SAMPLE_ALIASES = {"sample", "offline-sample"}
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
FIELDS = ("instruction", "input", "output")
IGNORE_INDEX = -100  # the label value ``torch.nn.CrossEntropyLoss`` ignores
MIN_CHARS = 5  # "drop instruction or output of <= 5 characters" (issue 2)
DEFAULT_TOKEN_LIMIT = 2048
DEFAULT_MAX_LENGTH = 512

SafetyMode = Literal["drop", "flag", "off"]
Row = dict[str, Any]


@dataclass(frozen=True)
class SplitPreset:
    """Split sizes: exact counts (``fractions=False``) or fractions of the cleaned data (``fractions=True``)."""

    train: float
    validation: float
    test: float
    fractions: bool = False


SPLIT_PRESETS: dict[str, SplitPreset] = {
    "demo": SplitPreset(5000, 250, 250),  # seed 000's demo subset
    "colab": SplitPreset(2000, 100, 100),  # seed 001's Colab-sized subset
    "full": SplitPreset(0.90, 0.05, 0.05, fractions=True),
    # The offline sample has a few dozen rows: 80/10/10 keeps a handful of rows for validation and test.
    "sample": SplitPreset(0.80, 0.10, 0.10, fractions=True),
}
SPLITS = ("train", "validation", "test")


# ----------------------------------------------------------------------------------------------------- loading


def resolve_source(source: str | None) -> str:
    """The dataset to load: the shipped offline sample for "sample", the Hub default for None/""."""
    if not source:
        return DEFAULT_DATASET
    return str(SAMPLE_PATH) if source.strip() in SAMPLE_ALIASES else source


def load_dataset_any(source: str | None = None, split: str = "train") -> Any:
    """A ``datasets.Dataset`` from a Hub id or a local json/jsonl/csv/parquet file, plus a ``row_id`` column.

    ``row_id`` is the row's index in the source split, the id the manifest records.

    Args:
        source: Hub dataset id, path to a local file, or "sample" for the shipped offline sample.
        split: the split of the source to read (local files have only "train").
    """
    from datasets import load_dataset

    source = resolve_source(source)
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_FORMATS:
        if not path.is_file():
            raise FileNotFoundError(f"dataset file not found: {path}")
        dataset = load_dataset(LOCAL_FORMATS[path.suffix.lower()], data_files=str(path), split=split)
    else:
        dataset = load_dataset(source, split=split)
    return dataset.add_column("row_id", list(range(len(dataset))))


def load_rows(source: str | None = None, split: str = "train") -> list[Row]:
    """The source rows as dicts with ``row_id``, ``instruction``, ``input``, ``output`` (missing fields -> None)."""
    dataset = load_dataset_any(source, split)
    return [{"row_id": row["row_id"], **{f: row.get(f) for f in FIELDS}} for row in dataset]


# ---------------------------------------------------------------------------------------------------- cleaning

_CURLY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
                        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"'})  # fmt: skip
_SPACES = re.compile(r"[^\S\n]+")  # runs of whitespace other than newline (incl. tabs, NBSP)
_SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
# Three or more newlines become one blank line: paragraphs and list layout survive, runs of blank lines do not.
_NEWLINES = re.compile(r"\n{3,}")


def strip_text(text: str) -> str:
    """Leading and trailing whitespace removed."""
    return text.strip()


def collapse_whitespace(text: str) -> str:
    """Runs of spaces/tabs -> one space; spaces around newlines dropped; 3+ newlines -> one blank line."""
    return _NEWLINES.sub("\n\n", _SPACE_AROUND_NEWLINE.sub("\n", _SPACES.sub(" ", text)))


def standardize_quotes(text: str) -> str:
    """Curly quotes and apostrophes (and primes) replaced by their ASCII forms."""
    return text.translate(_CURLY)


def remove_nonprintable(text: str) -> str:
    """Control, format (zero-width), private-use and unassigned characters removed; newlines kept."""
    return "".join(ch for ch in text if ch == "\n" or unicodedata.category(ch)[0] != "C")


# The text transforms, in the order of issue 2, each counted as the number of rows it changed.
TEXT_STEPS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("stripped", strip_text),
    ("collapsed_whitespace", collapse_whitespace),
    ("standardized_quotes", standardize_quotes),
    ("removed_nonprintable", remove_nonprintable),
)
CLEANING_STEPS = (
    "missing_or_empty",
    *(name for name, _ in TEXT_STEPS),
    "duplicate",
    "too_short",
    "over_token_limit",
)


def _is_blank(value: Any) -> bool:
    return value is None or not str(value).strip()


def clean_text_fields(row: Row) -> Row:
    """``row`` with every text step applied to instruction/input/output and the input normalized."""
    out = dict(row)
    for field in FIELDS:
        text = str(out.get(field) or "")
        for _, step in TEXT_STEPS:
            text = step(text)
        out[field] = normalize_input(text) if field == "input" else text
    return out


def clean_rows(
    rows: Iterable[Row],
    tokenizer: Any | None = None,
    token_limit: int | None = DEFAULT_TOKEN_LIMIT,
) -> tuple[list[Row], dict[str, int]]:
    """Apply the cleaning steps in order; return the kept rows and a count per reason (``CLEANING_STEPS``).

    Drop steps count dropped rows; text steps count rows they changed. The token-limit step needs the
    tokenizer (it measures the formatted prompt + target, as ``tokenize_example`` builds them) and is skipped,
    with a count of 0, when ``tokenizer`` or ``token_limit`` is None.
    """
    counts = dict.fromkeys(CLEANING_STEPS, 0)
    kept = []
    for row in rows:
        if _is_blank(row.get("instruction")) or _is_blank(row.get("output")):
            counts["missing_or_empty"] += 1
            continue
        kept.append({**row, **{f: str(row.get(f) or "") for f in FIELDS}})

    for name, step in TEXT_STEPS:
        for row in kept:
            changed = False
            for field in FIELDS:
                new = step(row[field])
                changed |= new != row[field]
                row[field] = new
            counts[name] += changed
    for row in kept:
        row["input"] = normalize_input(row["input"])

    seen: set[tuple[str, str, str]] = set()
    unique = []
    for row in kept:
        key = (row["instruction"], row["input"], row["output"])
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        unique.append(row)

    long_enough = [r for r in unique if len(r["instruction"]) > MIN_CHARS and len(r["output"]) > MIN_CHARS]
    counts["too_short"] = len(unique) - len(long_enough)

    if tokenizer is None or token_limit is None:
        return long_enough, counts
    lengths = count_tokens(tokenizer, long_enough)
    within = [row for row, n in zip(long_enough, lengths, strict=True) if n <= token_limit]
    counts["over_token_limit"] = len(long_enough) - len(within)
    return within, counts


# ------------------------------------------------------------------------------------------ tokens and masking


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a formatted prompt, exactly as the model sees it at training and at serving time.

    A chat template already writes every special token (a BOS included, for Llama 3), so nothing is added;
    a plain-text Alpaca prompt gets the tokenizer's own special tokens (a BOS where the model uses one).
    """
    add_special = prompt_style(tokenizer) != "chat"
    return list(tokenizer(prompt, add_special_tokens=add_special)["input_ids"])


def encode_target(tokenizer: Any, target: str) -> list[int]:
    """Token ids of a target text (no special tokens added: the EOS is already in the text)."""
    return list(tokenizer(target, add_special_tokens=False)["input_ids"])


def count_tokens(tokenizer: Any, rows: list[Row]) -> list[int]:
    """Prompt + target length in tokens of each row, as formatted for training (no truncation)."""
    if not rows:
        return []
    add_special = prompt_style(tokenizer) != "chat"
    prompts = [format_prompt(tokenizer, r["instruction"], r.get("input")) for r in rows]
    targets = [format_target(r["output"], tokenizer) for r in rows]
    # Batched calls: the fast tokenizer parallelizes them (52k rows in seconds).
    prompt_ids = tokenizer(prompts, add_special_tokens=add_special)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    return [len(p) + len(t) for p, t in zip(prompt_ids, target_ids, strict=True)]


_SENTENCE_END = re.compile(r"[.!?:;](?=\s)|\n")


def _cut_at_sentence(text: str) -> str:
    """``text`` cut after its last sentence end, if that keeps at least half of it; else at the last space."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text + " ")]
    if ends and ends[-1] >= len(text) // 2:
        return text[: ends[-1]].rstrip()
    return text.rsplit(" ", 1)[0].rstrip() if " " in text.strip() else text


def fit_target(tokenizer: Any, output: str, budget: int) -> list[int]:
    """Target ids of at most ``budget`` tokens that still end with the disclaimer and EOS.

    The answer body is cut at its last complete sentence that fits, then the disclaimer and EOS follow, so a
    truncated example still teaches the model to finish with the disclaimer and stop. Returns [] when not even
    the disclaimer + EOS fit (the prompt itself is too long).
    """
    body = ensure_disclaimer(output).removesuffix(DISCLAIMER).rstrip()
    full = encode_target(tokenizer, format_target(body, tokenizer))
    if len(full) <= budget:
        return full
    tail = len(encode_target(tokenizer, format_target("", tokenizer)))
    body_ids = encode_target(tokenizer, body)
    room = budget - tail - 2  # 2 spare tokens: "\n\n" between body and disclaimer
    while room > 0:
        text = _cut_at_sentence(tokenizer.decode(body_ids[:room], skip_special_tokens=True))
        ids = encode_target(tokenizer, format_target(text, tokenizer))
        if len(ids) <= budget:
            return ids
        room -= max(1, len(ids) - budget)  # retokenizing at the cut can add a token or two: cut more
    ids = encode_target(tokenizer, format_target("", tokenizer))
    return ids if len(ids) <= budget else []


def tokenize_example(tokenizer: Any, example: Row, max_length: int = DEFAULT_MAX_LENGTH) -> dict[str, list[int]]:
    """``input_ids``, ``attention_mask`` and ``labels`` (-100 exactly over the prompt) for one example.

    prompt = ``format_prompt`` (the serving prompt, tokenized by ``encode_prompt``); target = ``format_target``
    (the answer, the disclaimer once, then EOS). Examples longer than ``max_length`` keep their whole prompt and a
    shortened answer that still ends with the disclaimer + EOS (``fit_target``). If the prompt alone leaves no
    room for them, the result is the prompt cut to ``max_length`` with every label -100; training drops such rows.
    """
    prompt_ids = encode_prompt(tokenizer, format_prompt(tokenizer, example["instruction"], example.get("input")))
    target_ids = fit_target(tokenizer, example["output"], max_length - len(prompt_ids))
    if not target_ids:
        prompt_ids = prompt_ids[:max_length]
    input_ids = prompt_ids + target_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
    }


# ------------------------------------------------------------------------------------------------------ splits


def split_sizes(preset: str, n_rows: int) -> dict[str, int]:
    """Rows per split for ``preset`` over ``n_rows`` cleaned rows.

    Count presets asking for more rows than there are are scaled down proportionally, with a warning
    (so ``demo`` runs on the small offline sample); every split keeps at least one row. Fewer than 3 rows,
    or an unknown preset, raise ``ValueError``.
    """
    if preset not in SPLIT_PRESETS:
        raise ValueError(f"unknown split preset {preset!r}; choose one of {sorted(SPLIT_PRESETS)}")
    if n_rows < len(SPLITS):
        raise ValueError(f"need at least {len(SPLITS)} rows after cleaning to split, got {n_rows}")
    spec = SPLIT_PRESETS[preset]
    wanted = {"train": spec.train, "validation": spec.validation, "test": spec.test}
    if not spec.fractions:
        asked = sum(wanted.values())
        if asked <= n_rows:
            return {k: int(v) for k, v in wanted.items()}
        log.warning(
            "Preset %r asks for %d rows (%s) but only %d remain after cleaning: scaling every split by %.3f.",
            preset, asked, "/".join(str(int(v)) for v in wanted.values()), n_rows, n_rows / asked,
        )  # fmt: skip
        wanted = {k: v / asked for k, v in wanted.items()}
    validation = max(1, round(wanted["validation"] * n_rows))
    test = max(1, round(wanted["test"] * n_rows))
    train = min(n_rows - validation - test, round(wanted["train"] * n_rows))
    return {"train": train, "validation": validation, "test": test}


def split_rows(rows: list[Row], preset: str, seed: int = 42) -> dict[str, list[Row]]:
    """Seeded shuffle, then consecutive slices of ``split_sizes``: train, validation, test."""
    sizes = split_sizes(preset, len(rows))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)  # stdlib Mersenne Twister: same order for a seed on every platform
    splits, start = {}, 0
    for name in SPLITS:
        splits[name] = [rows[i] for i in order[start : start + sizes[name]]]
        start += sizes[name]
    return splits


# ---------------------------------------------------------------------------------------------------- pipeline


@dataclass
class PreparedData:
    """The splits (rows with ``row_id``) and the manifest describing how they were made."""

    splits: dict[str, list[Row]]
    manifest: dict[str, Any]


def safety_filter(rows: list[Row], mode: SafetyMode) -> tuple[list[Row], dict[str, int]]:
    """``alpacare.safety.filter_examples`` on the outputs (the training targets); ``off`` keeps every row."""
    if mode == "off":
        return rows, {}
    from alpacare import safety

    return safety.filter_examples(rows, mode=mode, field="output")


def build_manifest(
    source: str,
    preset: str,
    seed: int,
    cleaning: dict[str, int],
    safety_mode: SafetyMode,
    safety_counts: dict[str, int],
    splits: dict[str, list[Row]],
) -> dict[str, Any]:
    """The manifest of the run-folder contract: enough to reproduce and audit every split."""
    return {
        "source": source,
        "preset": preset,
        "seed": seed,
        "sizes": {name: len(splits[name]) for name in SPLITS},
        "cleaning": dict(cleaning),
        "safety_filter": {"mode": safety_mode, "counts": dict(safety_counts)},
        "splits": {name: [row["row_id"] for row in splits[name]] for name in SPLITS},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def prepare_splits(
    source: str | None = None,
    preset: str = "demo",
    seed: int = 42,
    tokenizer: Any | None = None,
    token_limit: int | None = DEFAULT_TOKEN_LIMIT,
    safety_mode: SafetyMode = "drop",
    source_split: str = "train",
) -> PreparedData:
    """Load, clean, safety-filter and split a dataset; return the splits and their manifest."""
    source = source or DEFAULT_DATASET  # kept as given ("sample", a Hub id, a path): resolved when loading
    rows, cleaning = clean_rows(load_rows(source, source_split), tokenizer, token_limit)
    rows, safety_counts = safety_filter(rows, safety_mode)
    splits = split_rows(rows, preset, seed)
    log.info("Data %s: %s after cleaning %s", source, {k: len(v) for k, v in splits.items()}, cleaning)
    manifest = build_manifest(source, preset, seed, cleaning, safety_mode, safety_counts, splits)
    return PreparedData(splits=splits, manifest=manifest)


def rows_for_split(manifest: dict[str, Any], split: str, source_split: str = "train") -> list[Row]:
    """The cleaned rows of one split of a manifest, reloaded from its source by row id (in manifest order)."""
    by_id = {row["row_id"]: row for row in load_rows(manifest["source"], source_split)}
    return [clean_text_fields(by_id[row_id]) for row_id in manifest["splits"][split]]


def write_manifest(manifest: dict[str, Any], path: str | Path) -> Path:
    """Write ``manifest.json`` (indented, UTF-8) and return its path."""
    path = Path(path)
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def split_prompts(manifest: dict[str, Any], split: str = "test") -> list[dict[str, str]]:
    """``{"id", "prompt"[, "input"]}`` lines for ``python -m alpacare.generate`` from one split of a manifest."""
    lines = []
    for row in rows_for_split(manifest, split):
        line = {"id": str(row["row_id"]), "prompt": row["instruction"]}
        input_text = normalize_input(row.get("input"))
        if input_text:
            line["input"] = input_text
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> None:
    """``python -m alpacare.data prompts --run_dir RUN [--split test] --output OUT.jsonl``: a split's prompts."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["prompts"])
    parser.add_argument("--run_dir", required=True, help="run folder holding manifest.json")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    manifest = json.loads((Path(args.run_dir) / "manifest.json").read_text(encoding="utf-8"))
    lines = split_prompts(manifest, args.split)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    print(f"{len(lines)} {args.split} prompts -> {args.output}")


if __name__ == "__main__":
    main()
