"""Experiments: a YAML config composing the stages' sections, run locally or on Ray, then the report."""
