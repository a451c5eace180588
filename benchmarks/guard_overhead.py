"""How much the safety checker adds to a reply: latency for a 300-word reply, and its share of generation time.

    . .venv/bin/activate && HF_HUB_OFFLINE=1 python benchmarks/guard_overhead.py --json

Times ``alpacare.safety.check`` on a fixed 300-word reply (warm: encoder and head loaded, p50/p95 over
``--runs``), then generates the same amount of text (~400 tokens) with the embedded SmolLM2 and reports the
checker's share of that generation time. Targets (issue 3): p95 <= 25 ms and <= 1 % of generation time. Other
processes on the machine make timings noisy; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from alpacare.safety import check, split_sentences

# A 300-word educational reply of the kind the assistant gives (written for this benchmark).
REPLY = (
    "High blood pressure, also called hypertension, means that the force of blood against the artery walls stays "
    "higher than it should over time. It often causes no symptoms at all, which is why it is sometimes called a "
    "silent condition, and why regular checks matter even when you feel well. Over the years, raised pressure can "
    "damage the heart, the brain, the kidneys and the eyes. Many things influence blood pressure. Age and family "
    "history play a part, and so do habits that can be changed. Eating a lot of salt, drinking alcohol often, "
    "smoking, being inactive and carrying extra weight all tend to push it up. Stress and poor sleep can add to "
    "the problem. A diet rich in vegetables, fruit, whole grains and low-fat dairy, with less processed food, "
    "helps many people. Regular physical activity, such as brisk walking on most days, strengthens the heart and "
    "blood vessels. Cutting down on alcohol and stopping smoking protect the arteries in more than one way. "
    "Doctors measure blood pressure with a cuff around the upper arm, and they usually confirm a high reading on "
    "more than one occasion, sometimes with a home or ambulatory monitor, because a single reading can be "
    "misleading. When lifestyle changes are not enough, doctors can choose among several classes of medicines, "
    "and they tailor the choice to each person. Only your own doctor can tell which approach suits you. Keep a "
    "record of any home readings and bring it to your appointments, together with a list of all the medicines "
    "and supplements you take. Ask your doctor or pharmacist whether any of them can raise blood pressure. Seek "
    "emergency care at once if you have a severe headache, chest pain, shortness of breath, weakness on one side, "
    "confusion or trouble seeing, because these can be signs of a dangerous complication. "
    "This information is for general education only and is not medical advice, diagnosis or treatment. "
    "Please consult a qualified healthcare professional about your situation."
)


def time_check(text: str, runs: int) -> list[float]:
    """Milliseconds per ``check`` call, after one warm-up call."""
    check(text)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        check(text)
        timings.append(1000 * (time.perf_counter() - start))
    return timings


def time_generation(new_tokens: int) -> tuple[float, int]:
    """Seconds to generate ``new_tokens`` tokens with the embedded SmolLM2 (greedy, fixed length)."""
    import torch

    from alpacare.modeling import load_model
    from alpacare.prompts import format_prompt

    loaded = load_model()
    prompt = format_prompt(loaded.tokenizer, "Explain high blood pressure and how lifestyle affects it.")
    inputs = loaded.tokenizer(prompt, return_tensors="pt")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.inference_mode():
        loaded.model.generate(**inputs, max_new_tokens=8, do_sample=False)  # warm-up
        start = time.perf_counter()
        output = loaded.model.generate(**inputs, **kwargs)
    seconds = time.perf_counter() - start
    return seconds, int(output.shape[1] - inputs["input_ids"].shape[1])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation."""
    return float(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]) if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="timed check() calls")
    parser.add_argument("--new-tokens", type=int, default=400, help="generated tokens (~300 words)")
    parser.add_argument("--skip-generation", action="store_true", help="only time the checker")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args(argv)

    import torch

    timings = time_check(REPLY, args.runs)
    result = {
        "reply_words": len(REPLY.split()),
        "reply_sentences": len(split_sentences(REPLY)),
        "check_ms_p50": round(statistics.median(timings), 2),
        "check_ms_p95": round(percentile(timings, 95), 2),
        "check_ms_max": round(max(timings), 2),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if not args.skip_generation:
        seconds, tokens = time_generation(args.new_tokens)
        result |= {
            "generation_s": round(seconds, 2),
            "generated_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "check_share_of_generation_pct": round(100 * result["check_ms_p50"] / (1000 * seconds), 3),
        }
    result["targets"] = {"check_ms_p95": 25, "check_share_of_generation_pct": 1.0}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
