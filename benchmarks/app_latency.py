"""Latency of the served app (``python app.py`` on the embedded SmolLM2), as a user or a script sees it.

    HF_HUB_OFFLINE=1 python benchmarks/app_latency.py --json

From a warm model cache (the embedded model's HF copy already built; built before timing if not):

* ``ready_s``: from starting ``python app.py`` to the server answering with the model loaded (target ≤ 10 s),
  and ``ready_cpu_s``, the CPU seconds the app used until then (what start-up costs without other processes);
* ``first_sentence_s``: from submitting a chat message (``/chat`` through ``gradio_client``) to the first streamed
  update that shows reply text, i.e. the first checked sentence (target ≤ 1.5 s on SmolLM2-135M); median and
  max over the prompts, after one untimed warm-up request;
* ``generate_p50_s`` / ``generate_p95_s``: latency of ``/generate`` with ``--clients`` concurrent clients (8) each
  sending ``--requests`` prompts; the app runs ``--concurrency`` generations at once and queues the rest, so
  this includes queueing.

The machine's load average is reported with the figures: other processes on the same cores slow everything.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "What are the common symptoms of migraine?",
    "How can I lower my risk of type 2 diabetes?",
    "Explain what an MRI scan is.",
    "What is the difference between a cold and the flu?",
    "Why is regular exercise good for the heart?",
]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, max_new_tokens: int, concurrency: int, data_dir: str) -> tuple[Any, float, float]:
    """Start ``python app.py``; return it, the seconds until it served its page, and the CPU seconds it used."""
    import httpx
    import psutil

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "ALPACARE_DATA_DIR": data_dir,
        "ALPACARE_MAX_NEW_TOKENS": str(max_new_tokens),
        "ALPACARE_CONCURRENCY": str(concurrency),
        "GRADIO_SERVER_PORT": str(port),
    }
    env.pop("ALPACARE_REVIEWERS", None)
    env.pop("ALPACARE_REVIEWERS_FILE", None)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/"
    while time.perf_counter() - started < 300:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                ready = time.perf_counter() - started
                cpu = psutil.Process(proc.pid).cpu_times()
                return proc, ready, cpu.user + cpu.system
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("app.py did not start within 300 s")


def first_sentence_latency(client, prompt: str) -> float:
    """Seconds from submitting ``prompt`` to the first streamed update showing reply text."""
    started = time.perf_counter()
    job = client.submit(prompt, [], api_name="/chat")
    while not job.done():
        outputs = job.outputs()
        if outputs and _reply_text(outputs[-1]) not in ("", "…"):
            elapsed = time.perf_counter() - started
            job.result()  # let it finish before the next measurement
            return elapsed
        time.sleep(0.005)
    return time.perf_counter() - started  # the whole reply arrived in one update


def _reply_text(output) -> str:
    history = output[0]
    content = history[-1]["content"] if history else ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def main(argv: list[str] | None = None) -> dict:
    """Run the three measurements; print one JSON line with ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="/generate calls per client")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=2, help="the app's ALPACARE_CONCURRENCY")
    args = parser.parse_args(argv)

    from gradio_client import Client

    from alpacare.modeling import embedded_model_path

    embedded_model_path()  # warm cache: built once, outside the timing
    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, ready_s, ready_cpu_s = start_app(port, args.max_new_tokens, args.concurrency, data_dir)
        try:
            url = f"http://127.0.0.1:{port}/"
            client = Client(url, verbose=False)
            client.predict(PROMPTS[0], api_name="/generate")  # warm-up (untimed)
            firsts = [first_sentence_latency(client, prompt) for prompt in PROMPTS]

            clients = [Client(url, verbose=False) for _ in range(args.clients)]
            latencies: list[float] = []
            lock = threading.Lock()

            def run(n: int) -> None:
                for r in range(args.requests):
                    started = time.perf_counter()
                    out = clients[n].predict(PROMPTS[(n + r) % len(PROMPTS)], api_name="/generate")
                    assert out["reply"], out
                    with lock:
                        latencies.append(time.perf_counter() - started)

            wall = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(run, range(args.clients)))
            wall = time.perf_counter() - wall
        finally:
            proc.terminate()
            proc.wait(30)

    result = {
        "ready_s": round(ready_s, 2),
        "ready_target_s": 10.0,
        "ready_cpu_s": round(ready_cpu_s, 2),
        "first_sentence_s": round(statistics.median(firsts), 3),
        "first_sentence_max_s": round(max(firsts), 3),
        "first_sentence_target_s": 1.5,
        "generate_p50_s": round(statistics.median(latencies), 2),
        "generate_p95_s": round(percentile(latencies, 95), 2),
        "generate_requests": len(latencies),
        "generate_wall_s": round(wall, 2),
        "clients": args.clients,
        "app_concurrency": args.concurrency,
        "max_new_tokens": args.max_new_tokens,
        "model": "SmolLM2-135M-Instruct (embedded, no adapter)",
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value}")
    return result


if __name__ == "__main__":
    main()
