"""Errors that the CLI turns into one clear line (no traceback)."""


class SpinegradeError(Exception):
    """A problem with the user's input or files, explained in words (name the file and the problem)."""


class DataError(SpinegradeError):
    """A file or folder could not be read or is not what was expected."""
