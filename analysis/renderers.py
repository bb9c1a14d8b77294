"""The API's HTML renderer (settings.REST_FRAMEWORK), in a module of its own: DRF reads its renderer settings
while analysis/api.py is still being imported."""

from csp.constants import UNSAFE_INLINE
from rest_framework import renderers


class BrowsableAPIRenderer(renderers.BrowsableAPIRenderer):
    """DRF's HTML pages of the API, for a browser signed in to skinsite. Their templates place things with
    inline style attributes (and highlight code with a <style>): the Content-Security-Policy allows inline
    styles on these pages only, never inline scripts. django-csp's per-view decorators set this same attribute
    on the response; a renderer is what knows the answer is one of these pages."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        renderer_context["response"]._csp_update = {"style-src": [UNSAFE_INLINE]}
        return super().render(data, accepted_media_type, renderer_context)
