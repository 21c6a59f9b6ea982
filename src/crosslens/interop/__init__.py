"""Interoperability: records from lm-evaluation-harness runs, steering vectors for other tools."""
