"""LMSanitator: PV mining (scan) and the guard that monitors outputs and purges triggers at inference."""

from lmshield.defenses.sanitizer.config import PRESETS, SanitizerConfig
from lmshield.defenses.sanitizer.guard import Guard
from lmshield.defenses.sanitizer.result import ScanResult, SeedTrace
from lmshield.defenses.sanitizer.scanner import scan

__all__ = ["PRESETS", "Guard", "SanitizerConfig", "ScanResult", "SeedTrace", "scan"]
