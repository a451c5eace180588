"""Train the classifier head of ``alpacare.safety`` (one logistic regression per category on MiniLM features).

Training data (``alpacare/safety_data/``):

* ``diagnosis.jsonl``, ``prescription.jsonl``, ``dosage.jsonl``, ``decision_rule.jsonl``, ``safe.jsonl``:
  sentences the team wrote and labeled against ``SAFETY_POLICY.md`` (``safe`` holds the hard negatives:
  general education, "ask your doctor whether ...", emergency warning signs, the disclaimer).
* ``context.jsonl``: the same sentence labeled by who it addresses ("Possible causes include ..." is a diagnosis
  after a personal question, education after a general one); paired with a question from ``prompts.jsonl``.
* ``labeled_refs.jsonl``: our labels for sentences of answers in ``../shared/data`` (iCliniq, MedInstruct-test).
  Those texts are CC BY-NC and are not in the repository: a row holds the file, line, field, character offsets and
  a SHA-1 of the sentence, and the text is read from the shared folder at training time (rows whose text no longer
  matches are skipped). None of them comes from ``safety_dev.jsonl``, which is for measuring only.

Thresholds are chosen on out-of-fold predictions over this training data (never on the dev set) and folded into
the biases, so 0.5 is every head's threshold at inference.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpacare.safety import CLASSIFIER_CATEGORIES as CATEGORIES
from alpacare.safety import HEAD_PATH, features, ngrams, personal_context

DATA_DIR = Path(__file__).with_name("safety_data")
WRITTEN_FILES = ("diagnosis", "prescription", "dosage", "decision_rule", "safe", "context")
CODES = {"d": "diagnosis", "p": "prescription", "dose": "dosage", "rule": "decision_rule"}


@dataclass
class Example:
    """One training sentence, the question it answers (or None), its labels and where it comes from."""

    text: str
    prompt: str | None
    labels: list[str]
    source: str
    group: str = ""  # examples of one answer share a group (cross-validation keeps them together)
    extra: dict[str, Any] = field(default_factory=dict)


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sentence_sha1(text: str) -> str:
    """Short fingerprint that ties a reference row to the sentence it labels."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def written_examples(data_dir: Path = DATA_DIR, seed: int = 0) -> list[Example]:
    """The sentences we wrote, each paired with a question of the right kind (or none)."""
    rng = random.Random(seed)
    prompts = read_jsonl(data_dir / "prompts.jsonl")
    pools = {kind: [p["prompt"] for p in prompts if p["context"] == kind] for kind in ("personal", "general")}
    out = []
    for name in WRITTEN_FILES:
        for i, row in enumerate(read_jsonl(data_dir / f"{name}.jsonl")):
            context = row.get("context", "any")
            # A sentence whose label does not depend on context is shown after both kinds of question, so that
            # the context alone never decides (education answering a personal question stays education).
            for kind in ("personal", "general") if context == "any" else (context,):
                prompt = rng.choice(pools[kind])
                out.append(Example(row["text"], prompt, list(row["labels"]), f"written:{name}", f"{name}:{i}"))
    return out


def _question(shared: Path, file: str, line: int, cache: dict[str, list[dict]]) -> str:
    """The question of a referenced answer (iCliniq questions are the same, in order, in every model's file)."""
    if "icliniq" in file:
        key = "alpacare/icliniq/gpt-4.jsonl"
        cache.setdefault(key, read_jsonl(shared / key))
        return cache[key][line]["input"]
    cache.setdefault(file, read_jsonl(shared / file))
    return cache[file][line]["instruction"]


def referenced_examples(shared: Path, data_dir: Path = DATA_DIR) -> list[Example]:
    """Our labels on sentences of the shared answers, with the texts read from ``shared`` (skipped if absent)."""
    path = data_dir / "labeled_refs.jsonl"
    if not shared.is_dir() or not path.exists():
        return []
    cache: dict[str, list[dict]] = {}
    out = []
    for ref in read_jsonl(path):
        source = shared / ref["file"]
        if not source.exists():
            continue
        cache.setdefault(ref["file"], read_jsonl(source))
        answer = cache[ref["file"]][ref["line"]][ref["field"]] or ""
        text = answer[ref["start"] : ref["end"]]
        if sentence_sha1(text) != ref["sha1"]:
            continue
        prompt = _question(shared, ref["file"], ref["line"], cache)
        group = f"{ref['file']}:{ref['line']}:{ref['field']}"
        out.append(Example(text, prompt, list(ref["labels"]), "shared", group, {"answer": answer}))
    return out


def build_vocabulary(examples: list[Example], min_count: int = 3) -> list[str]:
    """N-grams seen in at least ``min_count`` training sentences, sorted."""
    from collections import Counter

    counts = Counter(gram for e in examples for gram in ngrams(e.text))
    return sorted(gram for gram, n in counts.items() if n >= min_count)


def design_matrix(examples: list[Example], vocabulary: list[str]) -> Any:
    """Features for every example, shape ``(n, d)`` (one encoder pass)."""
    personal = [personal_context(e.prompt, e.extra.get("answer", e.text)) for e in examples]
    return features([e.text for e in examples], personal, vocabulary)


def targets(examples: list[Example]) -> Any:
    """Multi-label targets, shape ``(n, 2)`` in ``CLASSIFIER_CATEGORIES`` order."""
    import numpy as np

    return np.array([[c in e.labels for c in CATEGORIES] for e in examples], dtype=np.int64)


def fit_logistic(x: Any, y: Any, c: float, seed: int = 0) -> Any:
    """One balanced L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed).fit(x, y)


def trainable(examples: list[Example], category: str) -> list[int]:
    """Rows that teach ``category``: its positives and the sentences known to be free of it.

    A written sentence of another category (e.g. "Take 500 mg ...") may also contain this one, so it is left out
    rather than used as a possibly wrong negative.
    """
    return [
        i
        for i, e in enumerate(examples)
        if category in e.labels or not e.labels or e.source == "shared" or e.source == "written:context"
    ]


def out_of_fold(examples: list[Example], x: Any, y: Any, c: float, folds: int = 5, seed: int = 0) -> Any:
    """Out-of-fold probabilities, shape ``(n, 2)``, folds grouped by answer (NaN where a head did not train)."""
    import numpy as np
    from sklearn.model_selection import GroupKFold

    groups = np.array([e.group for e in examples])
    probs = np.full(y.shape, np.nan)
    for k, category in enumerate(CATEGORIES):
        rows = np.array(trainable(examples, category))
        for train, test in GroupKFold(n_splits=folds).split(rows, groups=groups[rows]):
            model = fit_logistic(x[rows[train]], y[rows[train], k], c, seed)
            probs[rows[test], k] = model.predict_proba(x[rows[test]])[:, 1]
    return probs


def choose_thresholds(probs: Any, clean: Any, max_fpr: float = 0.01) -> list[float]:
    """Per category: the lowest threshold whose out-of-fold false-positive rate on safe sentences is <= max_fpr.

    A reply has ~10 sentences, so a 1 % sentence-level false-positive rate keeps the reply-level one near 5-10 %
    before the rules; recall then comes from the many violating sentences a violating reply usually has.
    """
    import numpy as np

    thresholds = []
    for k in range(len(CATEGORIES)):
        negatives = probs[clean & ~np.isnan(probs[:, k]), k]
        thresholds.append(float(np.quantile(negatives, 1 - max_fpr)) if len(negatives) else 0.5)
    return thresholds


def fit_head(
    examples: list[Example], c: float = 1.0, max_fpr: float = 0.01, seed: int = 0, min_count: int = 3
) -> dict[str, Any]:
    """Fit the heads, choose thresholds out of fold, fold them into the biases; return the head arrays."""
    import numpy as np

    vocabulary = build_vocabulary(examples, min_count) if min_count else []
    x, y = design_matrix(examples, vocabulary), targets(examples)
    probs = out_of_fold(examples, x, y, c, seed=seed)
    clean = np.array([not e.labels for e in examples])  # sentences that violate nothing at all
    thresholds = choose_thresholds(probs, clean, max_fpr)
    weights, biases = [], []
    for k, category in enumerate(CATEGORIES):
        rows = trainable(examples, category)
        model = fit_logistic(x[rows], y[rows, k], c, seed)
        shift = np.log(thresholds[k] / (1 - thresholds[k]))  # p >= t  <=>  logit - logit(t) >= 0
        weights.append(model.coef_[0])
        biases.append(model.intercept_[0] - shift)
    return {
        "weights": np.array(weights, dtype=np.float32),
        "bias": np.array(biases, dtype=np.float32),
        "categories": np.array(CATEGORIES),
        "vocabulary": np.array(vocabulary, dtype=str),
        "thresholds": np.array(thresholds, dtype=np.float32),
        "oof_probs": probs,
        "y": y,
        "clean": clean,
    }


def save_head(head: dict[str, Any], path: Path = HEAD_PATH) -> Path:
    """Write the inference arrays (weights, bias, categories, thresholds) as a compressed npz."""
    import numpy as np

    keep = {k: head[k] for k in ("weights", "bias", "categories", "vocabulary", "thresholds")}
    np.savez_compressed(path, **keep)
    return path
