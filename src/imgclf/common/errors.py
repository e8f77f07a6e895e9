"""Errors a user can fix, reported as one clear message instead of a traceback."""


class UserError(Exception):
    """A problem with the user's inputs or environment; the message says how to fix it."""


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM."""


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
