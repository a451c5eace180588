"""alpacare.data: loading (local formats, Hub path), each cleaning rule, splits, manifest, the offline sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpacare import data
from alpacare.data import (
    CLEANING_STEPS,
    SAMPLE_PATH,
    SPLITS,
    clean_rows,
    prepare_splits,
    rows_for_split,
    split_rows,
    split_sizes,
)
from alpacare.prompts import DISCLAIMER


def row(
    instruction: str = "Explain what asthma is.",
    input_text: str = "",
    output: str = "Asthma is a long-term lung condition.",
    row_id: int = 0,
) -> dict:  # noqa: E501
    return {"row_id": row_id, "instruction": instruction, "input": input_text, "output": output}


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write rows in the format the suffix says (json, jsonl, csv, parquet)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


SOURCE_ROWS = [
    {"instruction": f"Explain topic number {i}.", "input": "<noinput>", "output": f"Topic {i} is explained here."}
    for i in range(12)
]


class TestLoading:
    @pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
    def test_local_formats_give_the_same_rows_with_row_ids(self, tmp_path, suffix):
        path = write_rows(tmp_path / f"data{suffix}", SOURCE_ROWS)
        rows = data.load_rows(str(path))
        assert [r["row_id"] for r in rows] == list(range(len(SOURCE_ROWS)))
        assert [r["instruction"] for r in rows] == [r["instruction"] for r in SOURCE_ROWS]
        assert rows[3]["output"] == "Topic 3 is explained here."

    def test_missing_input_column_reads_as_none(self, tmp_path):
        path = write_rows(tmp_path / "d.jsonl", [{"instruction": "Explain sleep.", "output": "Sleep restores."}])
        assert data.load_rows(str(path))[0]["input"] is None

    def test_hub_id_goes_through_datasets_load_dataset(self, monkeypatch):
        import datasets

        calls = []

        def fake_load_dataset(path, *args, **kwargs):
            calls.append((path, kwargs.get("split")))
            return datasets.Dataset.from_list(SOURCE_ROWS[:3])

        monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
        rows = data.load_rows(None)  # default: the Hub dataset
        assert calls == [(data.DEFAULT_DATASET, "train")]
        assert [r["row_id"] for r in rows] == [0, 1, 2]

    def test_missing_local_file_is_a_clear_error(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="not found"):
            data.load_dataset_any(str(tmp_path / "nope.jsonl"))

    def test_sample_alias_loads_the_shipped_sample(self):
        assert len(data.load_rows("sample")) == len(SAMPLE_PATH.read_text().splitlines())


class TestCleaning:
    def test_counts_every_reason_in_order(self):
        _, counts = clean_rows([row()])
        assert list(counts) == list(CLEANING_STEPS)
        assert CLEANING_STEPS[0] == "missing_or_empty" and CLEANING_STEPS[-1] == "over_token_limit"

    @pytest.mark.parametrize(
        "bad",
        [
            {"instruction": None},
            {"instruction": "   "},
            {"output": None},
            {"output": ""},
            {"output": "\n\t"},
        ],
    )
    def test_missing_or_empty_instruction_or_output_is_dropped(self, bad):
        kept, counts = clean_rows([row(row_id=0), {**row(row_id=1), **bad}])
        assert [r["row_id"] for r in kept] == [0]
        assert counts["missing_or_empty"] == 1

    @pytest.mark.parametrize(
        ("step", "raw", "clean"),
        [
            ("stripped", "  Asthma narrows the airways.  \n", "Asthma narrows the airways."),
            ("collapsed_whitespace", "Asthma  narrows\tthe\u00a0airways.", "Asthma narrows the airways."),
            ("collapsed_whitespace", "First paragraph.\n\n\n\nSecond one.", "First paragraph.\n\nSecond one."),
            ("collapsed_whitespace", "Line one.  \n  Line two.", "Line one.\nLine two."),
            ("standardized_quotes", "\u201cAsthma\u201d isn\u2019t \u2018rare\u2019.", "\"Asthma\" isn't 'rare'."),
            ("removed_nonprintable", "Asthma\u200b narrows\x07 the airways.\x00", "Asthma narrows the airways."),
        ],
    )
    def test_text_step(self, step, raw, clean):
        kept, counts = clean_rows([row(output=raw)])
        assert kept[0]["output"] == clean
        assert counts[step] == 1

    def test_text_steps_apply_to_instruction_and_input(self):
        kept, _ = clean_rows([row(instruction="  \u201cExplain\u201d   asthma. ", input_text=" Some\u2019  text ")])
        assert kept[0]["instruction"] == '"Explain" asthma.'
        assert kept[0]["input"] == "Some' text"

    def test_text_step_counts_rows_not_fields(self):
        _, counts = clean_rows([row(instruction=" Explain asthma. ", output=" Asthma narrows airways. ")])
        assert counts["stripped"] == 1

    @pytest.mark.parametrize("no_input", ["<noinput>", "", "  ", "<NOINPUT>", None])
    def test_no_input_markers_become_empty(self, no_input):
        kept, _ = clean_rows([row(input_text=no_input)])
        assert kept[0]["input"] == ""

    def test_duplicates_after_cleaning_are_dropped_keeping_the_first(self):
        rows = [
            row(row_id=0),
            row(row_id=1, output=" Asthma is a  long-term lung condition."),
            row(row_id=2, input_text="x y z"),
        ]
        kept, counts = clean_rows(rows)
        assert [r["row_id"] for r in kept] == [0, 2]  # the input is part of the key
        assert counts["duplicate"] == 1

    @pytest.mark.parametrize(
        ("instruction", "output", "kept"),
        [
            ("Why?", "Asthma narrows the airways.", False),
            ("12345", "Asthma narrows the airways.", False),  # exactly 5 characters: dropped (<= 5)
            ("123456", "Asthma narrows the airways.", True),
            ("Explain asthma.", "Yes.", False),
            ("Explain asthma.", "  Fine.  ", False),  # 5 characters once stripped
            ("Explain asthma.", "Fine!!", True),
        ],
    )
    def test_too_short_instruction_or_output(self, instruction, output, kept):
        rows, counts = clean_rows([row(instruction=instruction, output=output)])
        assert bool(rows) == kept
        assert counts["too_short"] == (0 if kept else 1)

    def test_token_limit_drops_long_examples_after_formatting(self, tokenizer):
        short = row(row_id=0)
        long = row(row_id=1, output="Asthma affects the airways. " * 100)
        lengths = data.count_tokens(tokenizer, [short, long])
        limit = (lengths[0] + lengths[1]) // 2
        kept, counts = clean_rows([short, long], tokenizer=tokenizer, token_limit=limit)
        assert [r["row_id"] for r in kept] == [0]
        assert counts["over_token_limit"] == 1
        # The count covers the whole training example: prompt (with the safety prefix) + answer + disclaimer + EOS.
        assert lengths[0] == len(data.tokenize_example(tokenizer, short, max_length=10_000)["input_ids"])

    def test_token_limit_skipped_without_tokenizer(self):
        kept, counts = clean_rows([row(output="word " * 5000)], tokenizer=None)
        assert len(kept) == 1 and counts["over_token_limit"] == 0

    def test_clean_text_fields_matches_clean_rows(self):
        raw = row(
            instruction=" \u201cExplain\u201d  asthma. ",
            input_text="<noinput>",
            output="A\u200bsthma  is\n\n\n\nchronic.",
        )
        kept, _ = clean_rows([raw])
        assert data.clean_text_fields(raw) == kept[0]


class TestSplits:
    @pytest.mark.parametrize(
        ("preset", "n_rows", "sizes"),
        [
            ("demo", 6000, (5000, 250, 250)),
            ("colab", 2200, (2000, 100, 100)),
            ("colab", 50_000, (2000, 100, 100)),
            ("full", 1000, (900, 50, 50)),
            ("full", 52_000, (46_800, 2600, 2600)),
            ("sample", 76, (60, 8, 8)),
        ],
    )
    def test_preset_sizes(self, preset, n_rows, sizes):
        assert tuple(split_sizes(preset, n_rows).values()) == sizes

    @pytest.mark.parametrize(("preset", "n_rows"), [("demo", 76), ("demo", 3), ("colab", 500), ("full", 3)])
    def test_small_data_is_scaled_with_a_warning_and_every_split_non_empty(self, preset, n_rows, caplog):
        sizes = split_sizes(preset, n_rows)
        assert all(n >= 1 for n in sizes.values())
        assert sum(sizes.values()) <= n_rows
        if preset != "full":
            assert "scaling every split" in caplog.text

    def test_demo_scaled_keeps_the_preset_proportions(self):
        sizes = split_sizes("demo", 1100)  # asks 5500: scaled by 0.2
        assert sizes == {"train": 1000, "validation": 50, "test": 50}

    @pytest.mark.parametrize(("preset", "n_rows", "match"), [("demo", 2, "at least 3"), ("nope", 100, "unknown")])
    def test_errors(self, preset, n_rows, match):
        with pytest.raises(ValueError, match=match):
            split_sizes(preset, n_rows)

    def test_splits_are_disjoint_seeded_and_deterministic(self):
        rows = [row(row_id=i, output=f"Answer number {i}.") for i in range(100)]
        first = split_rows(rows, "full", seed=42)
        again = split_rows(rows, "full", seed=42)
        other = split_rows(rows, "full", seed=7)
        ids = {name: [r["row_id"] for r in split] for name, split in first.items()}
        assert ids == {name: [r["row_id"] for r in split] for name, split in again.items()}
        assert ids != {name: [r["row_id"] for r in split] for name, split in other.items()}
        all_ids = ids["train"] + ids["validation"] + ids["test"]
        assert len(set(all_ids)) == len(all_ids) == 100
        assert ids["train"] != sorted(ids["train"])  # shuffled, not the source order


@pytest.fixture()
def fake_safety(monkeypatch):
    """``alpacare.safety.filter_examples`` replaced: outputs mentioning "mg" violate (dosage)."""
    from alpacare import safety

    def filter_examples(rows, mode="drop", field="output"):
        rows = list(rows)
        bad = [("mg" in r[field].split()) for r in rows]
        counts = {
            "diagnosis": 0,
            "prescription": 0,
            "dosage": sum(bad),
            "decision_rule": 0,
            "examples_flagged": sum(bad),
        }  # noqa: E501
        if mode == "flag":
            return [
                r | {"safety_violation": b, "safety_categories": ["dosage"] * b}
                for r, b in zip(rows, bad, strict=True)
            ], counts  # noqa: E501
        return [r for r, b in zip(rows, bad, strict=True) if not b], counts

    monkeypatch.setattr(safety, "filter_examples", filter_examples)


class TestManifest:
    @pytest.fixture()
    def source(self, tmp_path) -> Path:
        rows = [
            {
                "instruction": f"Explain topic {i} please.",
                "input": "<noinput>",
                "output": f"Topic {i} is about health.",
            }
            for i in range(40)
        ]  # noqa: E501
        rows[5]["output"] = ""  # missing_or_empty
        rows[6] = dict(rows[7])  # duplicate of row 7
        rows[8]["output"] = "Take 500 mg daily."  # dropped by the (fake) safety filter
        rows[9]["instruction"] = "  \u201cExplain\u201d   topic 9. "
        return write_rows(tmp_path / "src.jsonl", rows)

    def test_manifest_has_the_contract_keys_counts_and_exact_row_ids(self, source, fake_safety, tokenizer):
        prepared = prepare_splits(str(source), "full", seed=42, tokenizer=tokenizer, safety_mode="drop")
        manifest = prepared.manifest
        assert set(manifest) == {
            "source",
            "preset",
            "seed",
            "sizes",
            "cleaning",
            "safety_filter",
            "splits",
            "created_at",
        }  # noqa: E501
        assert (manifest["source"], manifest["preset"], manifest["seed"]) == (str(source), "full", 42)
        assert manifest["cleaning"]["missing_or_empty"] == 1
        assert manifest["cleaning"]["duplicate"] == 1
        assert manifest["cleaning"]["stripped"] == manifest["cleaning"]["standardized_quotes"] == 1
        assert manifest["safety_filter"] == {
            "mode": "drop",
            "counts": {"diagnosis": 0, "prescription": 0, "dosage": 1, "decision_rule": 0, "examples_flagged": 1},
        }  # noqa: E501
        for name in SPLITS:
            assert manifest["splits"][name] == [r["row_id"] for r in prepared.splits[name]]
            assert manifest["sizes"][name] == len(prepared.splits[name])
        ids = sum(manifest["splits"].values(), [])
        assert sorted(ids) == sorted(set(range(40)) - {5, 7, 8})  # row 6 copies row 7: the first (6) is kept
        json.dumps(manifest)  # serializable as is

    def test_flag_mode_keeps_rows_and_marks_them(self, source, fake_safety):
        prepared = prepare_splits(str(source), "full", safety_mode="flag")
        rows = sum(prepared.splits.values(), [])
        assert any(r["row_id"] == 8 and r["safety_violation"] for r in rows)
        assert prepared.manifest["safety_filter"]["mode"] == "flag"

    def test_off_mode_skips_the_checker(self, source, monkeypatch):
        from alpacare import safety

        monkeypatch.setattr(safety, "filter_examples", lambda *a, **k: pytest.fail("safety filter called"))
        prepared = prepare_splits(str(source), "full", safety_mode="off")
        assert prepared.manifest["safety_filter"] == {"mode": "off", "counts": {}}

    def test_rows_for_split_rebuilds_the_cleaned_rows_from_the_manifest(self, source, fake_safety, tmp_path):
        prepared = prepare_splits(str(source), "full", seed=3, safety_mode="drop")
        path = data.write_manifest(prepared.manifest, tmp_path / "manifest.json")
        manifest = json.loads(path.read_text())
        for name in SPLITS:
            assert rows_for_split(manifest, name) == prepared.splits[name]

    def test_same_seed_same_manifest_splits(self, source, fake_safety):
        a = prepare_splits(str(source), "full", seed=42).manifest
        b = prepare_splits(str(source), "full", seed=42).manifest
        assert a["splits"] == b["splits"]


class TestSample:
    @pytest.fixture(scope="class")
    def sample(self) -> list[dict]:
        return [json.loads(line) for line in SAMPLE_PATH.read_text(encoding="utf-8").splitlines()]

    def test_schema_size_and_disclaimer(self, sample):
        assert len(sample) >= 60
        for example in sample:
            assert set(example) == {"instruction", "input", "output"}
            assert example["output"].endswith("\n\n" + DISCLAIMER)
        assert sum(e["input"] == "<noinput>" for e in sample) > len(sample) / 2
        assert sum(e["input"] != "<noinput>" for e in sample) >= 15  # summarize/classify/rewrite tasks with input

    def test_sample_is_clean_already(self, sample, tokenizer):
        rows = [{"row_id": i, **e} for i, e in enumerate(sample)]
        kept, counts = clean_rows(rows, tokenizer=tokenizer)
        assert len(kept) == len(sample)
        assert not any(counts[k] for k in ("missing_or_empty", "duplicate", "too_short", "over_token_limit"))

    def test_the_policy_checker_flags_no_sample_answer(self, sample):
        from alpacare import safety

        flagged = [e["instruction"] for e in sample if safety.check(e["output"], prompt=e["instruction"]).violation]
        assert flagged == []

    @pytest.mark.parametrize("preset", ["sample", "demo", "colab", "full"])
    def test_every_preset_gives_non_empty_splits_on_the_sample(self, preset):
        prepared = prepare_splits("sample", preset, safety_mode="off")
        assert all(prepared.manifest["sizes"][name] > 0 for name in SPLITS)
        assert prepared.manifest["source"] == "sample"


def test_split_prompts_feed_the_generate_cli():
    """The review pool's prompts: one line per test row, with the row id and the input only when there is one."""
    from alpacare.data import load_rows, split_prompts, split_rows

    rows = load_rows("sample")
    splits = split_rows(rows, "sample", seed=42)
    manifest = {"source": "sample", "splits": {name: [r["row_id"] for r in part] for name, part in splits.items()}}
    lines = split_prompts(manifest, "test")
    assert [line["id"] for line in lines] == [str(r["row_id"]) for r in splits["test"]]
    assert all(line["prompt"] and line.get("input", "x") not in ("", "<noinput>") for line in lines)
