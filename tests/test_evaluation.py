"""alpacare.evaluation: perplexity, the generation rates, offline ROUGE-L, MedInstruct-test loading, the table."""

from __future__ import annotations

import json
import math

import pytest

from alpacare import evaluation
from alpacare.data import tokenize_example
from alpacare.prompts import DISCLAIMER

ROW = {"instruction": "Explain what the kidneys do.", "input": "", "output": "The kidneys filter the blood."}


class TestDisclaimer:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (f"Answer.\n\n{DISCLAIMER}", True),
            (f"Answer. {DISCLAIMER.upper()}  ", True),
            (f"Answer.\n\n{DISCLAIMER[:-1]}", True),  # final full stop missing: still the disclaimer
            (f"{DISCLAIMER} And more text after it.", False),
            ("Answer without it.", False),
        ],
    )
    def test_ends_with_disclaimer(self, text, expected):
        assert evaluation.ends_with_disclaimer(text) is expected

    def test_strip_disclaimer(self):
        assert evaluation.strip_disclaimer(f"Answer.\n\n{DISCLAIMER}") == "Answer."
        assert evaluation.strip_disclaimer("Answer.") == "Answer."


def test_rouge_l_through_evaluate_offline():
    # conftest sets HF_HUB_OFFLINE=1: evaluate.load("rouge") would fail here; the shipped module loads locally.
    score = evaluation.rouge_l(["the cat sat on the mat", "hello"], ["the cat was on the mat", "bye"])
    assert score == pytest.approx((5 / 6 + 0) / 2)


def test_perplexity_is_exp_of_the_training_loss(tiny_model, tokenizer):
    import torch

    features = tokenize_example(tokenizer, ROW)
    with torch.inference_mode():
        loss = tiny_model(**{k: torch.tensor([v]) for k, v in features.items()}).loss
    assert evaluation.perplexity(tiny_model, tokenizer, [ROW]) == pytest.approx(math.exp(float(loss)), rel=1e-4)


def test_perplexity_is_independent_of_batching_and_padding(tiny_model, tokenizer):
    rows = [ROW, {**ROW, "output": "The kidneys filter the blood and make urine every day of the year."}]
    one_by_one = evaluation.perplexity(tiny_model, tokenizer, rows, batch_size=1)
    assert evaluation.perplexity(tiny_model, tokenizer, rows, batch_size=2) == pytest.approx(one_by_one, rel=1e-4)


def test_generation_metrics_count_raw_violations_disclaimers_and_blocks(monkeypatch):
    from alpacare import generation, safety

    raws = iter(["Take 500 mg daily.", f"Kidneys filter blood.\n\n{DISCLAIMER}", "Kidneys filter blood."])
    monkeypatch.setattr(evaluation, "raw_generate", lambda *a, **k: next(raws))
    monkeypatch.setattr(
        safety, "check", lambda text, prompt=None: safety.Verdict("mg" in text, ["dosage"] * ("mg" in text), 1.0, [])
    )
    replies = iter([
        generation.SafeReply("Fallback text.\n\n" + DISCLAIMER, blocked=True, categories=["dosage"]),
        generation.SafeReply("The kidneys filter the blood.\n\n" + DISCLAIMER, blocked=False),
        generation.SafeReply("Kidneys filter blood.\n\n" + DISCLAIMER, blocked=False),
    ])  # fmt: skip
    monkeypatch.setattr(generation, "safe_generate", lambda *a, **k: next(replies))
    metrics, records = evaluation.generation_metrics(None, None, [ROW] * 3, max_new_tokens=8)
    assert metrics["n_generated"] == 3
    assert metrics["violation_rate"] == pytest.approx(1 / 3)  # judged on the raw output, before the fallback
    assert metrics["disclaimer_rate"] == pytest.approx(1 / 3)  # the model wrote it itself once
    assert metrics["blocked_rate"] == pytest.approx(1 / 3)
    expected_rouge = evaluation.rouge_l(
        ["Fallback text.", "The kidneys filter the blood.", "Kidneys filter blood."], [ROW["output"]] * 3
    )
    assert metrics["rougeL"] == pytest.approx(expected_rouge)
    assert [r["raw_violation"] for r in records] == [True, False, False]


class TestMedInstruct:
    def test_reads_instruction_and_gpt4_reference(self, tmp_path):
        path = tmp_path / "mi.jsonl"
        lines = [{"id": i, "instruction": f"Q{i}?", "difficulty": "1", "gpt-4-answer": f"A{i}."} for i in range(5)]
        path.write_text("\n".join(json.dumps(line) for line in lines))
        rows = evaluation.load_medinstruct(path, n=3)
        assert rows == [{"row_id": i, "instruction": f"Q{i}?", "input": "", "output": f"A{i}."} for i in range(3)]

    def test_absent_file_is_none(self, tmp_path):
        assert evaluation.load_medinstruct(tmp_path / "missing.jsonl") is None

    def test_real_file(self, shared_data):
        rows = evaluation.load_medinstruct(shared_data / "alpacare/medinstruct_test/MedInstruct-test.jsonl")
        assert len(rows) == 216 and all(r["output"] for r in rows)


def test_format_results_shows_both_datasets_side_by_side():
    block = {"n": 8, "perplexity_base": 9.5, "perplexity_adapter": 7.25, "n_generated": 2, "violation_rate": 0.0,
             "disclaimer_rate": 0.5, "blocked_rate": 0.0, "rougeL": 0.2}  # fmt: skip
    table = evaluation.format_results({"test_split": block, "medinstruct_test": None})
    assert "test_split" in table and "medinstruct_test" in table
    assert "9.5" in table and "7.25" in table
    line = next(line for line in table.splitlines() if line.startswith("perplexity_adapter"))
    assert line.split()[1:] == ["7.25", "-"]
