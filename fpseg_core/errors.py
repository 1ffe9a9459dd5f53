"""Exceptions with messages meant for users: each names the problem and how to fix it."""


class FPSegError(Exception):
    """Base class of every error fpseg_core raises on purpose."""


class CheckpointError(FPSegError):
    """A checkpoint file that cannot be loaded as asked."""


class PromptBankError(FPSegError):
    """A prompt bank that is unreadable or does not fit the model."""


class InputImageError(FPSegError, ValueError):
    """An image the pipeline cannot take."""
