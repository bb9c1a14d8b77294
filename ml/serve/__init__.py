"""What a clinic's result depends on: a worker imports this part and nothing else of ``ml``.

An image becomes the network's input (``preprocess``), then 7 probabilities in one LiteRT call
(``inference``), whose companion outputs give the heatmap (``gradcam``, ``explainer``) and the quality flags
(``quality_gate``); ``tiers`` turns the malignant probability into urgent, uncertain or routine, ``labels`` names
the classes and ``stats`` gives a proportion its Wilson interval. Nothing here imports TensorFlow, Keras,
scikit-learn or the ``train`` and ``study`` parts (tests/test_imports.py holds it to that).
"""
