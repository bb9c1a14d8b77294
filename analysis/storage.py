"""The file store as the code sees it: Django's storage API, whichever backend the settings chose (a local folder,
or an S3-compatible bucket through django-storages).

Only one thing differs between the two for the callers: an object store can be out of reach for a moment (the
network, the store restarting), which a local folder never is. Those errors are named here so that a worker retries
its task and the web answers "try again", instead of recording an image as unreadable.
"""

from botocore.exceptions import ConnectionError as S3ConnectionError
from botocore.exceptions import HTTPClientError

# botocore's: the endpoint could not be reached, or the connection dropped or timed out mid-request (after its own
# retries). Some of them are OSErrors too, so callers catch these before OSError.
UNREACHABLE: tuple[type[Exception], ...] = (S3ConnectionError, HTTPClientError)

# What the web answers meanwhile (a 503 with Retry-After, analysis/middleware.py and analysis/api.py): the upload's
# transaction was rolled back, so sending it again is safe.
UNREACHABLE_MESSAGE = (
    "The file store cannot be reached for a moment, so nothing was saved. Please try again in a few seconds."
)
