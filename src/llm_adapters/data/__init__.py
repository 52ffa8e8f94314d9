"""Benchmark tasks, instruction data, prompt templates and training-set builders."""
