"""``python -m ml.train``: train a network (see ml/train/fit.py for the recipes)."""

from ml.train.fit import main

main()
