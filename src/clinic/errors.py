"""User-facing errors.

A :class:`ClinicError` is a problem with what the user asked for (a missing file, a wrong
column, an unknown method, a value out of range). The CLI prints its message on one line and
exits with code 2; everything else is a bug and keeps its traceback.
"""


class ClinicError(Exception):
    """A problem with the user's input, reported as one line, exit code 2."""

    def __str__(self) -> str:  # one line, whatever the message held
        return " ".join(super().__str__().split())
