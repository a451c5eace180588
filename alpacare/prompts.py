"""The one prompt format, shared by training and serving (no train/serve drift).

The system safety prefix states the rules of ``SAFETY_POLICY.md`` in a few sentences. Base models that
ship a chat template (SmolLM2-Instruct, Llama-3.2-Instruct) get it as the system message through
``tokenizer.apply_chat_template``; plain LMs (gpt-neo) get an Alpaca-style text template.
"""

from __future__ import annotations

import re
from typing import Any, Literal

SAFETY_PREFIX = (
    "You are AlpaCare, a medical instruction and education assistant. Give general health education only. "
    "Never tell a person which condition they have or probably have. Never tell anyone to take, start, stop or "
    "change a medicine or treatment. Never state a dose, strength, frequency or duration of any medicine or "
    "supplement. Never give a rule or threshold for deciding a diagnosis or treatment. Encourage seeing a "
    "qualified healthcare professional, name emergency warning signs when relevant, and end every reply with "
    "the disclaimer."
)

DISCLAIMER = (
    "This information is for general education only and is not medical advice, diagnosis or treatment. "
    "Please consult a qualified healthcare professional about your situation."
)

# Inputs that mean "no input" in MedInstruct-52k (the Hub copy uses the literal "<noinput>").
_NO_INPUT = {"", "<noinput>", "<no input>", "noinput", "none", "n/a"}

ALPACA_TEMPLATE = "{prefix}\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n"

PromptStyle = Literal["chat", "alpaca"]


def normalize_input(text: str | None) -> str:
    """Return the example's input, or "" when it means no input (blank or ``<noinput>``)."""
    text = (text or "").strip()
    return "" if text.lower() in _NO_INPUT else text


def user_message(instruction: str, input_text: str | None = None) -> str:
    """The user turn: the instruction, then the optional input under its own heading."""
    input_text = normalize_input(input_text)
    instruction = instruction.strip()
    return f"{instruction}\n\nInput:\n{input_text}" if input_text else instruction


def prompt_style(tokenizer: Any) -> PromptStyle:
    """``chat`` when the tokenizer has a chat template, else ``alpaca``."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"


def build_messages(instruction: str, input_text: str | None = None) -> list[dict[str, str]]:
    """System safety prefix + user turn, in the messages format."""
    return [
        {"role": "system", "content": SAFETY_PREFIX},
        {"role": "user", "content": user_message(instruction, input_text)},
    ]


def format_prompt(tokenizer: Any, instruction: str, input_text: str | None = None) -> str:
    """The full prompt text, ending where the model's response starts.

    Used by training (as the masked prompt) and by ``safe_generate`` (as the generation prompt).
    """
    if prompt_style(tokenizer) == "chat":
        return tokenizer.apply_chat_template(
            build_messages(instruction, input_text), tokenize=False, add_generation_prompt=True
        )
    input_text = normalize_input(input_text)
    input_block = f"### Input:\n{input_text}\n\n" if input_text else ""
    return ALPACA_TEMPLATE.format(prefix=SAFETY_PREFIX, instruction=instruction.strip(), input_block=input_block)


_DISCLAIMER_RE = re.compile(r"\s*" + r"\s+".join(re.escape(w) for w in DISCLAIMER.split()) + r"\s*", re.IGNORECASE)


def ensure_disclaimer(text: str) -> str:
    """Return ``text`` ending with the disclaimer exactly once (earlier copies are removed)."""
    body = _DISCLAIMER_RE.sub(" ", text).strip()
    return f"{body}\n\n{DISCLAIMER}" if body else DISCLAIMER


def format_target(output: str, tokenizer: Any | None = None) -> str:
    """The training target: the answer, the disclaimer (seed 000), then the tokenizer's EOS text if given."""
    eos = getattr(tokenizer, "eos_token", None) or "" if tokenizer is not None else ""
    return ensure_disclaimer(output) + eos
