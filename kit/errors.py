"""The kit's user-facing error: the CLI prints its message on one line and exits non-zero."""


class KitError(Exception):
    """Bad input or state the user can fix; the message names the file and the fix."""


class KitWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as one
    `warning: ...` line), e.g. a checkpoint saved under other package versions."""
