"""Errors that the command line turns into one-line messages with exit code 2."""


class MrimsmError(Exception):
    """A user-facing error: bad input, bad config, bad checkpoint.

    The CLI catches it, prints ``error: <message>`` on one line and exits with
    code 2. Library code raises it for anything a user can fix; genuine bugs
    stay ordinary exceptions so that they keep their traceback.
    """

    exit_code = 2


class Interrupted(MrimsmError):
    """SIGINT or SIGTERM stopped a long command; the message says what finished,
    what did not and how to go on. The CLI prints ``interrupted: <message>`` and
    exits with 130 (128 + SIGINT), as a shell does for Ctrl-C."""

    exit_code = 130
