"""Safe generation: the training prompt format, the model, and the policy check on everything a user sees.

``stream_safe_generate`` runs ``model.generate`` in a worker thread with a ``TextIteratorStreamer`` (the pattern
of the transformers docs and Gradio chat demos) and gates its output sentence by sentence: text is held back
until a sentence is complete, the sentence goes through ``alpacare.safety.check_sentence``, and only then is it
shown. The first violating sentence is never shown: generation stops there and the safe fallback replaces the
reply. When generation ends, the whole reply is checked again with ``alpacare.safety.check``, so the guarantee
never rests on the model obeying the safety prefix. Every final reply ends with the disclaimer exactly once.

Generation stops on EOS, on ``max_new_tokens``, when the caller sets ``stop_event`` (a closed browser tab) and when
the consumer stops iterating (``GeneratorExit``), through a ``StoppingCriteria`` that watches those events, so an
abandoned request does not keep the CPU busy.

``safe_generate`` drains the same stream, so the batch CLI measures exactly what the app shows.
"""

from __future__ import annotations

import copy
import functools
import logging
import queue
import re
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from alpacare.prompts import DISCLAIMER, ensure_disclaimer, format_prompt, user_message
from alpacare.safety import is_list_item

log = logging.getLogger(__name__)

# How often the consumer wakes up while waiting for text, to notice a worker that died (seconds).
_POLL_SECONDS = 0.5
# Upper bound on waiting for the worker after a stop: one forward step of a small model takes ~50 ms on CPU.
_JOIN_SECONDS = 30.0
# Repeated sentences dropped before generation is stopped as a loop ("I'm so sorry to hear that." x 20).
_MAX_REPEATS = 2


@dataclass
class SafeReply:
    """A finished reply: the text shown (ending with the disclaimer), and whether the checker replaced it."""

    reply: str
    blocked: bool
    categories: list[str] = field(default_factory=list)


@dataclass
class StreamUpdate:
    """One step of a streamed reply.

    ``text`` is everything approved so far (cumulative: what the UI shows). The final update (``done=True``) ends
    with the disclaimer exactly once, or is the fallback reply when ``blocked``.
    """

    text: str
    done: bool
    blocked: bool
    categories: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------------
# The safe fallback
# --------------------------------------------------------------------------------------------------------------

# Why the original reply is not shown, per policy category (SAFETY_POLICY.md), in the first category's words.
_LEADS: dict[str, str] = {
    "diagnosis": (
        "Working out the cause of symptoms takes a clinician who can hear the whole story, do an examination and "
        "arrange tests if needed, so I can't name a condition here."
    ),
    "prescription": (
        "Choosing a medicine or treatment depends on a person's health, other medicines and allergies, so that "
        "choice is best made with a doctor or pharmacist."
    ),
    "dosage": (
        "I can't give amounts or schedules for medicines: they depend on the product, your age, weight, kidney "
        "and liver health and your other medicines, so they are set by a prescriber or pharmacist and the "
        "product's official leaflet."
    ),
    "decision_rule": (
        "I can't give rules or cut-off values for deciding a diagnosis or a treatment: those decisions belong to "
        "a clinician who knows the whole picture."
    ),
}
_GENERIC_LEAD = "I can't answer this one directly, but here is some general guidance."


@dataclass(frozen=True)
class _Topic:
    """A topic of the fallback: prompt keywords, a general education sentence, and its warning signs."""

    name: str
    keywords: str  # regex alternatives, matched on word boundaries, case-insensitive
    education: str
    warning_signs: str


# Hand-written rather than generated: the fallback must pass the checker without a model call. Ordered by urgency,
# so a prompt that mentions chest pain and a headache gets the chest-pain warning signs.
_TOPICS: tuple[_Topic, ...] = (
    _Topic(
        "chest pain",
        r"chest|heart attack|heart|palpitation\w*|angina|cardiac",
        "Chest discomfort has many possible causes, some harmless and some that need prompt assessment, and only "
        "an examination can tell them apart.",
        "Call emergency services straight away for chest pain or pressure that spreads to the arm, neck, jaw or "
        "back, comes with shortness of breath, sweating, nausea or fainting, or feels like the worst you have had.",
    ),
    _Topic(
        "breathing",
        r"breath\w*|asthma|wheez\w*|cough\w*|lungs?|pneumonia|inhaler",
        "Breathing symptoms such as cough or wheeze are common, and a clinician can listen to the chest and "
        "arrange simple tests when they are needed.",
        "Get emergency help for severe difficulty breathing, lips or face turning blue or grey, confusion or "
        "drowsiness, or being unable to speak in full sentences.",
    ),
    _Topic(
        "stroke and headache",
        r"stroke|headaches?|migraines?|head injury|dizz\w*|faint\w*|seizures?",
        "Headaches and dizziness are common and most are not serious, but some need urgent care, especially "
        "when they start suddenly.",
        "Call emergency services for a sudden severe headache, a face that droops, weakness or numbness on one "
        "side, slurred speech, confusion, a seizure, or a headache after a head injury.",
    ),
    _Topic(
        "allergy",
        r"allerg\w*|anaphyla\w*|hives|swelling of the (?:face|lips|tongue|throat)",
        "Allergic reactions range from a mild itchy rash to reactions that affect breathing and circulation.",
        "Call emergency services for swelling of the lips, tongue or throat, difficulty breathing or swallowing, "
        "or feeling faint after contact with a possible trigger.",
    ),
    _Topic(
        "mental health",
        r"suicid\w*|self[- ]harm|depress\w*|anxi\w*|panic|mental|stress\w*|insomnia|sleepless\w*",
        "Mood, anxiety and sleep problems are common and treatable, and talking to someone is a good first step.",
        "If you are thinking about harming yourself or are in danger, call your local emergency number or a "
        "crisis line now, or go to the nearest emergency department.",
    ),
    _Topic(
        "pregnancy",
        r"pregnan\w*|breastfeed\w*|trimester|miscarriage|contracepti\w*",
        "Pregnancy and breastfeeding change how the body handles illness and medicines, so questions are best "
        "taken to a midwife, obstetrician or pharmacist.",
        "Seek urgent care for bleeding, severe abdominal pain, severe headache with vision changes, fewer baby "
        "movements than usual, or fluid leaking before the due date.",
    ),
    _Topic(
        "children",
        r"child\w*|baby|babies|infant\w*|toddler\w*|kids?|newborn\w*|son|daughter|"
        r"(?:[1-9]|1[0-2])[- ]years?[- ]old|\d+[- ](?:weeks?|months?)[- ]old",
        "Children are not small adults: how illness shows and how medicines act change with age and weight.",
        "Seek urgent care for a child who is unusually drowsy or hard to wake, breathes fast or with effort, "
        "has a rash that does not fade under pressure, shows signs of dehydration, or is a young baby with fever.",
    ),
    _Topic(
        "abdominal pain",
        r"stomach|abdom\w*|belly|nausea|vomit\w*|diarrh\w*|constipat\w*|bowel|appendi\w*|reflux|heartburn",
        "Stomach and bowel symptoms are common and often settle on their own, and some need a doctor to examine "
        "the abdomen.",
        "Seek urgent care for severe or worsening abdominal pain, vomiting blood, black or bloody stools, a hard "
        "swollen belly, or signs of dehydration such as very little urine.",
    ),
    _Topic(
        "fever and infection",
        r"fever\w*|temperature|infection\w*|flu|influenza|covid\w*|malaria|sore throat|antibiotic\w*|virus|viral",
        "Fever is the body's response to infection; most infections are viral and settle with rest and fluids, "
        "while some need a clinician's assessment.",
        "Seek urgent care for a fever with a stiff neck, a spreading rash, confusion, difficulty breathing, "
        "fever after travel abroad, or a fever that lasts several days.",
    ),
    _Topic(
        "urinary",
        r"urin\w*|bladder|kidney\w*|pee|peeing|uti",
        "Urinary symptoms are common, and a simple urine test often helps a clinician find out what is behind them.",
        "Seek urgent care for blood in the urine, fever with back or side pain, being unable to pass urine, or "
        "urinary symptoms during pregnancy.",
    ),
    _Topic(
        "diabetes and blood pressure",
        r"diabet\w*|blood sugar|glucose|insulin|hba1c|blood pressure|hypertension|cholesterol|potassium",
        "Long-term conditions such as diabetes and high blood pressure are managed with a care plan made together "
        "with a clinician, and regular check-ups keep it up to date.",
        "Seek urgent care for confusion, fainting, severe thirst with vomiting, chest pain, a sudden severe "
        "headache, or weakness on one side of the body.",
    ),
    _Topic(
        "skin",
        r"skin|rash\w*|eczema|acne|itch\w*|mole\w*|burns?|wounds?|cuts?|bites?",
        "Skin problems such as rashes, eczema and small wounds are common; how a rash looks and how it started "
        "help a clinician understand it.",
        "Seek urgent care for a rash that spreads quickly or does not fade under pressure, a wound with "
        "spreading redness, warmth or fever, or a mole that changes in size, shape or colour.",
    ),
    _Topic(
        "medicines",
        r"medicine\w*|medication\w*|drugs?|pills?|tablets?|doses?|dosage|dosing|mg|ibuprofen|paracetamol|"
        r"acetaminophen|aspirin|amoxicillin|opioid\w*|prescri\w*|supplements?|vitamins?|overdose",
        "Medicines work differently from person to person: the right choice depends on age, weight, pregnancy, "
        "kidney and liver health, allergies and other medicines, which is why a prescriber or pharmacist decides.",
        "Seek urgent help for signs of a serious reaction, such as swelling of the face or throat, difficulty "
        "breathing or a widespread rash, or if someone may have taken too much of a medicine: contact emergency "
        "services or a poison control centre.",
    ),
)

_GENERIC_TOPIC = _Topic(
    "general",
    r"(?!)",  # matches nothing: the default topic
    "Health questions like this one are best answered by a clinician who can ask about your history and examine you.",
    "Call emergency services for severe pain, difficulty breathing, chest pain, fainting, confusion, heavy "
    "bleeding, or any symptom that is sudden and severe.",
)

_QUESTIONS = (
    "Which tests or examinations would help to understand what is going on?",
    "Which options are there for someone in my situation, and what are their benefits and risks?",
    "Which warning signs should make me come back or seek urgent care?",
)


def _topic_for(prompt: str) -> _Topic:
    """The first catalog topic whose keywords occur in the prompt, else the generic topic."""
    for topic in _TOPICS:
        if re.search(rf"\b(?:{topic.keywords})\b", prompt, flags=re.IGNORECASE):
            return topic
    return _GENERIC_TOPIC


def _compose_fallback(lead: str, topic: _Topic) -> str:
    """The fallback text: why, general education, when to seek care, questions for a clinician, disclaimer."""
    questions = "\n".join(f"- {q}" for q in _QUESTIONS)
    body = (
        f"{lead} {topic.education}\n\n"
        f"When to seek care: {topic.warning_signs} For anything that worries you or does not improve, "
        "contact a doctor, nurse or pharmacist.\n\n"
        f"Questions you could ask a clinician:\n{questions}"
    )
    return ensure_disclaimer(body)


def fallback_reply(prompt: str, categories: list[str]) -> str:
    """A safe reply that still helps: why the assistant holds back, general education on the prompt's topic,
    when to seek care, questions to ask a clinician, and the disclaimer.

    The topic comes from a keyword catalog, never from the prompt's own words, so an injected prompt cannot put
    a violation into the fallback. The result is checked once more; the generic version is the last resort.

    Args:
        prompt: The user's request (only used to pick a topic).
        categories: The policy categories the original reply violated (the first one picks the lead sentence).

    Returns:
        The fallback text, ending with the disclaimer exactly once.
    """
    lead = next((_LEADS[c] for c in categories if c in _LEADS), _GENERIC_LEAD)
    return _checked_fallback(lead, _topic_for(prompt or ""), prompt)


@functools.lru_cache(maxsize=256)  # the same question is often blocked again (regenerate, batch re-runs)
def _checked_fallback(lead: str, topic: _Topic, prompt: str) -> str:
    """The composed fallback if the checker passes it, else the generic one (defence in depth)."""
    from alpacare import safety

    reply = _compose_fallback(lead, topic)
    if safety.check(reply, prompt=prompt).violation:
        return _compose_fallback(_GENERIC_LEAD, _GENERIC_TOPIC)
    return reply


# --------------------------------------------------------------------------------------------------------------
# Sentence gate (pure: no model, no torch)
# --------------------------------------------------------------------------------------------------------------


def _normalize_words(text: str) -> str:
    """Lower-case words only, for comparing a sentence with the disclaimer's sentences."""
    words = re.findall(r"[a-z]+", text.lower())
    if words and words[0] == "disclaimer":  # "Disclaimer: This information is ..."
        words = words[1:]
    return " ".join(words)


_DISCLAIMER_SENTENCES = frozenset(
    _normalize_words(s) for s in [DISCLAIMER, *re.split(r"(?<=\.)\s+", DISCLAIMER)] if s.strip()
)


def _is_disclaimer(text: str) -> bool:
    """True for the disclaimer, one of its sentences, or a bare "Disclaimer:" label (the app appends its own)."""
    normalized = _normalize_words(text)
    return normalized in _DISCLAIMER_SENTENCES or (not normalized and "disclaimer" in text.lower())


_ENDS_SENTENCE = re.compile(r"[.!?:;)\]\"'”’*_`]\s*$")


def _is_table_line(text: str) -> bool:
    """A markdown or tab-separated table row (the checker reads a row together with its header)."""
    return text.count("|") >= 2 or "\t" in text.strip(" \n")


def _fences(text: str) -> int:
    """How many code fences (```) a piece holds: an odd number opens or closes a code block."""
    return text.count("```")


class SentenceGate:
    """Holds generated text back until a sentence is complete and the checker passed it.

    A sentence counts as complete once the splitter sees the next one begin (or generation has ended), so a
    sentence is never judged on a prefix ("Take 5" before "00 mg"). Text between sentences (spaces, list markers)
    is checked together with the sentence after it. A table is held back and checked as one block once it ends:
    a row such as "| Ibuprofen | 400 |" is only a dose under its "Dose" header. So is a fenced code block: "if
    score >= 4:" is a decision rule only with the 'return "prescribe antibiotics"' under it. Sentences of the
    disclaimer are dropped: the final reply gets the disclaimer appended exactly once. A sentence that repeats an
    earlier one is dropped too, and ``looping`` tells the caller to stop generating.

    Args:
        prompt: The user's request, passed to the checker (it says who the reply is addressed to).
        check_sentence: ``alpacare.safety.check_sentence``-like callable returning a verdict.
        split_sentences: ``alpacare.safety.split_sentences``-like callable returning ``(start, end)`` offsets.
        check_block: ``alpacare.safety.check``-like callable, for tables (default: ``check_sentence``).
        hold_words: Show nothing until the reply has more than this many words (disclaimer aside); a reply that
            ends within them is checked whole with ``check_block``. ``alpacare.safety.check`` judges a reply that
            short as a terse answer to the question ("5" to "how many days ...?"), which it cannot do sentence
            by sentence; holding the opening back keeps such an answer from being shown first.
        count_words: How many words a piece adds to the reply's length for ``hold_words`` (default: all of its
            words); ``alpacare.safety.terse_words``, so that the gate holds back what the checker judges as terse.
        lead_in: Tells a sentence whose list is held back with it and checked as one block
            (``alpacare.safety.rule_lead_in``): "HbA1c is above 10%" is a decision rule only under "Insulin is
            started when:". Without a list after it, the sentence is checked alone.
    """

    def __init__(
        self,
        prompt: str,
        check_sentence: Callable[..., Any],
        split_sentences: Callable[[str], list[tuple[int, int]]],
        check_block: Callable[..., Any] | None = None,
        hold_words: int = 0,
        count_words: Callable[[str], int] | None = None,
        lead_in: Callable[[str], bool] | None = None,
    ) -> None:
        self.prompt = prompt
        self._lead_in = lead_in
        self._listing = 0  # while a lead-in is held: how many list items were held after it
        self.hold_words = hold_words
        self._count_words = count_words or (lambda text: len(re.findall(r"\w+", text)))
        self._check_sentence = check_sentence
        self._check_block = check_block or check_sentence
        self._split = split_sentences
        self._pending = ""
        self._table = ""
        self._in_code = False
        self.shown = ""
        self.blocked = False
        self.categories: list[str] = []
        self._seen: set[str] = set()
        self.repeats = 0

    @property
    def looping(self) -> bool:
        """True once the model repeats itself (greedy decoding of small models falls into loops)."""
        return self.repeats >= _MAX_REPEATS

    def feed(self, chunk: str, final: bool = False, cut: bool = False) -> bool:
        """Add generated text; approve every complete sentence. Returns True when the shown text grew.

        Args:
            chunk: Newly generated text.
            final: Generation has ended: what is left is one last piece, trailing text included.
            cut: With ``final``, generation was cut short (length cap, stop): an unfinished last sentence is
                dropped rather than shown as a fragment, unless it is all there is.

        After a violation (``blocked``) nothing more is approved.
        """
        if self.blocked:
            return False
        self._pending += chunk
        spans = self._split(self._pending)
        ends = [end for _, end in spans[:-1]]  # the last sentence may still be growing
        if final:
            tail = self._pending[ends[-1] if ends else 0 :]
            if not (cut and (self.shown.strip() or ends) and not _ENDS_SENTENCE.search(tail)):
                ends.append(len(self._pending))
        shown_before, cursor = len(self.shown), 0
        if self.hold_words and not self.shown:
            pieces = [self._pending[a:b] for a, b in zip([0, *ends], ends, strict=False)]
            words = sum(self._count_words(p) for p in pieces if not _is_disclaimer(p))
            if words <= self.hold_words:
                if not final:
                    return False  # too short to tell whether it is all the reply says
                if ends:  # the whole reply is this short: checked as one block, as a terse answer
                    piece, self._pending = self._table + self._pending[: ends[-1]], self._pending[ends[-1] :]
                    self._table, self._listing = "", 0
                    self._approve(piece, self._check_block)
                    return len(self.shown) > shown_before
        for end in ends:
            piece = self._pending[cursor:end]
            cursor = end
            fences = _fences(piece)  # code, like a table, is checked as one block (see _approve_table)
            if fences % 2:
                self._in_code = not self._in_code
            if self._in_code or fences or _is_table_line(piece):
                self._table += piece
                self._listing += bool(self._listing)  # a table under a lead-in: no longer a lone sentence
                continue
            same_line = "\n" not in piece[: len(piece) - len(piece.lstrip())]  # a list item's second sentence
            if self._listing and (is_list_item(piece) or (self._listing > 1 and same_line)):
                self._table += piece
                self._listing += 1
                continue
            if not self._approve_table():
                break
            if self._lead_in and self._lead_in(piece):  # held with the list that may follow it
                self._table, self._listing = piece, 1
                continue
            if not self._approve(piece, self._check_sentence):
                break
        if final and not self.blocked:
            self._approve_table()
        self._pending = self._pending[cursor:]
        return len(self.shown) > shown_before

    def _approve_table(self) -> bool:
        """Check the held-back table (or lead-in and list) as one block; False on a violation."""
        table, self._table = self._table, ""
        alone, self._listing = self._listing == 1, 0  # a lead-in without a list is a sentence like any other
        return self._approve(table, self._check_sentence if alone else self._check_block)

    def _approve(self, piece: str, check: Callable[..., Any]) -> bool:
        """Show ``piece`` if it passes ``check`` (disclaimer sentences are dropped); False on a violation."""
        if not piece.strip() or _is_disclaimer(piece):
            return True
        words = _normalize_words(piece)
        if words.count(" ") >= 2 and words in self._seen:  # a repeated sentence of 3+ words is a loop, not content
            self.repeats += 1
            return True
        verdict = check(piece.strip(), prompt=self.prompt)
        if verdict.violation:
            self.blocked, self.categories = True, list(verdict.categories)
            return False
        self.shown += piece
        self._seen.add(words)
        return True

    @property
    def text(self) -> str:
        """The approved text, as shown."""
        return self.shown.strip()


# --------------------------------------------------------------------------------------------------------------
# Generation worker
# --------------------------------------------------------------------------------------------------------------


@functools.cache
def _event_stopping_criteria_class() -> type:
    """``StoppingCriteria`` subclass that stops when any of its events is set (built lazily: no torch at import)."""
    import torch
    from transformers import StoppingCriteria

    class EventStoppingCriteria(StoppingCriteria):
        """Stop every sequence of the batch once one of ``events`` is set (client gone, violation, close)."""

        def __init__(self, *events: threading.Event) -> None:
            self.events = events
            self.length = 0  # sequence length (prompt + generated) at the last step, read after generation

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            self.length = int(input_ids.shape[-1])
            stop = any(event.is_set() for event in self.events)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return EventStoppingCriteria


def event_stopping_criteria(*events: threading.Event | None) -> Any:
    """A ``StoppingCriteriaList`` that stops generation as soon as one of ``events`` is set."""
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList([_event_stopping_criteria_class()(*(e for e in events if e is not None))])


def encode_prompt(model: Any, tokenizer: Any, prompt: str, input_text: str | None = None) -> dict[str, Any]:
    """``input_ids`` and ``attention_mask`` (batch of one, on the model's device) of the training-format prompt.

    The ids come from ``alpacare.data.encode_prompt``, the tokenization training masks as the prompt.

    Raises:
        ValueError: The prompt is empty or does not fit the model's context.
    """
    import torch

    from alpacare import data

    if not (prompt or "").strip():
        raise ValueError("The prompt is empty.")
    ids = data.encode_prompt(tokenizer, format_prompt(tokenizer, prompt, input_text))
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if context and len(ids) >= context:
        raise ValueError(f"The prompt is {len(ids)} tokens; the model's context is {context} tokens.")
    input_ids = torch.tensor([ids], device=model.device)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def generation_kwargs(model: Any, tokenizer: Any, max_new_tokens: int, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate`` arguments: greedy by default (repeatable), EOS and pad from the model or tokenizer."""
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
    config = getattr(model, "generation_config", None)
    if getattr(config, "eos_token_id", None) is None and tokenizer.eos_token_id is not None:
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    if getattr(config, "pad_token_id", None) is None:
        kwargs["pad_token_id"] = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
    kwargs.update(gen_kwargs)
    if not kwargs.get("do_sample"):
        # Sampling settings from a Hub generation_config (e.g. temperature=0.6) only trigger warnings when greedy.
        for key in ("temperature", "top_p", "top_k"):
            kwargs.setdefault(key, None)
    return kwargs


# Per model: (state key, KV cache of the fixed prompt head). Weak keys: a model that is dropped frees its cache.
_PREFIX_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PREFIX_LOCK = threading.Lock()
_SENTINEL = "\u2063ALPACARE\u2063"  # stands in for the user's message when locating the fixed prompt head


def _model_state(model: Any) -> int:
    """Fingerprint of the weights and adapter switches, so a cached prefix is never reused after they change.

    ``_version`` counts in-place updates (optimizer steps, ``load_state_dict``); ``data_ptr`` changes on ``.to()``;
    PEFT layers expose ``disable_adapters`` / ``active_adapters`` (``with model.disable_adapter():``).
    """
    state: list[Any] = [model.training]
    state += [(p.data_ptr(), p._version) for p in model.parameters()]
    state += [
        (m.disable_adapters, str(getattr(m, "active_adapters", None)))
        for m in model.modules()
        if hasattr(m, "disable_adapters")
    ]
    return hash(tuple(state))


def prompt_prefix_cache(model: Any, tokenizer: Any, input_ids: Any) -> Any | None:
    """A private copy of the KV cache of the prompt's fixed head (the safety prefix), or None.

    Every prompt starts with the same ~100 tokens (system safety prefix + chat markup); computing their keys and
    values once per model and reusing a copy cuts time-to-first-token (the transformers "prefix cache" recipe:
    ``generate(..., past_key_values=copy.deepcopy(prompt_cache))``). Greedy outputs are identical. Returns None
    when the model is not a torch module, the prompt does not start with the head's tokens, or anything fails.
    """
    import torch

    if not isinstance(model, torch.nn.Module) or input_ids.shape[0] != 1:
        return None
    try:
        from transformers import DynamicCache

        from alpacare import data

        text = format_prompt(tokenizer, _SENTINEL)
        head = text[: text.find(_SENTINEL)]
        head_ids = torch.tensor([data.encode_prompt(tokenizer, head)], device=input_ids.device)
        n = head_ids.shape[-1]
        if not head or n >= input_ids.shape[-1] or not torch.equal(input_ids[0, :n], head_ids[0]):
            return None
        key = (_model_state(model), tuple(head_ids[0].tolist()))
        with _PREFIX_LOCK:
            entry = _PREFIX_CACHES.get(model)
            if entry is None or entry[0] != key:
                with torch.no_grad():
                    cache = DynamicCache(config=getattr(model, "config", None))
                    cache = model(input_ids=head_ids, past_key_values=cache, use_cache=True).past_key_values
                entry = (key, cache)
                _PREFIX_CACHES[model] = entry
            return copy.deepcopy(entry[1])
    except Exception as error:  # noqa: BLE001 - an optimisation must never break generation
        log.warning(
            "prompt prefix cache unavailable (%s: %s); prefilling the whole prompt", type(error).__name__, error
        )
        return None


def _run_generate(model: Any, kwargs: dict[str, Any], streamer: Any, errors: list[BaseException]) -> None:
    """Thread target: ``model.generate`` (with the cached prompt prefix); on an error, keep it and end the stream."""
    try:
        if kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = prompt_prefix_cache(model, streamer.tokenizer, kwargs["input_ids"])
        model.generate(**kwargs)
    except BaseException as error:  # noqa: BLE001 - re-raised in the consumer thread
        errors.append(error)
        streamer.end()


def _stream_text(streamer: Any, worker: threading.Thread) -> Iterator[str]:
    """Text chunks from the streamer until it ends (or the worker died without ending it)."""
    while True:
        try:
            chunk = next(streamer)  # raises queue.Empty after the streamer's timeout
        except StopIteration:
            return
        except queue.Empty:
            if worker.is_alive():
                continue
            return
        yield chunk


def stream_safe_generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    input_text: str | None = None,
    *,
    max_new_tokens: int = 256,
    stop_event: threading.Event | None = None,
    **gen_kwargs: Any,
) -> Iterator[StreamUpdate]:
    """Stream a reply sentence by sentence, each sentence checked before it is shown.

    Args:
        model: A causal LM (plain or PEFT).
        tokenizer: Its tokenizer.
        prompt: The user's instruction.
        input_text: Optional input (MedInstruct "input" field).
        max_new_tokens: Length cap of the generated reply.
        stop_event: Set it to stop generation (e.g. the client went away).
        **gen_kwargs: Passed to ``model.generate`` (``do_sample=True, temperature=...`` for sampling).

    Yields:
        Cumulative ``StreamUpdate`` s; the last one has ``done=True`` and ends with the disclaimer exactly once,
        or is the fallback reply when a sentence (or the whole reply) violated the policy.
    """
    from transformers import TextIteratorStreamer

    from alpacare import safety

    encoded = encode_prompt(model, tokenizer, prompt, input_text)
    question = user_message(prompt, input_text)  # what the checker reads to know whom the reply addresses
    halt = threading.Event()  # set on a violation or when the consumer closes the generator
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=_POLL_SECONDS, skip_special_tokens=True)
    kwargs = generation_kwargs(model, tokenizer, max_new_tokens, gen_kwargs)
    stopping = event_stopping_criteria(halt, stop_event)
    kwargs.update(encoded, streamer=streamer, stopping_criteria=stopping)
    errors: list[BaseException] = []
    worker = threading.Thread(target=_run_generate, args=(model, kwargs, streamer, errors), daemon=True)
    hold = safety.TERSE_MAX_WORDS if safety.terse_question(question) else 0  # see SentenceGate's hold_words
    gate = SentenceGate(
        question,
        safety.check_sentence,
        safety.split_sentences,
        safety.check,
        hold_words=hold,
        count_words=safety.terse_words,
        lead_in=safety.list_lead_in,
    )
    worker.start()
    try:
        for chunk in _stream_text(streamer, worker):
            if gate.feed(chunk):
                yield StreamUpdate(gate.text, done=False, blocked=False)
            if gate.blocked or gate.looping:
                halt.set()  # a violating sentence is never shown; a loop adds nothing: stop spending CPU
                break
        if errors:
            raise errors[0]
        if not (gate.blocked or gate.looping):  # after a loop, the text still pending is more of the same
            n_new = stopping[0].length - int(encoded["input_ids"].shape[-1])
            cut = n_new >= max_new_tokens or bool(stop_event and stop_event.is_set())
            gate.feed("", final=True, cut=cut)
        yield final_update(gate, question)
    finally:
        halt.set()
        worker.join(timeout=_JOIN_SECONDS)


def final_update(gate: SentenceGate, prompt: str) -> StreamUpdate:
    """The last update: the approved reply re-checked as a whole, with the disclaimer; else the fallback."""
    from alpacare import safety

    if gate.blocked:
        return StreamUpdate(
            fallback_reply(prompt, gate.categories), done=True, blocked=True, categories=gate.categories
        )
    body = ensure_disclaimer(gate.text)[: -len(DISCLAIMER)].strip()  # drops any disclaimer copy the model wrote
    if not body:  # the model said nothing useful: the fallback still helps, but nothing was blocked
        return StreamUpdate(fallback_reply(prompt, []), done=True, blocked=False)
    verdict = safety.check(body, prompt=prompt)
    if verdict.violation:
        categories = list(verdict.categories)
        return StreamUpdate(fallback_reply(prompt, categories), done=True, blocked=True, categories=categories)
    return StreamUpdate(ensure_disclaimer(body), done=True, blocked=False)


def safe_generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    input_text: str | None = None,
    *,
    max_new_tokens: int = 256,
    **gen_kwargs: Any,
) -> SafeReply:
    """Generate a checked reply: the final update of ``stream_safe_generate`` (same checks as the app).

    Returns:
        ``SafeReply`` with the reply (ending with the disclaimer exactly once, or the fallback), ``blocked`` and
        the violated ``categories``.
    """
    # deque(maxlen=1) keeps only the final update while draining the stream.
    updates = deque(
        stream_safe_generate(model, tokenizer, prompt, input_text, max_new_tokens=max_new_tokens, **gen_kwargs),
        maxlen=1,
    )
    last = updates[0]  # the stream always ends with a final update (done=True)
    return SafeReply(reply=last.text, blocked=last.blocked, categories=list(last.categories))
