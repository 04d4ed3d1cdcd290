"""The one exception type that reaches the user as a one-line message (exit code 2), never a traceback."""


class WsmlError(Exception):
    """A problem with the user's input or environment, worded so the user knows what to fix."""


def one_line(exc: BaseException) -> str:
    """The line to show for an error. torch re-raises an error from a DataLoader worker with the worker's whole
    traceback in its message; the original error's own line is what the user needs."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0] if text else exc.__class__.__name__
