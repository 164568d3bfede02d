"""Defenses: LMSanitator (sanitizer) and, later, PSIM and baselines. Defenses never import attacks."""
