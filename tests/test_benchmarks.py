"""The experiment scripts under ``benchmarks/`` that have logic of their own beyond calling the package."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from alpacare.safety_training import Example

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestFinetuneProbe:
    def test_skips_without_shared_answers(self, tmp_path, capsys):
        probe = _load("safety_finetune_probe")
        assert probe.main(["--shared", str(tmp_path), "--json"]) == []
        assert "skipped" in json.loads(capsys.readouterr().out)

    def test_reply_figures_rank_answers_not_sentences(self):
        probe = _load("safety_finetune_probe")
        # Four answers of two sentences; the violating ones hold one high-scoring sentence each.
        texts = ["Rest and drink fluids.", "This sounds like a sinus infection.", "Wash hands.", "Sleep well."]
        examples = []
        for g, (first, label) in enumerate([(1, ["diagnosis"]), (1, ["diagnosis"]), (2, []), (2, [])]):
            examples.append(Example(texts[0], "I have a cold", [], "shared", f"a{g}"))
            examples.append(Example(texts[first], "I have a cold", label, "shared", f"a{g}"))
        probs = np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.1], [0.8, 0.1], [0.2, 0.1], [0.3, 0.1], [0.1, 0.1],
                          [0.85, 0.1]])  # fmt: skip
        figures = probe.reply_figures(examples, list(range(8)), probs, max_fpr=0.5)
        assert figures["answers"] == 4 and figures["violating"] == 2
        # a0 (0.9) and a1 (0.8) violate; a3 (0.85) is safe but outranks a1, a2 (0.3) is safe: AUC 3/4.
        assert figures["reply_auc"] == 0.75
        assert figures["recall_one_threshold"] == 1.0 and figures["recall"] == 1.0 and figures["fpr"] == 0.5
