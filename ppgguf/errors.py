"""The one exception type a user sees.

Library code raises `UserError` for anything the user can fix (bad input, missing file, wrong
option). The CLI prints its message on one line and exits non-zero, without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message says what was wrong and how to fix it."""
