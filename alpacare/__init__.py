"""AlpaCare: a toolkit to fine-tune small LMs into a safe, non-diagnostic medical instruction assistant.

The package is importable without torch or a model: heavy libraries are imported inside the functions
that need them (as TRL's ``scripts/sft.py`` does), so the safety checker, the review storage and the
report run in light processes.
"""

__version__ = "0.1.0"
