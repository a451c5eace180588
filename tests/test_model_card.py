"""The model card: every section, metadata the Hub parses, values from a tiny real run, review and eval states."""

from __future__ import annotations

import copy
import json

import pytest
from fake_run import EVAL_RESULTS, MANIFEST, REVIEW_REPORT, TRAIN_CONFIG, write_fake_run
from huggingface_hub import ModelCard

from alpacare.prompts import DISCLAIMER
from model_card import load_run_info, render_model_card
from model_card.render import NOT_EVALUATED, summarize_loss_log

SECTIONS = [
    "## Intended use",
    "## Out-of-scope uses",
    "## How to get and load it",
    "## Training data",
    "## Training procedure",
    "## Evaluation",
    "## Human review",
    "## Safety measures",
    "## Limitations",
    "## Disclaimer",
    "## Citation",
    "## License and attribution",
]


@pytest.fixture()
def run(tmp_path, tiny_model, tokenizer):
    """A tiny run folder with a real LoRA adapter."""
    return write_fake_run(tmp_path / "tiny-run", tiny_model, tokenizer)


@pytest.fixture()
def fields(run):
    """The run's card fields, as the release script reads them."""
    return load_run_info(run)


def render(fields, **overrides):
    """Render with the run's fields, some replaced."""
    return render_model_card(repo_id="demo-user/alpacare-tiny", **{**fields, **overrides})


class TestLoadRunInfo:
    def test_reads_every_contract_file(self, run, fields):
        assert fields["run_name"] == "tiny-run"
        assert fields["train_config"] == TRAIN_CONFIG
        assert fields["adapter_config"]["r"] == 4 and fields["adapter_config"]["peft_type"] == "LORA"
        assert fields["eval_results"] == EVAL_RESULTS
        assert fields["review"] is None

    def test_sample_ids_are_replaced_by_their_counts(self, fields):
        assert "splits" not in fields["manifest"]
        assert fields["manifest"]["split_id_counts"] == {"train": 6, "validation": 2, "test": 2}

    def test_loss_log_summary_skips_blank_cells(self, run):
        assert summarize_loss_log(run / "loss_log.csv") == {
            "n_rows": 3,
            "last_step": 3,
            "final_train_loss": 2.25,
            "final_eval_loss": 2.6,
            "best_eval_loss": 2.6,
        }

    def test_optional_files_missing_give_none(self, tmp_path, tiny_model, tokenizer):
        run = write_fake_run(tmp_path / "bare", tiny_model, tokenizer, eval_results=False, loss_log=False)
        info = load_run_info(run)
        assert info["eval_results"] is None and info["loss_summary"] is None

    def test_review_report_is_read(self, run, tmp_path):
        (tmp_path / "report.json").write_text(json.dumps(REVIEW_REPORT))
        assert load_run_info(run, tmp_path / "report.json")["review"] == REVIEW_REPORT

    @pytest.mark.parametrize("missing", ["train_config.yaml", "manifest.json"])
    def test_missing_required_file_is_named(self, run, missing):
        (run / missing).unlink()
        with pytest.raises(FileNotFoundError, match=missing):
            load_run_info(run)


class TestMetadata:
    def test_hub_parses_the_metadata(self, fields, tmp_path):
        path = tmp_path / "README.md"
        path.write_text(render(fields))
        data = ModelCard.load(path).data
        assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert data.library_name == "peft"
        assert data.license == "cc-by-nc-4.0"
        assert data.datasets == ["lavita/AlpaCare-MedInstruct-52k"]
        assert data.pipeline_tag == "text-generation"
        assert data.language == "en"
        assert {"peft", "lora", "medical"} <= set(data.tags)

    @pytest.mark.parametrize(
        "base", ["embedded", "/root/.cache/alpacare/smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    )
    def test_embedded_base_is_named_by_its_hub_id(self, fields, base):
        card = render(fields, train_config={**TRAIN_CONFIG, "base_model": base})
        assert ModelCard(card).data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert "/root/.cache" not in card.split("## Training procedure")[0]

    def test_local_base_model_is_not_claimed_as_hub_id(self, fields):
        card = render(fields, train_config={**TRAIN_CONFIG, "base_model": "/models/my-llama"})
        assert ModelCard(card).data.base_model is None
        assert "a local base model (`/models/my-llama`)" in card

    def test_local_data_file_is_not_claimed_as_the_hub_dataset(self, fields):
        manifest = {**fields["manifest"], "source": "/work/main/alpacare/data/sample.jsonl"}
        card = render(fields, manifest=manifest)
        assert ModelCard(card).data.datasets is None
        assert "a local file in the MedInstruct-52k schema (`sample.jsonl`)" in card
        assert "/work/main" not in card

    @pytest.mark.parametrize("source", ["sample", "/work/main/alpacare/sample_data/medinstruct_sample.jsonl"])
    def test_offline_sample_is_named_as_such(self, fields, source):
        card = render(fields, manifest={**fields["manifest"], "source": source})
        assert ModelCard(card).data.datasets is None
        assert "the project's own offline sample" in card


class TestSections:
    @pytest.mark.parametrize("heading", SECTIONS)
    def test_every_section_is_present(self, fields, heading):
        assert f"\n{heading}\n" in render(fields)

    def test_out_of_scope_lists_the_four_policy_categories(self, fields):
        card = render(fields)
        scope = card.split("## Out-of-scope uses")[1].split("## ")[0]
        for word in ("Diagnosis", "Prescription", "Dosage", "Clinical decisions"):
            assert word in scope

    def test_training_data_shows_preset_seed_sizes_cleaning_and_manifest(self, fields):
        data = render(fields).split("## Training data")[1].split("## Training procedure")[0]
        assert "`demo`" in data and "`42`" in data
        assert "train 6 · validation 2 · test 2" in data
        assert "| duplicates | 5 |" in data and "| empty instruction or output | 3 |" in data
        assert "| dosage | 7 |" in data and "mode `drop`" in data
        assert "manifest.json" in data

    def test_hyperparameters_come_from_the_run(self, fields):
        procedure = render(fields).split("## Training procedure")[1].split("## Evaluation")[0]
        assert "| `r` | 4 |" in procedure and "| `lora_alpha` | 8 |" in procedure  # adapter_config.json
        assert "| `learning_rate` | 0.0002 |" in procedure and "| `max_length` | 512 |" in procedure
        assert procedure.count("| `target_modules` | q_proj, v_proj |") == 2  # adapter_config (sorted) + config
        assert "last step 3" in procedure and "best eval loss 2.6" in procedure

    def test_evaluation_table(self, fields):
        evaluation = render(fields).split("## Evaluation")[1].split("## Human review")[0]
        assert "| Perplexity, base model | 14.26 | not evaluated |" in evaluation
        assert "| Perplexity, base + this adapter | 9.81 | not evaluated |" in evaluation
        assert "| Policy violation rate (checker) | 12.5 % | not evaluated |" in evaluation
        assert "| Disclaimer rate | 93.8 % | not evaluated |" in evaluation
        assert "| ROUGE-L F1 vs reference answers | 0.2135 | not evaluated |" in evaluation

    def test_missing_eval_says_not_evaluated(self, fields):
        evaluation = render(fields, eval_results=None).split("## Evaluation")[1].split("## Human review")[0]
        assert "**Not evaluated**" in evaluation and "| metric |" not in evaluation

    def test_missing_metric_says_not_evaluated(self, fields):
        results = copy.deepcopy(EVAL_RESULTS)
        del results["test_split"]["rougeL"]
        assert f"| ROUGE-L F1 vs reference answers | {NOT_EVALUATED} | {NOT_EVALUATED} |" in render(
            fields, eval_results=results
        )

    def test_disclaimer_and_citations(self, fields):
        card = render(fields)
        assert card.count(DISCLAIMER) == 2  # under the title and in its own section
        assert "arXiv:2310.14558" in card and "Zhang, Xinlu" in card and "CC BY-NC 4.0" in card
        assert "2502.02737" in card  # SmolLM2, the base model

    def test_download_and_load_instructions(self, fields):
        card = render(fields, revision="v2")
        assert "hf download demo-user/alpacare-tiny --revision v2 --local-dir adapters/alpacare-tiny" in card
        assert 'PeftModel.from_pretrained(base, "adapters/alpacare-tiny")' in card
        assert "python app.py --adapter demo-user/alpacare-tiny --revision v2" in card

    def test_table_cells_are_escaped(self, fields):
        card = render(fields, train_config={**TRAIN_CONFIG, "output_dir": "runs/a|b"})
        assert "| `output_dir` | runs/a\\|b |" in card

    def test_rendering_is_deterministic(self, fields):
        assert render(fields) == render(fields)


class TestHumanReview:
    def test_no_review_is_not_cleared(self, fields):
        card = render(fields)
        assert "**No human review yet — not cleared for use.**" in card
        assert "not cleared for use" in card.split("## Intended use")[0]

    def test_review_criteria_pass_fail_and_no_go(self, fields):
        review = render(fields, review=REVIEW_REPORT).split("## Human review")[1].split("## Safety measures")[0]
        assert "Reviewers: 31 · ratings: 620 · items: 200" in review
        assert "| reviewers >= 30 | 31 | 30 | **PASS** |" in review
        assert "| safety violation rate < 2% | 3.5 % | 2.0 % | **FAIL** |" in review
        assert "| Safety | 4.2 | 4 | 0.71 |" in review and "| Clarity | 4.1 | 4 | n/a |" in review
        assert "**Decision: NO-GO**" in review

    def test_passing_review_is_go(self, fields):
        report = copy.deepcopy(REVIEW_REPORT)
        report["criteria"][1].update(value=0.01, passed=True)
        report["go"] = True
        card = render(fields, review=report)
        assert "**Decision: GO**" in card and "FAIL" not in card
        assert "not cleared for use" not in card.split("## Intended use")[0]

    def test_go_with_a_failed_criterion_is_not_trusted(self, fields):
        card = render(fields, review={**REVIEW_REPORT, "go": True})
        assert "**Decision: NO-GO**" in card

    def test_report_from_the_review_app(self, fields):
        """A real ``alpacare.review.build_report`` (3 reviewers: too few) renders with its criteria and models."""
        from dataclasses import asdict

        from alpacare.review import Rating, build_report

        rows = [
            asdict(
                Rating.create(
                    f"reviewer{r}",
                    f"item{i}",
                    model="base + demo-user/alpacare-tiny",
                    safety=5 - (i == 0 and r == 0),
                    helpfulness=4,
                    clarity=4,
                    factuality=3 + (r == i),
                    disclaimer_ok=True,
                )
            )
            for r in range(3)
            for i in range(4)
        ]
        review = render(fields, review=build_report(rows)).split("## Human review")[1].split("## Safety")[0]
        assert "Reviewers: 3 · ratings: 12 · items: 4" in review
        assert "| safety violation rate < 2% | 0.0 % | 2.0 % | **PASS** |" in review
        assert "| reviewers ≥ 30 | 3 | 30 | **FAIL** |" in review
        assert "| base + demo-user/alpacare-tiny | 12 | 0.0 % | 4.917 |" in review
        assert "**Decision: NO-GO**" in review


class TestDemoSizedRun:
    def test_tiny_run_is_flagged_as_a_demonstration(self, fields):
        assert "trained on only 6 examples" in render(fields)

    def test_full_run_is_not(self, fields):
        manifest = {**MANIFEST, "sizes": {"train": 46000, "validation": 2600, "test": 2600}}
        assert "trained on only" not in render(fields, manifest=manifest)
