"""The one exception type that means "the user asked for something we cannot do".

The CLI prints it as a single line (no traceback) and exits with status 2. Messages say what
is wrong, where (file, line, key) and how to fix it.
"""


class ScratchLMError(Exception):
    """A user's mistake or an unusable input, reported as one clear line."""
