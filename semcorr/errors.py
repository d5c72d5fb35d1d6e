"""The one exception type for errors a user can cause."""


class SemcorrError(Exception):
    """Bad input or a bad request: the message names the file, the record and what to do.

    The CLI prints it on one line, without a traceback, and exits with status 1.
    """
