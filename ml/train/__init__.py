"""Making the served model: ``python -m ml.train`` trains one network (``fit``), the other commands here turn
networks into what ``ml.serve`` loads.

``data``, ``augment``, ``stream`` and ``features`` feed training; ``model`` builds the network, ``checkpoint``
resumes a run; ``calibrate`` chooses the operating point and temperature on val, ``ensemble`` serves several
networks as one, ``export`` and ``quantize`` write the LiteRT files; ``quality_fit`` and ``triage`` fit the
quality gate and the risk tiers; ``metrics`` and ``timing`` are what those choices are measured with. Imports
``ml.serve``, never ``ml.study``. Importing this package loads nothing heavy: ``fit`` and the export modules
import TensorFlow themselves.
"""
