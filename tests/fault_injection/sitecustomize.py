"""Loaded by the queue tests' worker processes (on PYTHONPATH) to make an analysis slow on purpose,
so a test can kill a worker while it is running one. Inert unless SKINSITE_TEST_SLOW_ANALYSIS is set."""

import os

_delay = float(os.environ.get("SKINSITE_TEST_SLOW_ANALYSIS") or 0)
if _delay:
    import time

    from PIL import Image

    import ml.inference

    _predict = ml.inference.Classifier.predict

    def _slow_predict(self, source):
        if not isinstance(source, Image.Image):  # the warm-up passes a PIL image: keep it fast
            time.sleep(_delay)
        return _predict(self, source)

    ml.inference.Classifier.predict = _slow_predict
