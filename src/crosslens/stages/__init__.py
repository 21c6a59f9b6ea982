"""Stages: units of resumable work into a result folder, the registry, and what stages share.

Each stage is one folder below this package (its computation, Stage, config section, CLI command
and report part); :mod:`~crosslens.stages.registry` lists them.
"""
