"""Loaded by the queue tests' worker processes (on PYTHONPATH) to make an analysis slow on purpose,
so a test can kill a worker while it is running one. Inert unless SKINSITE_TEST_SLOW_ANALYSIS is set."""

import os

_delay = float(os.environ.get("SKINSITE_TEST_SLOW_ANALYSIS") or 0)
if _delay:
    import time

    from PIL import Image

    import ml.preprocess

    _load_image = ml.preprocess.load_image

    def _slow_load_image(source):
        # The task reads the stored file; the start-up warm-up hands over a PIL image: keep that one fast.
        if not isinstance(source, Image.Image):
            time.sleep(_delay)
        return _load_image(source)

    # Before workers.tasks is imported, so its `from ml.preprocess import load_image` takes this one.
    ml.preprocess.load_image = _slow_load_image
