"""Latency of sentence-gated streaming on the embedded SmolLM2: what the gate adds to the raw stream.

    HF_HUB_OFFLINE=1 python benchmarks/stream_latency.py --json

For each prompt, the same greedy generation runs twice: raw (``TextIteratorStreamer`` only) and through
``stream_safe_generate``. Reported (medians over prompts, p95 / max where useful):

* ``ttft_s``: time to the first token (a one-token generation, whole prompt prefilled);
* ``ttft_prefix_cached_s``: the same with the KV cache of the fixed prompt head reused (what the app does);
* ``first_sentence_raw_s``: when the raw stream (prefix cached) first holds a complete sentence (by the checker's
  splitter: the next sentence has begun), i.e. the earliest moment any sentence gate could show it;
* ``first_update_s``: when ``stream_safe_generate`` yields its first update (a checked sentence, or the final
  fallback when the first sentence violates);
* ``gate_delay_s``: first_update_s - first_sentence_raw_s, the latency the check itself adds;
* ``tokens_per_s_raw`` / ``tokens_per_s_gated``: generated tokens per second of wall time.

The app's goal is a first streamed sentence within 1.5 s. The checker is loaded before timing (as the app does
at start-up); its load time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

PROMPTS = [
    "What are the common symptoms of migraine?",
    "How can I lower my risk of type 2 diabetes?",
    "Explain what an MRI scan is and how to prepare for one.",
    "What is the difference between a cold and the flu?",
    "I am a doctor. What dose of ibuprofen should I give an adult with back pain?",
    "What do I have? I have a burning feeling when I pee and I need to go all the time.",
]


def count_forward_calls(model) -> list[int]:
    """Wrap ``model.forward`` to count decoding steps (one per generated token)."""
    calls = [0]
    original = model.forward

    def forward(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    model.forward = forward
    return calls


def raw_run(model, tokenizer, prompt: str, max_new_tokens: int, calls: list[int], prefix_cache: bool) -> dict:
    """Plain streamed generation: time to first token and to the first complete sentence."""
    from transformers import TextIteratorStreamer

    from alpacare import safety
    from alpacare.generation import encode_prompt, generation_kwargs, prompt_prefix_cache

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = generation_kwargs(model, tokenizer, max_new_tokens, {})
    kwargs.update(encode_prompt(model, tokenizer, prompt), streamer=streamer)
    start = time.perf_counter()
    if prefix_cache:  # timed: the copy of the cached prefix is part of the request
        kwargs["past_key_values"] = prompt_prefix_cache(model, tokenizer, kwargs["input_ids"])
    calls[0] = 0
    worker = threading.Thread(target=model.generate, kwargs=kwargs)
    worker.start()
    text, ttft, first_sentence = "", None, None
    for chunk in streamer:
        now = time.perf_counter() - start
        text += chunk
        if ttft is None and chunk:
            ttft = now
        if first_sentence is None and len(safety.split_sentences(text)) >= 2:
            first_sentence = now
    worker.join()
    total = time.perf_counter() - start
    return {"ttft": ttft, "first_sentence": first_sentence or total, "total": total, "tokens": calls[0]}


def gated_run(model, tokenizer, prompt: str, max_new_tokens: int, calls: list[int]) -> dict:
    """``stream_safe_generate``: time to the first update and in total."""
    from alpacare.generation import stream_safe_generate

    calls[0] = 0
    start = time.perf_counter()
    first, last = None, None
    for update in stream_safe_generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens):
        if first is None:
            first = time.perf_counter() - start
        last = update
    total = time.perf_counter() - start
    return {"first_update": first, "total": total, "tokens": calls[0], "blocked": last.blocked}


def p95(values: list[float]) -> float:
    """95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print one JSON line (``--json``) or a readable summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--base", default=None, help="base model (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--prompts", type=Path, default=None, help='JSONL with {"prompt"} per line (optional)')
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    from alpacare import safety
    from alpacare.modeling import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = PROMPTS
    if args.prompts:
        prompts = [json.loads(line)["prompt"] for line in args.prompts.read_text().splitlines() if line.strip()]
    loaded = load_model(args.base, adapter=args.adapter)
    start = time.perf_counter()
    safety.check("Warm-up sentence for the checker.", prompt="warm-up")
    checker_load = time.perf_counter() - start
    calls = count_forward_calls(loaded.model)
    raw_run(loaded.model, loaded.tokenizer, "Hello.", 8, calls, True)  # warm-up: allocations, prefix cache

    rows = []
    for prompt in prompts:
        # Time to first token = a one-token generation (the streamer itself holds the first word back).
        full = raw_run(loaded.model, loaded.tokenizer, prompt, 1, calls, False)
        cached = raw_run(loaded.model, loaded.tokenizer, prompt, 1, calls, True)
        raw = raw_run(loaded.model, loaded.tokenizer, prompt, args.max_new_tokens, calls, True)
        gated = gated_run(loaded.model, loaded.tokenizer, prompt, args.max_new_tokens, calls)
        rows.append({"prompt": prompt, "full_prefill": full, "cached": cached, "raw": raw, "gated": gated})

    first_raw = [r["raw"]["first_sentence"] for r in rows]
    first_gated = [r["gated"]["first_update"] for r in rows]
    delays = [r["gated"]["first_update"] - r["raw"]["first_sentence"] for r in rows]
    result = {
        "benchmark": "stream_latency",
        "model": loaded.label,
        "torch_threads": torch.get_num_threads(),
        "n_prompts": len(rows),
        "max_new_tokens": args.max_new_tokens,
        "checker_load_s": round(checker_load, 3),
        "ttft_s": round(statistics.median(r["full_prefill"]["total"] for r in rows), 3),
        "ttft_prefix_cached_s": round(statistics.median(r["cached"]["total"] for r in rows), 3),
        "first_sentence_raw_s": {"median": round(statistics.median(first_raw), 3), "max": round(max(first_raw), 3)},
        "first_update_s": {
            "median": round(statistics.median(first_gated), 3),
            "p95": round(p95(first_gated), 3),
            "max": round(max(first_gated), 3),
        },
        "gate_delay_s": {"median": round(statistics.median(delays), 3), "max": round(max(delays), 3)},
        "tokens_per_s_raw": round(sum(r["raw"]["tokens"] for r in rows) / sum(r["raw"]["total"] for r in rows), 1),
        "tokens_per_s_gated": round(
            sum(r["gated"]["tokens"] for r in rows) / sum(r["gated"]["total"] for r in rows), 1
        ),
        "blocked": sum(r["gated"]["blocked"] for r in rows),
        "goal_first_sentence_s": 1.5,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for row in rows:
            print(
                f"{row['raw']['first_sentence']:6.2f}s raw  {row['gated']['first_update']:6.2f}s gated  "
                f"{row['raw']['tokens']:4d}/{row['gated']['tokens']:4d} tok  "
                f"{'BLOCKED ' if row['gated']['blocked'] else ''}{row['prompt'][:60]}"
            )
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
