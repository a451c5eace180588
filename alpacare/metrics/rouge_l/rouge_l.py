"""ROUGE-L as a local ``evaluate`` metric module: ``evaluate.load("<path>/rouge_l")`` works offline.

``evaluate.load("rouge")`` downloads its script from the Hugging Face Hub on first use, which cannot run offline.
``evaluate`` also loads metric scripts from a local folder, so this module gives the same ``Metric`` API
(``compute(predictions=..., references=...)``) with the scoring done by Google's ``rouge_score`` package, the
implementation the Hub's rouge metric wraps. Scores are the mean F-measure over pairs, with the Porter stemmer.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE-L (longest common subsequence) F-measure, mean over prediction/reference pairs."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, one per prediction.
    use_stemmer: apply the Porter stemmer to tokens (default True).
Returns:
    {"rougeL": mean F-measure in [0, 1]}
"""
_CITATION = """@inproceedings{lin-2004-rouge,
    title = "ROUGE: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew", booktitle = "Text Summarization Branches Out", year = "2004"}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    """ROUGE-L F-measure through ``rouge_score``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions: list[str], references: list[str], use_stemmer: bool = True) -> dict[str, float]:
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = [
            scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)
        ]
        return {"rougeL": sum(scores) / len(scores) if scores else 0.0}
