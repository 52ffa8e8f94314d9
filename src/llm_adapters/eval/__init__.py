"""Evaluation: generation engine, answer extraction, scoring."""
