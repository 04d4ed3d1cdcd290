"""The one exception type that reaches the user as a one-line message (exit code 2), never a traceback."""


class WsmlError(Exception):
    """A problem with the user's input or environment, worded so the user knows what to fix."""
