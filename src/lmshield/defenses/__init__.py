"""Defenses: LMSanitator (sanitizer), PSIM and the baselines (STRIP, ONION, paraphrase). Defenses never import
attacks."""
