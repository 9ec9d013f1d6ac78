"""The floors of docs/architecture.md: each part of the package imports only the parts below it."""

import ast
import subprocess
import sys
from pathlib import Path

import bitnetcnn

PACKAGE = Path(bitnetcnn.__file__).parent

# floor -> the floors it may import (itself included)
ALLOWED = {
    "quant": {"quant"},
    "nn": {"quant", "nn"},
    "models": {"quant", "nn", "models"},
    "summary": {"quant", "nn", "models", "summary"},
    "checkpoint": {"quant", "nn", "models", "checkpoint"},
    "hub": {"quant", "nn", "models", "checkpoint", "hub", "data_paths"},
    # deploy calibrates on images of a named data set: the Lightning-free readers only
    "deploy": {"quant", "nn", "models", "checkpoint", "deploy", "summary", "data_sources"},
    "data": {"data", "data_sources"},
    "train": {"quant", "nn", "models", "checkpoint", "data", "data_sources", "train", "summary"},
}


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "bitnetcnn" or len(parts) < 2:
        return None
    if parts[1] == "machine":
        return "machine"  # what hardware a figure came from: a ground-floor module any floor may read
    if parts[1:3] == ["data", "paths"]:
        return "data_paths"  # where caches live: a settings module any floor may read
    if parts[1] == "data" and (len(parts) == 2 or parts[2] in ("sources", "catalog", "augment")):
        return "data_sources"  # the readers of on-disk layouts, without Lightning
    return parts[1]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_each_floor_imports_only_the_floors_below():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        floor = rel.parts[0].removesuffix(".py")
        if floor not in ALLOWED:
            continue  # __init__, cli and __main__ sit on top and may import anything
        for module in imports_of(path):
            target = floor_of(module)
            allowed = ALLOWED[floor] | {"data_paths", "machine"}
            if target is not None and target not in allowed:
                problems.append(f"{rel} imports {module}")
            if module.split(".")[0] == "lightning" and floor not in ("data", "train"):
                problems.append(f"{rel} imports Lightning")
    assert not problems, "\n".join(problems)


def test_importing_models_loads_neither_lightning_nor_data_code():
    code = (
        "import sys, bitnetcnn, bitnetcnn.models; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'torchmetrics') "
        "or m.startswith(('bitnetcnn.data', 'bitnetcnn.train'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
