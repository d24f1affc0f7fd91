"""The one error traces raise: a one-line message naming the file, row or field, and the fix."""


class TraceError(ValueError):
    pass
