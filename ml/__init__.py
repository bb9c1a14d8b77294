"""The skin-lesion classifier, in three parts that import each other in one direction only:

- ``ml.serve``: what a worker runs for every image and the web process reads (preprocessing, the LiteRT
  classifier, Grad-CAM, the quality gate, the risk tiers). LiteRT, numpy, scipy and Pillow; no TensorFlow.
- ``ml.train``: making the served model (data, augmentation, the network and its recipes, calibration,
  ensembles, export and quantisation, fitting the gate and the tiers). Imports ``ml.serve``.
- ``ml.study``: measuring it (comparisons, sweeps, robustness, baselines, benchmarks, the Keras references).
  Imports both.

Three commands keep their names at the top: ``python -m ml.train``, ``python -m ml.evaluate`` (the model card)
and ``python -m ml.predict`` (a CSV of probabilities). This package never imports Django, and importing it or
``ml.serve`` is cheap: only the modules that need TensorFlow import it.
"""
