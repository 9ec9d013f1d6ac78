"""The floors of docs/architecture.md: each part of the package imports only the parts below it, without circles."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import bitnetcnn

PACKAGE = Path(bitnetcnn.__file__).parent

# The ground floor: settings (where data and caches live) and the machine's description; any floor may read them.
GROUND = {"settings", "machine", "normalization", "class_names", "quiet", "images", "atomic", "extras", "version",
          "messages"}
# floor -> the floors it may import (itself and the ground floor included)
ALLOWED = {
    "settings": set(),
    "machine": set(),
    "normalization": set(),
    "class_names": set(),
    "quiet": set(),
    "images": set(),
    "atomic": set(),  # files replaced whole
    "extras": set(),  # which extra installs a missing package
    "version": set(),
    "messages": set(),  # how errors quote what they name
    "quant": {"quant"},
    "nn": {"quant", "nn"},
    "models": {"quant", "nn", "models"},
    "summary": {"quant", "nn", "models", "checkpoint", "summary"},  # a weight's own input size (pretrained_cfg)
    "preprocess": {"preprocess"},  # a weight's transforms(): the ground floor's normalize and torchvision
    "checkpoint": {"quant", "nn", "models", "checkpoint", "preprocess"},
    "predict": {"nn", "checkpoint", "predict"},  # a weight's transforms and class names, on image files; eval mode
    "pretrained": {"checkpoint", "pretrained"},  # the published weights' PretrainedCfg, beside their files
    "hub": {"quant", "nn", "models", "checkpoint", "pretrained", "hub"},
    # deploy calibrates on images of a named data set: the Lightning-free readers only
    "deploy": {"quant", "nn", "models", "checkpoint", "deploy", "summary", "data_sources"},
    "data": {"data", "data_sources"},
    "train": {"quant", "nn", "models", "checkpoint", "data", "data_sources", "train", "summary"},
}
TOP = {"__init__", "__main__", "cli"}  # the package's face and the command line sit on top and may import anything


def floor_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "bitnetcnn" or len(parts) < 2:
        return None
    if parts[1] == "data" and (len(parts) == 2 or parts[2] in ("sources", "catalog", "augment", "paths")):
        return "data_sources"  # the readers of on-disk layouts, without Lightning
    return parts[1]


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function (a lazy import is a dependency too). A relative
    import is refused: the floors are read from absolute names, and ``from . import x`` would pass unchecked."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}:{node.lineno}: a relative import; import bitnetcnn.... by its full name")
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_each_floor_imports_only_the_floors_below():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        floor = rel.parts[0].removesuffix(".py")
        if floor in TOP:
            continue
        assert floor in ALLOWED, f"{rel}: a part of the package that no floor of docs/architecture.md names"
        allowed = ALLOWED[floor] | (set() if floor in GROUND else GROUND)
        for module in imports_of(path):
            target = floor_of(module)
            if target is not None and target != floor and target not in allowed:
                problems.append(f"{rel} imports {module}")
            if module.split(".")[0] == "lightning" and floor not in ("data", "train"):
                problems.append(f"{rel} imports Lightning")
    assert not problems, "\n".join(problems)


def test_no_module_imports_itself_in_a_circle():
    """Modules (not packages re-exporting them) form no import circle, lazy imports included."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    graph = {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}
    circles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)


def test_importing_models_loads_neither_lightning_nor_data_code_nor_torchvision():
    code = (
        "import sys, bitnetcnn, bitnetcnn.models; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'torchmetrics', "
        "'torchvision') or m.startswith(('bitnetcnn.data', 'bitnetcnn.train'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_subpackages_the_docs_use_are_attributes_of_bitnetcnn_imported_on_first_use():
    """``bitnetcnn.hub.load``, ``bitnetcnn.deploy.compile`` after a plain ``import bitnetcnn`` (docs/hub.md,
    docs/training.md), without loading any of them, or Lightning, before."""
    code = (
        "import sys, bitnetcnn; "
        "early = [m for m in ('bitnetcnn.hub', 'bitnetcnn.deploy', 'bitnetcnn.train', 'lightning') "
        "         if m in sys.modules]; "
        "assert not early, early; "
        "assert callable(bitnetcnn.hub.load) and callable(bitnetcnn.deploy.compile); "
        "assert bitnetcnn.train.__name__ == 'bitnetcnn.train'; "
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr


@pytest.mark.parametrize("argv, module, extra", [
    (["train", "--epochs", "1"], "lightning", "train"),
    (["export", "bitnet_mnist", "-o", "m.onnx"], "onnx", "deploy"),
    (["train", "--epochs", "1"], "matplotlib", "train"),  # first needed after epoch 0: refused before it
])
def test_a_command_whose_extra_is_not_installed_names_it_in_one_line(argv, module, extra, tmp_path):
    """A base install (`pip install bitnetcnn`) gave a ModuleNotFoundError traceback for `train` and `export`."""
    blocked = f"import sys; sys.modules[{module!r}] = None; from bitnetcnn.cli import main; sys.exit(main({argv!r}))"
    run = subprocess.run([sys.executable, "-c", blocked], cwd=tmp_path, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(PACKAGE.parent)})  # as if not installed
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert f"needs {module}, which comes with the {extra} extra: pip install 'bitnetcnn[{extra}]'" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_bench_on_a_base_install_times_the_pytorch_rows_and_says_why_no_deploy_row(monkeypatch, capsys, tmp_path):
    from bitnetcnn.cli import main

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "b.json"
    assert main(["bench", "bitnet_cnn", "--batch-sizes", "1", "--budget", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"][0]["variants"]) == {"fp32_eager", "bit_eval", "ternary"}
    assert report["auto_backend"] is None
    assert "deploy rows skipped: deployment needs onnxruntime, which comes with the deploy extra" in capsys.readouterr().out


@pytest.mark.parametrize("module", ["settings", "schedule", "evaluate", "convert_file", "fine_tune", "recorded_command"])
def test_the_train_modules_a_base_install_reads_import_no_lightning(module):
    """docs/architecture.md: these serve `eval`, `convert` and `--init` checks, and scripts/publish_weight.py reads
    recorded commands through recorded_command; fine_tune.py loaded Lightning, torchmetrics and matplotlib for one
    string helper."""
    code = (f"import sys, bitnetcnn.train.{module}; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'torchmetrics', 'matplotlib')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
