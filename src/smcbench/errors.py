"""User-facing errors: the CLI prints them as one line and exits non-zero."""


class SmcBenchError(ValueError):
    """Bad input or state that the user can fix; the message says what, where and how."""
