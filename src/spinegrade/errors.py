"""Errors that the CLI turns into one clear line (no traceback)."""


class SpinegradeError(Exception):
    """A problem with the user's input or files, explained in words (name the file and the problem)."""


def in_words(e: BaseException) -> str:
    """An error as one line for a log or a result: our own errors are already sentences; anything else (a bug,
    a library's failure) keeps its class name, which says what kind of failure it was."""
    return str(e) if isinstance(e, SpinegradeError) else f"{type(e).__name__}: {e}"


class DataError(SpinegradeError):
    """A file or folder could not be read or is not what was expected."""
