"""The exceptions neurohw raises on bad input.

Every error names what is wrong (the config key, the layer and step, the file and dataset), so that
a user can fix the input without reading neurohw's source.
"""

from __future__ import annotations


class NeurohwError(Exception):
    """Base class of every error neurohw raises on purpose."""


class ConfigError(NeurohwError, ValueError):
    """A card, an override or a constructor argument is invalid (names the key)."""


class DataError(NeurohwError, FileNotFoundError):
    """A dataset is missing or unreadable (names the files looked for and where)."""


class CheckpointError(NeurohwError):
    """A checkpoint or run directory is missing, corrupt or does not match the config."""


class DivergenceError(NeurohwError, FloatingPointError):
    """The state of a layer became non-finite (names the layer, the phase and the step)."""


class SpecError(NeurohwError):
    """An exported network file is missing, damaged or invalid (names the file and the dataset)."""


class SubstrateError(NeurohwError, RuntimeError):
    """A substrate cannot run on this machine (e.g. a code-generation target fails to build)."""
