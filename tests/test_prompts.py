"""The one template and the label masking: chat and Alpaca tokenizers, truncation, train prompt == serve prompt."""

from __future__ import annotations

import copy

import pytest

from alpacare.data import IGNORE_INDEX, encode_prompt, tokenize_example
from alpacare.prompts import DISCLAIMER, SAFETY_PREFIX, format_prompt, prompt_style

EXAMPLE = {
    "instruction": "Explain what the pancreas does.",
    "input": "<noinput>",
    "output": "The pancreas makes digestive enzymes and hormones such as insulin.",
}
WITH_INPUT = {
    "instruction": "Summarize the following text in one sentence.",
    "input": "Handwashing with soap removes germs. It matters before eating and after using the toilet.",
    "output": "Washing hands with soap removes germs, especially before eating and after the toilet.",
}
LONG = {
    "instruction": "Explain how the heart pumps blood.",
    "input": "",
    "output": " ".join(f"Sentence number {i} describes one more part of the heart." for i in range(120)),
}


@pytest.fixture(scope="module")
def alpaca_tokenizer(tokenizer):
    """SmolLM2's tokenizer without its chat template: formats like a plain LM (gpt-neo) with the Alpaca template."""
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain


@pytest.fixture(params=["chat", "alpaca"])
def any_tokenizer(request, tokenizer, alpaca_tokenizer):
    """Both prompt styles."""
    return tokenizer if request.param == "chat" else alpaca_tokenizer


def prompt_length(tokenizer, example) -> int:
    return len(encode_prompt(tokenizer, format_prompt(tokenizer, example["instruction"], example["input"])))


class TestTemplate:
    def test_style_follows_the_tokenizer(self, any_tokenizer):
        expected = "chat" if any_tokenizer.chat_template else "alpaca"
        assert prompt_style(any_tokenizer) == expected

    def test_prompt_has_prefix_instruction_and_input(self, any_tokenizer):
        text = format_prompt(any_tokenizer, WITH_INPUT["instruction"], WITH_INPUT["input"])
        assert SAFETY_PREFIX in text
        assert text.index(SAFETY_PREFIX) < text.index(WITH_INPUT["instruction"]) < text.index(WITH_INPUT["input"])

    def test_chat_prompt_puts_the_prefix_in_the_system_turn_and_opens_the_assistant_turn(self, tokenizer):
        text = format_prompt(tokenizer, EXAMPLE["instruction"])
        assert text.startswith(f"<|im_start|>system\n{SAFETY_PREFIX}<|im_end|>")
        assert text.endswith("<|im_start|>assistant\n")

    def test_alpaca_prompt_ends_at_the_response_heading(self, alpaca_tokenizer):
        text = format_prompt(alpaca_tokenizer, WITH_INPUT["instruction"], WITH_INPUT["input"])
        assert "### Instruction:" in text and "### Input:" in text and text.endswith("### Response:\n")

    @pytest.mark.parametrize("no_input", ["<noinput>", "", "   ", None])
    def test_noinput_means_no_input(self, any_tokenizer, no_input):
        assert format_prompt(any_tokenizer, "Explain sleep.", no_input) == format_prompt(
            any_tokenizer, "Explain sleep."
        )


class TestMasking:
    @pytest.mark.parametrize("example", [EXAMPLE, WITH_INPUT])
    def test_labels_are_minus_100_exactly_over_the_prompt(self, any_tokenizer, example):
        features = tokenize_example(any_tokenizer, example)
        n_prompt = prompt_length(any_tokenizer, example)
        labels, ids = features["labels"], features["input_ids"]
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]  # every response token carries a loss
        assert IGNORE_INDEX not in labels[n_prompt:]
        assert features["attention_mask"] == [1] * len(ids)

    def test_target_is_answer_then_disclaimer_once_then_eos(self, any_tokenizer):
        features = tokenize_example(any_tokenizer, EXAMPLE)
        target = [t for t in features["labels"] if t != IGNORE_INDEX]
        assert target[-1] == any_tokenizer.eos_token_id
        assert target.count(any_tokenizer.eos_token_id) == 1
        text = any_tokenizer.decode(target[:-1])
        assert text == f"{EXAMPLE['output']}\n\n{DISCLAIMER}"

    def test_disclaimer_already_in_the_output_is_not_repeated(self, any_tokenizer):
        example = {**EXAMPLE, "output": f"{EXAMPLE['output']}\n\n{DISCLAIMER}"}
        assert tokenize_example(any_tokenizer, example) == tokenize_example(any_tokenizer, EXAMPLE)

    def test_prompt_tokens_are_the_prompt_text(self, any_tokenizer):
        features = tokenize_example(any_tokenizer, WITH_INPUT)
        n_prompt = prompt_length(any_tokenizer, WITH_INPUT)
        decoded = any_tokenizer.decode(features["input_ids"][:n_prompt])
        assert decoded.endswith(format_prompt(any_tokenizer, WITH_INPUT["instruction"], WITH_INPUT["input"]))


class TestTruncation:
    def test_default_max_length_is_512(self, tokenizer):
        assert len(tokenize_example(tokenizer, LONG)["input_ids"]) <= 512
        assert len(tokenize_example(tokenizer, LONG, max_length=4096)["input_ids"]) > 512

    # room: tokens left after the prompt; the disclaimer + EOS take ~30 of them. With 40, no whole sentence of the
    # answer fits and the cut falls between words; with more room, after the last whole sentence that fits.
    @pytest.mark.parametrize(("room", "whole_sentences"), [(40, False), (80, True), (200, True)])
    def test_long_answers_keep_the_prompt_and_end_with_disclaimer_and_eos(self, any_tokenizer, room, whole_sentences):
        n_prompt = prompt_length(any_tokenizer, LONG)
        features = tokenize_example(any_tokenizer, LONG, max_length=n_prompt + room)
        ids, labels = features["input_ids"], features["labels"]
        assert len(ids) <= n_prompt + room
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt and IGNORE_INDEX not in labels[n_prompt:]
        assert ids[-1] == any_tokenizer.eos_token_id
        body, _, tail = any_tokenizer.decode(ids[n_prompt:-1]).rpartition("\n\n")
        assert tail == DISCLAIMER
        assert body and LONG["output"].startswith(body)
        assert body.endswith("of the heart.") == whole_sentences
        assert LONG["output"][len(body)] == " "  # never mid-word

    def test_prompt_longer_than_max_length_gives_no_label(self, any_tokenizer):
        features = tokenize_example(any_tokenizer, EXAMPLE, max_length=20)
        assert len(features["input_ids"]) == 20
        assert features["labels"] == [IGNORE_INDEX] * 20


class TestTrainServe:
    """The prompt tokens training masks are exactly the tokens ``safe_generate`` feeds the model."""

    @pytest.mark.parametrize("example", [EXAMPLE, WITH_INPUT])
    def test_safe_generate_sees_the_training_prompt(self, any_tokenizer, tiny_model, example, monkeypatch):
        from alpacare.generation import safe_generate

        seen = []
        generate = tiny_model.generate

        def recording_generate(*args, **kwargs):
            seen.append(kwargs["input_ids"][0].tolist())
            return generate(*args, **kwargs)

        monkeypatch.setattr(tiny_model, "generate", recording_generate)
        safe_generate(tiny_model, any_tokenizer, example["instruction"], example["input"], max_new_tokens=2)
        n_prompt = prompt_length(any_tokenizer, example)
        assert seen == [tokenize_example(any_tokenizer, example)["input_ids"][:n_prompt]]
