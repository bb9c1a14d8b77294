"""The three commands other people's scripts call keep their names: ``python -m ml.train``, ``ml.evaluate`` and
``ml.predict`` (the others are named in the README and the model card, under ml.train.* and ml.study.*)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("ml.train", marks=pytest.mark.training),  # loads Keras
        "ml.evaluate",
        "ml.predict",
        "ml.study.triage",
        "ml.study.quality",
    ],
)
def test_a_documented_command_runs_under_its_name(command):
    result = subprocess.run(
        [sys.executable, "-m", command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: python -m {command} " in result.stdout


def test_every_command_the_readme_names_exists():
    readme = (ROOT / "README.md").read_text() + (ROOT / "ml" / "models" / "MODEL_CARD.md").read_text()

    named = set(re.findall(r"python -m (ml(?:\.\w+)+)", readme))
    assert {"ml.train", "ml.evaluate", "ml.predict"} <= named
    missing = []
    for name in sorted(named):
        path = ROOT.joinpath(*name.split("."))
        if not (path.with_suffix(".py").exists() or (path / "__main__.py").exists()):
            missing.append(name)
    assert not missing, f"named in the README or the card but not a module: {missing}"
