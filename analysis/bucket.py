"""The object store's backend (S3_BUCKET set; skinsite/settings.py): django-storages' S3 backend, minus any URL
into the bucket."""

from urllib.parse import urljoin

from django.conf import settings
from django.utils.encoding import filepath_to_uri
from storages.backends.s3 import S3Storage


class PrivateS3Storage(S3Storage):
    """The bucket is private, and nothing hands out a way into it: `url()` answers as the local folder's does, with
    a path under MEDIA_URL that no view serves, never a signed bucket URL. Clients get each file through the views
    that check the clinic (analysis/views.py), which read it from here; the Django admin, which links every stored
    file by its url(), links nowhere either."""

    def url(self, name, parameters=None, expire=None, http_method=None) -> str:
        return urljoin(settings.MEDIA_URL, filepath_to_uri(name))
