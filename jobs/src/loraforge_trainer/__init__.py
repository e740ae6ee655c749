"""loraforge's trainer: LoRA/QLoRA fine-tuning inside a FineTuneJob's pod.

Heavy imports (torch, transformers, peft) stay inside the functions that need
them, so configuration can be validated before any of them load.
"""

__version__ = "0.1.0.dev0"
