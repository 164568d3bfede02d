"""lmshield: find and neutralise backdoors in PEFT-adapted language models."""

__version__ = "0.3.0"
