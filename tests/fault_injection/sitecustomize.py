"""Loaded by the queue tests' worker processes (on PYTHONPATH) to make an analysis slow on purpose,
so a test can kill a worker while it is running one. Inert unless SKINSITE_TEST_SLOW_ANALYSIS is set."""

import os

_delay = float(os.environ.get("SKINSITE_TEST_SLOW_ANALYSIS") or 0)
if _delay:
    import time

    from PIL import Image

    import ml.serve.preprocess

    _load_image = ml.serve.preprocess.load_image

    def _slow_load_image(source):
        # The task reads the stored file; the start-up warm-up hands over a PIL image: keep that one fast.
        if not isinstance(source, Image.Image):
            time.sleep(_delay)
        return _load_image(source)

    # Before workers.tasks is imported, so its `from ml.serve.preprocess import load_image` takes this one.
    ml.serve.preprocess.load_image = _slow_load_image


# SKINSITE_TEST_FORBID_IMPORTS="tensorflow,keras": importing any of those packages fails in this process, and
# each attempt is written to SKINSITE_TEST_IMPORT_LOG, so a test can show that a worker never needs them.
_forbidden = tuple(filter(None, os.environ.get("SKINSITE_TEST_FORBID_IMPORTS", "").split(",")))
if _forbidden:
    import sys
    import traceback

    class _Forbid:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in _forbidden:
                with open(os.environ["SKINSITE_TEST_IMPORT_LOG"], "a") as log:
                    log.write(f"{os.getpid()} imported {name}\n{''.join(traceback.format_stack(limit=8))}\n")
                raise ImportError(f"{name} is forbidden in this process (SKINSITE_TEST_FORBID_IMPORTS)")
            return None

    sys.meta_path.insert(0, _Forbid())
