"""One exception type for problems a user can fix (bad config, bad data, missing files).

Entry points catch it and print its message as one line, without a traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message names what, where, and what to do."""
