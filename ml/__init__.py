"""The skin-lesion classifier: data, preprocessing, training, evaluation and serving.

This package never imports Django, so it can be trained, evaluated and benchmarked on its own.
Importing ``ml`` itself is cheap: TensorFlow is only imported by the modules that need it.
"""
