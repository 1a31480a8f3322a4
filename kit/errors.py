"""The kit's user-facing error: the CLI prints its message on one line and exits non-zero."""


class KitError(Exception):
    """Bad input or state the user can fix; the message names the file and the fix."""
