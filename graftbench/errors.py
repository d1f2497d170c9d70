"""The one exception type for mistakes a user can fix (bad override, missing dataset, ...).

The CLI prints its message as a single line and exits with code 2, without a traceback and
before anything is written. Raise it with a message that names what was expected.
"""


class UserError(Exception):
    """A mistake in the user's input; the message is shown as one line."""

    exit_code = 2
