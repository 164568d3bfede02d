"""Attacks used to test the defenses. Defenses never import this package."""
