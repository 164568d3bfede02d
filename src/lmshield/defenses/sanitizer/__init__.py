"""LMSanitator: PV mining (scan), and later monitoring and purging."""

from lmshield.defenses.sanitizer.config import PRESETS, SanitizerConfig
from lmshield.defenses.sanitizer.guard import Guard as Guard
from lmshield.defenses.sanitizer.result import ScanResult, SeedTrace
from lmshield.defenses.sanitizer.scanner import scan

__all__ = ["PRESETS", "SanitizerConfig", "ScanResult", "SeedTrace", "scan"]
