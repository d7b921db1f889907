"""The time-series data side's user error (re-exported by ``data``; ``cli`` prints it in one line)."""


class SeriesDataError(ValueError):
    """Time-series input that the configured policy rejects; the message says what and where."""
