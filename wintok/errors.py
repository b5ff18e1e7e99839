"""Errors that name the problem and what to do about it."""


class WinTokError(Exception):
    """Base class for the errors this project raises on bad input."""


class CheckpointError(WinTokError):
    """A checkpoint is missing, truncated, unsafe, or does not match its config."""


class TokenFileError(WinTokError):
    """A token file is corrupt, hostile, or made by another checkpoint."""


class ImageError(WinTokError):
    """An image cannot be decoded or has a size this system refuses."""
