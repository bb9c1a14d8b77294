"""How the project's modules may import each other, read from their source with `ast` (nothing is imported).

Every import counts, at module level, inside a function or under ``if TYPE_CHECKING``: a loop that only closes
at run time is still a loop, and a function-level import of TensorFlow still loads it in the process that calls
the function.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("analysis", "skinsite", "workers", "ml")

# ml/ is three packages that import each other one way only: serve <- train <- study (see ml/__init__.py).
# What a worker runs for every image and the web process reads: LiteRT, numpy, scipy and Pillow only.
SERVING_PACKAGE = "ml.serve"
# Making the model: data, augmentation, the network, recipes, calibration, ensembles, export, fitting gate and tiers.
TRAINING_PACKAGE = "ml.train"
# Measuring it: the card's parts, comparisons, sweeps, robustness, baselines, benchmarks, the Keras references.
STUDY_PACKAGE = "ml.study"
# The package itself and the three commands that keep their names at its top: what each may import, as a part.
TOP = {"ml": "serve", "ml.predict": "serve", "ml.evaluate": "study"}


def part_of(name: str) -> str | None:
    """serve, train or study for a module of ml/ (None outside ml/)."""
    if name in TOP:
        return TOP[name]
    for package, part in ((SERVING_PACKAGE, "serve"), (TRAINING_PACKAGE, "train"), (STUDY_PACKAGE, "study")):
        if name == package or name.startswith(package + "."):
            return part
    return None


# A part may import the parts before it, never the ones after it.
ORDER = {"serve": 0, "train": 1, "study": 2}

# Commands that drive the whole stack from outside it; neither a worker nor the web process imports them.
OUTSIDE_THE_SERVICE = {"workers.bench"}
TENSORFLOW = {"tensorflow", "keras"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, Path]:
    files = {"manage": ROOT / "manage.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            files[module_name(path)] = path
    return files


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name the module imports, with relative imports made absolute; ``from a import b`` gives both
    ``a`` and ``a.b`` (b may be a module or a name in a)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(project module -> the project modules it imports, project module -> the outside top-level packages it imports)."""
    files = project_files()
    internal, external = {}, {}
    for name, path in files.items():
        targets = imported_names(name, path)
        internal[name] = {t for t in targets if t in files and t != name}
        # `from ml import triage` names the package ml as well; only a target no project module matches is outside.
        external[name] = {
            t.split(".")[0] for t in targets if t.split(".")[0] not in files and t.split(".")[0] not in PACKAGES
        }
    return internal, external


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan), as a path that returns to its start."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [path_back(graph, group) for group in groups]


def path_back(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path inside ``group`` from its first module back to itself."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    return sorted(group)


def reachable(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or through others, with the chain of imports that gets there."""
    chains = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target not in chains:
                    chains[target] = chains[node] + [target]
                    following.append(target)
        frontier = following
    return chains


def test_no_module_imports_itself_through_others():
    internal, _ = import_graph()
    found = cycles(internal)
    assert not found, "import loops:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_every_ml_module_is_in_the_serving_training_or_study_part():
    internal, _ = import_graph()
    loose = sorted(name for name in internal if name.split(".")[0] == "ml" and part_of(name) is None)
    assert not loose, f"put these in ml/serve, ml/train or ml/study: {loose}"
    assert part_of("ml.serve.tiers") == "serve" and part_of("ml.train.fit") == "train"
    assert part_of("ml.study.card") == "study" and part_of("ml.evaluate") == "study" and part_of("analysis") is None


def test_a_worker_imports_only_the_serving_part_of_ml():
    internal, _ = import_graph()
    chains = reachable(internal, "workers.tasks")
    outside = {name: chain for name, chain in chains.items() if part_of(name) not in (None, "serve")}
    assert not outside, "\n".join(" -> ".join(chain) for chain in outside.values())


def test_the_web_workers_and_serving_never_import_tensorflow_or_keras():
    internal, external = import_graph()
    service = {
        name
        for name in internal
        if (name.split(".")[0] in ("analysis", "skinsite", "workers") or part_of(name) == "serve")
        and name not in OUTSIDE_THE_SERVICE
    }
    found = []
    for name in sorted(service):
        for reached, chain in reachable(internal, name).items():
            for package in sorted(external[reached] & TENSORFLOW):
                found.append(" -> ".join([*chain, package]))
    assert not found, "TensorFlow or Keras imported by the service:\n" + "\n".join(found)


def test_each_part_of_ml_imports_only_itself_and_the_parts_before_it():
    """serve imports neither train nor study; train never imports study (so the runtime of a part never imports its
    fitting or reporting command: the tiers' fit is ml.train.triage, its command and card section ml.study.triage)."""
    internal, _ = import_graph()
    found = []
    for name in sorted(n for n in internal if part_of(n)):
        for reached, chain in reachable(internal, name).items():
            if part_of(reached) and ORDER[part_of(reached)] > ORDER[part_of(name)]:
                found.append(f"{part_of(name)} -> {part_of(reached)}: " + " -> ".join(chain))
    assert not found, "\n".join(found)


def test_the_web_process_imports_only_the_serving_part_of_ml():
    internal, _ = import_graph()
    found = []
    for name in sorted(n for n in internal if n.split(".")[0] in ("analysis", "skinsite")):
        for reached, chain in reachable(internal, name).items():
            if part_of(reached) not in (None, "serve"):
                found.append(" -> ".join(chain))
    assert not found, "\n".join(found)
