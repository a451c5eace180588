"""Training data and threshold choice of the safety head (``alpacare.safety_training``)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from alpacare import safety_training as st
from alpacare.safety import split_sentences

ANSWER = (
    "I'm sorry to hear that. It sounds like you have a urinary tract infection. "
    "Drink plenty of water. You can take ibuprofen for the pain. Please see a doctor."
)


@pytest.fixture
def fake_shared(tmp_path):
    """A shared-data folder in the iCliniq layout holding one answer we wrote, and a label file for it."""
    folder = tmp_path / "shared" / "alpacare" / "icliniq"
    folder.mkdir(parents=True)
    row = {"instruction": "", "input": "Hello doctor, I burn when I pee.", "output": ANSWER}
    (folder / "gpt-4.jsonl").write_text(json.dumps(row) + "\n")
    data_dir = tmp_path / "labels"
    data_dir.mkdir()
    ref = {
        "file": "alpacare/icliniq/gpt-4.jsonl",
        "line": 0,
        "field": "output",
        "sha1": st.sentence_sha1(ANSWER),
        "labels": {"1": ["diagnosis"], "3": ["prescription"]},
        "unsure": {"4": ["prescription"]},
    }
    (data_dir / "labeled_answers.jsonl").write_text(json.dumps(ref) + "\n")
    return tmp_path / "shared", data_dir


class TestAnswerExamples:
    def test_reads_texts_labels_and_disagreements(self, fake_shared):
        shared, data_dir = fake_shared
        examples = st.answer_examples(shared, data_dir)
        assert [e.text for e in examples] == [ANSWER[s:e] for s, e in split_sentences(ANSWER)]
        assert [e.labels for e in examples] == [[], ["diagnosis"], [], ["prescription"], []]
        assert examples[4].extra["unsure"] == ["prescription"]
        assert {e.group for e in examples} == {"alpacare/icliniq/gpt-4.jsonl:0:output"}
        assert all(e.prompt == "Hello doctor, I burn when I pee." for e in examples)

    def test_a_disputed_sentence_does_not_teach_its_category(self, fake_shared):
        examples = st.answer_examples(*fake_shared)
        assert 4 not in st.trainable(examples, "prescription")
        assert 4 in st.trainable(examples, "diagnosis")

    def test_a_changed_answer_is_skipped(self, fake_shared):
        shared, data_dir = fake_shared
        path = shared / "alpacare" / "icliniq" / "gpt-4.jsonl"
        path.write_text(path.read_text().replace("ibuprofen", "paracetamol"))
        assert st.answer_examples(shared, data_dir) == []

    def test_missing_shared_folder_gives_nothing(self, tmp_path):
        assert st.answer_examples(tmp_path / "absent") == []


class TestShippedLabels:
    def test_rows_are_well_formed(self):
        rows = st.read_jsonl(st.DATA_DIR / "labeled_answers.jsonl")
        assert len(rows) > 3000
        for row in rows:
            assert re.fullmatch(r"[0-9a-f]{12}", row["sha1"])
            for labels in [*row["labels"].values(), *row.get("unsure", {}).values(), *row.get("split", {}).values()]:
                assert labels and set(labels) <= {"diagnosis", "prescription", "dosage", "decision_rule"}
            for index, disputed in row.get("unsure", {}).items():
                assert not set(disputed) & set(row["labels"].get(index, []))  # agreed and disputed exclude
            for index in row.get("split", {}):  # a split the third annotator decided is no longer unsure
                assert not set(row["split"][index]) & set(row.get("unsure", {}).get(index, []))

    def test_no_text_is_shipped(self):
        """The shared answers are CC BY-NC: a row points at one (file, line, field, hash), it never holds text."""
        for row in st.read_jsonl(st.DATA_DIR / "labeled_answers.jsonl"):
            assert {"file", "line", "field", "sha1", "labels", "unsure"} <= set(row)
            assert set(row) <= {"file", "line", "field", "sha1", "labels", "unsure", "split"}
            assert row["file"].startswith("alpacare/") and isinstance(row["line"], int)

    def test_every_reference_still_matches_and_none_answers_a_dev_question(self, shared_data, safety_dev):
        examples = st.answer_examples(shared_data)
        groups = {e.group for e in examples}
        assert len(groups) == len(st.read_jsonl(st.DATA_DIR / "labeled_answers.jsonl"))

        def norm(q):
            return re.sub(r"\W+", " ", q or "").strip().lower()[:80]

        dev_questions = {norm(d["question"]) for d in safety_dev}
        assert not {norm(e.prompt) for e in examples} & dev_questions


class TestCandidates:
    """Written sentences the shipped head was not trained on (``safety_data/candidates/``), read only on request."""

    def test_rows_are_well_formed(self):
        files = sorted((st.DATA_DIR / "candidates").glob("*.jsonl"))
        assert files
        for path in files:
            rows = st.read_jsonl(path)
            assert len({r["text"] for r in rows}) == len(rows)
            for row in rows:
                assert set(row) == {"text", "labels", "context"} and row["context"] in {"any", "personal", "general"}
                assert set(row["labels"]) <= {"diagnosis", "prescription", "dosage", "decision_rule"}
                assert len(split_sentences(row["text"])) == 1

    def test_no_candidate_copies_our_measuring_sets(self):
        """Candidates were written from descriptions of missed shapes, not from the replies of ``benchmarks/data``."""
        sets = sorted((st.DATA_DIR.parents[1] / "benchmarks" / "data").glob("*.jsonl"))
        held = [
            r["response"][s:e] for path in sets for r in st.read_jsonl(path) for s, e in split_sentences(r["response"])
        ]
        texts = [row["text"] for path in (st.DATA_DIR / "candidates").glob("*.jsonl") for row in st.read_jsonl(path)]
        assert len(sets) >= 20 and st.near_duplicates(texts, held) == []

    def test_extra_files_are_added_to_the_written_examples(self, tmp_path):
        extra = tmp_path / "more.jsonl"
        rows = [
            {"text": "That pattern is textbook croup.", "labels": ["diagnosis"], "context": "personal"},
            {"text": "Croup classically causes a barking cough.", "labels": [], "context": "any"},
        ]
        extra.write_text("".join(json.dumps(r) + "\n" for r in rows))
        base = st.written_examples()
        more = st.written_examples(extra=[extra])
        assert more[: len(base)] == base  # the shipped sentences come first, with the same questions
        added = more[len(base) :]
        assert [(e.text, e.labels, e.source) for e in added] == [
            (rows[0]["text"], ["diagnosis"], "written:more"),
            (rows[1]["text"], [], "written:more"),
            (rows[1]["text"], [], "written:more"),  # "any": shown after a personal and a general question
        ]
        assert len({e.group for e in added}) == 2

    def test_the_training_script_refuses_a_missing_extra_file(self, tmp_path, capsys):
        import importlib.util

        spec = importlib.util.spec_from_file_location("train_safety", st.DATA_DIR.parents[1] / "train/train_safety.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with pytest.raises(SystemExit):
            module.main(["--extra", str(tmp_path / "absent.jsonl"), "--output", str(tmp_path / "h.npz")])
        assert "no such file" in capsys.readouterr().err


class TestReplyThresholds:
    def table(self):
        # 6 answers: 4 violating (2 diagnosis, 2 prescription, no decision rule), 2 clean; one clean answer scores
        # high on diagnosis.
        return {
            "violating": np.array([True, True, True, True, False, False]),
            "by_category": np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=bool),
            "rules": np.zeros(6, dtype=bool),
            "max_probs": np.array(
                [[0.9, 0.0, 0.0], [0.6, 0.0, 0.0], [0.0, 0.8, 0.0], [0.1, 0.7, 0.0], [0.7, 0.1, 0.0], [0.2, 0.2, 0.0]],
                dtype=float,
            ),
        }

    def test_keeps_the_false_positive_rate_and_maximizes_recall(self):
        thresholds, figures = st.choose_reply_thresholds(self.table(), max_reply_fpr=0.0)
        assert figures["fpr"] == 0.0
        assert figures["per_category_recall"] == {"diagnosis": 0.5, "prescription": 1.0, "decision_rule": None}
        assert thresholds[0] > 0.7 and thresholds[1] <= 0.7

    def test_a_larger_budget_buys_recall(self):
        _, figures = st.choose_reply_thresholds(self.table(), max_reply_fpr=0.5)
        assert figures["recall"] == 1.0 and figures["fpr"] == 0.5

    def test_rule_hits_count_as_flags(self):
        table = self.table()
        table["rules"] = np.array([False, True, False, False, False, False])
        _, figures = st.choose_reply_thresholds(table, max_reply_fpr=0.0)
        assert figures["per_category_recall"]["diagnosis"] == 1.0

    def test_a_category_without_answers_has_no_say(self):
        table = self.table()
        table["violating"][2:4] = False  # no prescription answers left: 2 violating, 4 clean
        table["by_category"][:, 1] = False
        thresholds, figures = st.choose_reply_thresholds(table, max_reply_fpr=0.25)
        assert figures["per_category_recall"] == {"diagnosis": 1.0, "prescription": None, "decision_rule": None}
        assert figures["recall"] == 1.0 and figures["fpr"] == 0.25

    def test_no_violating_answers_still_chooses(self):
        table = self.table()
        table["violating"][:] = False
        table["by_category"][:] = False
        thresholds, figures = st.choose_reply_thresholds(table, max_reply_fpr=0.0)
        assert figures["recall"] == 0.0 and figures["fpr"] == 0.0 and len(thresholds) == 3


class TestWeights:
    def test_written_sentences_weigh_more(self):
        examples = [st.Example("a", None, [], "shared"), st.Example("b", None, [], "written:safe")]
        assert list(st.sample_weights(examples, [0, 1])) == [1.0, st.WRITTEN_WEIGHT]


class TestConventions:
    def test_taking_what_was_prescribed_loses_its_prescription_label(self):
        examples = [
            st.Example("Take your medications as prescribed.", None, ["prescription"], "shared", "a"),
            st.Example("Take ibuprofen as directed.", None, ["prescription"], "shared", "a"),
            st.Example("Keep taking your meds as directed.", None, [], "shared", "b", {"unsure": ["prescription"]}),
        ]
        out = st.apply_conventions(examples)
        assert [e.labels for e in out] == [[], ["prescription"], []]
        assert out[2].extra["unsure"] == []
        assert examples[0].labels == ["prescription"]  # the input is not modified


class TestFitHead:
    """A small head on a sample of our written sentences (the real encoder), saved and read back by the checker."""

    @pytest.fixture(scope="class")
    def fitted(self, tmp_path_factory):
        import random

        examples = random.Random(0).sample(st.written_examples(), 300)
        head = st.fit_head(examples, min_count=3, max_fpr=0.05, mlp_hidden=16)
        path = st.save_head(head, tmp_path_factory.mktemp("head") / "head.npz")
        return examples, head, path

    def test_saved_arrays(self, fitted):
        _, head, path = fitted
        with np.load(path) as saved:
            assert set(saved.files) == {
                "weights", "bias", "mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2", "categories", "vocabulary", "thresholds"
            }  # fmt: skip
            d = saved["weights"].shape[1]
            assert saved["mlp_w1"].shape == (len(st.CATEGORIES), 384 + 6 + 384, 16)
            assert d == 384 + 6 + 2 * len(saved["vocabulary"])
            # stored in float16, within float16 rounding of the fitted weights, and computed in float32
            assert saved["mlp_w1"].dtype == np.float16
            np.testing.assert_allclose(saved["mlp_w1"], head["mlp_w1"], rtol=1e-3, atol=1e-4)
        from alpacare import safety

        assert safety.load_head(path)["mlp_w1"].dtype == np.float32

    def test_the_shipped_head_stays_small(self):
        from alpacare import safety

        assert safety.HEAD_PATH.stat().st_size < 2 * 1024 * 1024

    def test_checker_ensemble_matches_a_numpy_reference(self, fitted, monkeypatch):
        from alpacare import safety

        examples, _, path = fitted
        monkeypatch.setattr(safety, "HEAD_PATH", path)
        head = safety.load_head(path)  # the arrays as saved (float16 MLP weights, read back as float32)
        texts = [e.text for e in examples[:40]]
        personal = [safety.personal_context(e.prompt, e.text) for e in examples[:40]]
        x = safety.features(texts, personal, head["vocabulary"])
        m = safety.mlp_inputs(x, personal)
        lr = 1 / (1 + np.exp(-(x @ head["weights"].T + head["bias"])))
        hidden = np.maximum(0, np.einsum("nd,kdh->knh", m, head["mlp_w1"]) + head["mlp_b1"][:, None, :])
        mlp = 1 / (1 + np.exp(-(np.einsum("knh,kh->nk", hidden, head["mlp_w2"]) + head["mlp_b2"])))
        expected = (lr + mlp) / 2
        np.testing.assert_allclose(safety.head_probabilities(head, x, personal), expected, rtol=1e-4, atol=1e-5)
        scores = safety.classify(texts, personal)
        np.testing.assert_array_equal(scores >= 0.5, expected >= head["thresholds"])

    def test_the_head_learns_its_training_sentences(self, fitted):
        examples, head, _ = fitted
        probs, y = head["oof_probs"], head["y"]
        for k in range(len(st.CATEGORIES)):
            seen = ~np.isnan(probs[:, k])
            positives, negatives = probs[seen & (y[:, k] == 1), k], probs[seen & (y[:, k] == 0), k]
            # Out of fold, a violating sentence outranks a clean one most of the time (AUC well above chance).
            auc = (positives[:, None] > negatives[None, :]).mean()
            assert auc > 0.8, (st.CATEGORIES[k], auc)


class TestEncoderAdapter:
    """LoRA fine-tuning of MiniLM (a few steps on a sample of our written sentences), cross-fit halves, and a head
    that ships the adapter."""

    @pytest.fixture(scope="class")
    def trained(self, tmp_path_factory):
        import random

        examples = st.apply_conventions(random.Random(1).sample(st.written_examples(), 240))
        tune = {"epochs": 2, "learning_rate": 3e-3}  # a few steps that move the weights well past bf16 rounding
        halves, adapters = st.train_crossfit_adapters(examples, **tune)
        adapter = st.train_encoder_adapter(examples, **tune)
        head = st.fit_head(
            examples, min_count=3, max_fpr=0.05, mlp_hidden=16, adapter=adapter, crossfit=(halves, adapters)
        )
        path = st.save_head(head, tmp_path_factory.mktemp("head") / "head.npz")
        return examples, halves, adapters, adapter, head, path

    def test_halves_split_the_answers(self, trained):
        examples, halves, *_ = trained
        assert sorted(i for rows in halves for i in rows) == list(range(len(examples)))
        groups = [{examples[i].group for i in rows} for rows in halves]
        assert not groups[0] & groups[1]  # no answer (or written sentence) on both sides

    def test_adapter_arrays(self, trained):
        *_, adapter, _, _ = trained
        from alpacare import safety

        assert list(adapter["lora_modules"]) == [
            f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")
        ]
        assert adapter["lora_a"].shape == (12, st.LORA_RANK, safety.EMBED_DIM)
        assert adapter["lora_b"].shape == (12, safety.EMBED_DIM, st.LORA_RANK)
        assert np.abs(adapter["lora_b"]).max() > 0  # peft starts B at zero: it trained
        assert float(adapter["lora_scale"]) == 2.0

    def test_crossfit_rows_come_from_the_other_halfs_adapter(self, trained):
        examples, halves, adapters, _, head, _ = trained
        vocabulary = list(head["vocabulary"])
        x = st.crossfit_matrix(examples, vocabulary, halves, adapters)
        for k, rows in enumerate(halves):
            own = st.design_matrix([examples[i] for i in rows], vocabulary, adapters[k])  # trained without them
            np.testing.assert_array_equal(x[rows].toarray(), own.toarray())
            other = st.design_matrix([examples[i] for i in rows], vocabulary, adapters[1 - k])
            assert not np.array_equal(own[:, :384].toarray(), other[:, :384].toarray())

    def test_the_saved_head_carries_its_encoder(self, trained, monkeypatch):
        examples, _, _, adapter, _, path = trained
        from alpacare import safety

        head = safety.load_head(path)
        for key in safety.LORA_KEYS:
            np.testing.assert_array_equal(head[key], adapter[key])
        monkeypatch.setattr(safety, "HEAD_PATH", path)
        texts = [e.text for e in examples[:20]]
        personal = [safety.personal_context(e.prompt, e.text) for e in examples[:20]]
        t = head["thresholds"].astype(np.float64)

        def scores(adapter):  # classify's scores, by hand, on one encoder's features
            x = safety.features(texts, personal, head["vocabulary"], adapter=adapter)
            p = np.clip(safety.head_probabilities(head, x, personal), 1e-12, 1 - 1e-12)
            return 1 / (1 + np.exp(-(np.log(p / (1 - p)) - np.log(t / (1 - t)))))

        got = safety.classify(texts, personal)  # reads the adapter from the head file
        np.testing.assert_allclose(got, scores(adapter), atol=1e-6)
        assert np.abs(got - scores(None)).max() > 1e-4  # the frozen encoder gives other scores


class TestHeldOut:
    def test_near_duplicates_uses_word_overlap(self):
        held = ["It sounds like you have a urinary tract infection."]
        found = st.near_duplicates(["It sounds like you have a bladder infection.", "Drink water."], held)
        assert [(t, s) for t, s, _ in found] == [("It sounds like you have a bladder infection.", held[0])]
        assert st.near_duplicates(["Malaria is spread by the bite of infected mosquitoes."], held) == []

    def test_no_written_sentence_copies_the_measuring_set(self, safety_dev):
        """No sentence (candidates included) or question we wrote is a near-copy of one in ``safety_dev.jsonl``
        (word-set Jaccard < 0.5)."""
        held = [r["response"][s:e] for r in safety_dev for s, e in split_sentences(r["response"])]
        rows = [row for name in st.WRITTEN_FILES for row in st.read_jsonl(st.DATA_DIR / f"{name}.jsonl")]
        rows += [row for path in (st.DATA_DIR / "candidates").glob("*.jsonl") for row in st.read_jsonl(path)]
        texts = sorted({row["text"] for row in rows})
        assert st.near_duplicates(texts, held) == []
        questions = [r["question"] for r in safety_dev]
        assert st.near_duplicates([r["prompt"] for r in st.read_jsonl(st.DATA_DIR / "prompts.jsonl")], questions) == []
