"""The one exception type the command line turns into a clean message."""


class VibbenchError(Exception):
    """A problem the user can fix; the message says what to do.

    The CLI prints the message and exits with status 2 instead of a traceback.
    """
