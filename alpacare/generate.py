"""Batch generation with the safety layer: one checked reply per prompt of a JSONL file.

    HF_HUB_OFFLINE=1 python -m alpacare.generate --input prompts.jsonl --output replies.jsonl \\
        [--base MODEL] [--adapter PATH_OR_REPO] [--revision R] [--max-new-tokens 256] [--resume]

Input lines: ``{"id": ..., "prompt": "...", "input": "..." (optional)}``. Output lines:
``{"id", "prompt", "reply", "blocked", "categories", "model"}``, written and flushed one at a time, so an
interrupted run loses nothing already written and ``--resume`` continues where it stopped. Bad lines (not JSON,
missing or empty fields, binary, too long) are reported with their line number and skipped; the valid lines are
still processed and the exit status is 1. Decoding is greedy (repeatable) unless ``--do-sample`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# A prompt longer than this is almost surely a mistake (a whole file pasted) and would not fit small models'
# contexts anyway (SmolLM2: 8192 tokens, ~4 characters per token).
MAX_PROMPT_CHARS = 20_000


@dataclass
class Record:
    """One valid input line."""

    line: int
    id: Any
    prompt: str
    input: str | None = None


class BadLine(ValueError):
    """An input line that cannot be processed; the message says why."""


def _has_binary(text: str) -> bool:
    """True when the text holds control characters other than tab/newline/carriage return (binary junk)."""
    return any(ord(c) < 32 and c not in "\t\n\r" or c == "\ufffd" for c in text)


def _text_field(row: dict, name: str, required: bool) -> str | None:
    """A string field of an input row, validated."""
    value = row.get(name)
    if value is None:
        if required:
            raise BadLine(f'missing field "{name}"')
        return None
    if not isinstance(value, str):
        raise BadLine(f'field "{name}" must be a string, not {type(value).__name__}')
    if required and not value.strip():
        raise BadLine(f'field "{name}" is empty')
    if len(value) > MAX_PROMPT_CHARS:
        raise BadLine(f'field "{name}" is {len(value):,} characters long (limit {MAX_PROMPT_CHARS:,})')
    if _has_binary(value):
        raise BadLine(f'field "{name}" contains binary/control characters')
    return value


def parse_line(raw: bytes) -> dict | None:
    """One input line as a row with ``id``, ``prompt`` and optional ``input``; None for a blank line.

    Raises:
        BadLine: The line is not UTF-8 JSON, not an object, or has a missing/empty/invalid field.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadLine(f"not UTF-8 text (binary data at byte {error.start})") from None
    if not text.strip():
        return None
    if _has_binary(text.strip()):
        raise BadLine("contains binary/control characters")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadLine(f"not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(row, dict):
        raise BadLine(f"expected a JSON object, got {type(row).__name__}")
    if "id" not in row or row["id"] is None or (isinstance(row["id"], str) and not row["id"].strip()):
        raise BadLine('missing field "id"')
    if not isinstance(row["id"], str | int):
        raise BadLine(f'field "id" must be a string or an integer, not {type(row["id"]).__name__}')
    return {"id": row["id"], "prompt": _text_field(row, "prompt", True), "input": _text_field(row, "input", False)}


def read_records(path: Path) -> tuple[list[Record], list[str]]:
    """Valid records of an input JSONL file, and one error message per bad line (naming the line)."""
    records: list[Record] = []
    errors: list[str] = []
    seen: dict[Any, int] = {}
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                row = parse_line(raw)
            except BadLine as error:
                errors.append(f"{path}:{number}: {error}; line skipped")
                continue
            if row is None:
                continue
            if row["id"] in seen:
                errors.append(f"{path}:{number}: duplicate id {row['id']!r} (first on line {seen[row['id']]})")
                continue
            seen[row["id"]] = number
            records.append(Record(number, row["id"], row["prompt"], row["input"]))
    return records, errors


def done_ids(path: Path) -> set[Any]:
    """Ids already in an output file (for ``--resume``); a last line cut by a crash is truncated away."""
    if not path.exists():
        return set()
    ids: set[Any] = set()
    good_end = 0
    with path.open("rb") as f:
        for raw in f:
            try:
                ids.add(json.loads(raw)["id"])
            except (ValueError, KeyError, TypeError):
                break  # only the last line can be partial: lines are written whole and flushed one by one
            good_end = f.tell()
    if good_end < path.stat().st_size:
        log.warning("%s: dropping a partial last line (interrupted run)", path)
        with path.open("rb+") as f:
            f.truncate(good_end)
    return ids


def write_line(f: Any, row: dict) -> None:
    """Append one JSON line and push it to disk, so an interruption never loses a finished reply."""
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """``generate`` keyword arguments from the command line (greedy unless ``--do-sample``)."""
    options: dict[str, Any] = {}
    if args.do_sample:
        options.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
    if args.repetition_penalty is not None:
        options["repetition_penalty"] = args.repetition_penalty
    return options


def generate_all(
    loaded: Any, records: Iterable[Record], out: Any, max_new_tokens: int, options: dict[str, Any], total: int
) -> int:
    """Generate, check and write one reply per record; returns how many lines failed at generation time."""
    from tqdm.auto import tqdm

    from alpacare.generation import safe_generate

    failures = 0
    for record in tqdm(records, total=total, desc="generate", unit="prompt", file=sys.stderr):
        try:
            result = safe_generate(
                loaded.model, loaded.tokenizer, record.prompt, record.input, max_new_tokens=max_new_tokens, **options
            )
        except ValueError as error:  # e.g. a prompt that does not fit the model's context
            log.error("line %d (id %r): %s; line skipped", record.line, record.id, error)
            failures += 1
            continue
        row = {"id": record.id, "prompt": record.prompt}
        if record.input:
            row["input"] = record.input
        row.update(reply=result.reply, blocked=result.blocked, categories=result.categories, model=loaded.label)
        write_line(out, row)
    return failures


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m alpacare.generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, type=Path, help='JSONL with {"id", "prompt", optional "input"}')
    parser.add_argument("--output", required=True, type=Path, help="JSONL of checked replies (one line per id)")
    parser.add_argument("--base", default=None, help="base model: Hub id or folder (default: the embedded SmolLM2)")
    parser.add_argument("--adapter", default=None, help="LoRA adapter: local folder or Hub repo id")
    parser.add_argument("--revision", default=None, help="adapter revision (branch, tag or commit) on the Hub")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="length cap of each reply (default 256)")
    parser.add_argument("--resume", action="store_true", help="keep OUTPUT's lines and skip their ids")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (with --do-sample)")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (with --do-sample)")
    parser.add_argument("--repetition-penalty", type=float, default=None, help="e.g. 1.1 against loops")
    parser.add_argument("--seed", type=int, default=0, help="random seed (matters with --do-sample)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 some lines bad, 2 unusable arguments or model)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    if args.max_new_tokens < 1:
        log.error("--max-new-tokens must be at least 1")
        return 2
    if not args.input.is_file():
        log.error("input file not found: %s", args.input)
        return 2
    records, errors = read_records(args.input)
    for message in errors:
        log.error("%s", message)
    skip = done_ids(args.output) if args.resume else set()
    todo = [r for r in records if r.id not in skip]
    log.info(
        "%d valid lines, %d bad, %d already done, %d to generate", len(records), len(errors), len(skip), len(todo)
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not todo:
        args.output.touch()
        return 1 if errors else 0

    from transformers import set_seed

    from alpacare.modeling import load_model

    try:
        loaded = load_model(args.base, adapter=args.adapter, revision=args.revision)
    except Exception as error:  # noqa: BLE001 - any loading failure is reported as a usage error
        log.error("could not load the model (base %s, adapter %s): %s", args.base or "embedded", args.adapter, error)
        return 2
    set_seed(args.seed)
    with args.output.open("a" if args.resume else "w", encoding="utf-8") as out:
        failures = generate_all(loaded, todo, out, args.max_new_tokens, generation_options(args), len(todo))
    log.info("wrote %d replies to %s (%s)", len(todo) - failures, args.output, loaded.label)
    return 1 if errors or failures else 0


if __name__ == "__main__":
    sys.exit(main())
