"""Scoring: answer choices scored from forward passes (letters and full answers), the answer fields
of a record, and the cross-lingual metrics of the paper (:mod:`~crosslens.scoring.metrics`)."""

RECORDS = "records"  # the table of evaluation records in a result folder (rows: scoring.records)
