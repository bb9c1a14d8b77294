"""Measuring the model and writing down what was measured; nothing here is needed to serve or to train.

The model card itself is ``python -m ml.evaluate`` (``card``, ``plots`` and ``subgroups`` are its parts);
``compare`` and ``sweep`` rank recipes on val, ``robustness`` measures the test part under changed light,
exposure, JPEG, focus and orientation, ``baselines`` the simple models a reader compares against, ``bench``
serving speed, ``explain`` and ``keras_gradcam`` the heatmaps against Keras's Grad-CAM, ``quality`` and
``quality_eval`` the quality gate on HAM10000 and on non-dermoscopic images.
"""
