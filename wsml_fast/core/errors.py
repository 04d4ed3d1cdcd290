"""The one exception type that reaches the user as a one-line message (exit code 2), never a traceback."""


class WsmlError(Exception):
    """A problem with the user's input or environment, worded so the user knows what to fix."""


def one_line(exc: BaseException) -> str:
    """The line to show for an error. torch re-raises an error from a DataLoader worker with the worker's whole
    traceback in its message, and fastai puts a line naming the callback before an error raised in one; the
    original error's own line is what the user needs."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception occured in `"):  # fastai's spelling
        lines = lines[1:]
    return lines[0] if lines else exc.__class__.__name__
