"""Logging filters wired in settings.LOGGING."""

import logging


class ClientErrorsInOneLine(logging.Filter):
    """A 4xx answer (403, 404, ...) is logged as its one line, without the traceback of the exception that
    made it: that exception is how a view says "no", not a fault in our code. 5xx keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if 400 <= getattr(record, "status_code", 500) < 500:
            record.exc_info = None
            record.exc_text = None
        return True
