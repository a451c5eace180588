"""Train a LoRA adapter for AlpaCare and write the run folder (adapter, tokenizer, config, manifest, RUN.zip).

Offline demo on the embedded SmolLM2-135M-Instruct (CPU, a few minutes):

    python train/train_lora.py --config train/configs/smollm2-135m-demo.yaml --output_dir runs/smollm2-demo

Any config field can be overridden on the command line, e.g. a 3-step smoke test:

    python train/train_lora.py --config train/configs/smollm2-135m-demo.yaml --output_dir /tmp/d --max_steps 3

Resume an interrupted run from its newest checkpoint (RUN/checkpoints):

    python train/train_lora.py --config train/configs/llama-3.2-1b-instruct.yaml --resume_from_checkpoint last

Several GPUs (or CPU processes), through torchrun / accelerate (DDP; only rank 0 writes the run folder):

    torchrun --nproc_per_node 2 train/train_lora.py --config train/configs/gpt-neo-2.7b.yaml
"""

from __future__ import annotations

import logging

from alpacare.training import parse_config, train


def main(argv: list[str] | None = None) -> None:
    """Parse ``--config`` + overrides and train."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_dir = train(parse_config(argv))
    print(f"run folder: {run_dir}")


if __name__ == "__main__":
    main()
