"""Publish a trained checkpoint as a hub entry's pretrained weight: measure it, ship it, print its PretrainedCfg.

    python scripts/publish_weight.py runs/r18/best_ternary.bnc --entry bitnet_resnet18 --tag cifar100

1. Evaluates the file on the full test set of its data set, on this machine's CPU (``bitnetcnn eval``): the figures
   a user reproduces, where a run's own figures may come from a GPU's arithmetic.
2. Writes it to ``bitnetcnn/pretrained/ENTRY.bnc`` with those figures, the tag, hub entry, licence, class names and
   test-set size in its header (the weights are copied bit for bit), refusing a file over 4 MiB: larger weights
   are published at a URL. The recorded commands lose this machine's paths (``portable_command``), and a step
   that took a weight by its hub name which an earlier step made names that step's file (``_hub_names_as_steps``).
3. Prints the ``PretrainedCfg`` to paste into ``bitnetcnn/pretrained/__init__.py`` (and to name as the entry's
   ``pretrained=`` in ``bitnetcnn/hub.py``), sha256 and size included. ``tests/test_hub.py`` and ``tests/test_pretrained_zoo.py`` then check the weight through torch.hub on
   the full test set and deployed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

# this checkout's package, not another installed or editable copy: the weight is written into its pretrained/
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from bitnetcnn import class_names as known_names  # noqa: E402
from bitnetcnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from bitnetcnn.checkpoint.pretrained_cfg import PretrainedCfg  # noqa: E402
from bitnetcnn.data.catalog import get_dataset_spec  # noqa: E402
from bitnetcnn.hub import PRETRAINED_DIR, entries  # noqa: E402
from bitnetcnn.nn import TERNARY_LAYERS  # noqa: E402
from bitnetcnn.train.recorded_command import BUDGET_GAVE, TEACHER_NOTE, command_with_note  # noqa: E402
from bitnetcnn.train.evaluate import evaluate_model  # noqa: E402

MAX_SHIPPED_BYTES = 4 << 20  # the package ships weights under 4 MiB; larger ones go to a URL
RUN_PATH_FLAGS = ("--out", "--init", "--teacher")  # a run folder, or a file inside one
RUN_FILES = ("best_ternary.bnc", "last.ckpt")  # what a run folder holds that another run starts from
# an absolute path (POSIX, home-relative or Windows) at the start of a word or inside one (a JSON value)
MACHINE_PATH = re.compile(r"""(?:^|[\s"'=,\[{(])(?:/|~[/\\]|[A-Za-z]:[\\/])""")


def _short_run_folder(folder: Path, folders: dict[Path, Path]) -> Path:
    """``runs/NAME`` for the absolute run folder ``folder``; ``runs/PARENT-NAME`` where another folder of the same
    recipe took that name first (``folders``: the names given so far), so two runs never merge into one."""
    if folder not in folders:
        parts = [folder.name]
        while Path("runs", "-".join(parts)) in folders.values() and len(parts) < len(folder.parts) - 1:
            parts.insert(0, folder.parts[-len(parts) - 1])
        name, n = "-".join(parts), 1
        while Path("runs", name) in folders.values():  # /x-fp after /y/x/fp, or no parent left to add
            n += 1
            name = f"{'-'.join(parts)}-{n}"
        folders[folder] = Path("runs", name)
    return folders[folder]


def portable_command(command: str, folders: dict[Path, Path] | None = None) -> str:
    """``command`` as a reader can rerun it: a run folder given by an absolute path becomes ``runs/NAME`` and a run's
    file ``runs/NAME/FILE`` (``--out``, ``--init``, ``--teacher``; another absolute ``--init``/``--teacher`` file
    keeps its name only); ``--data-dir`` is dropped (the reader's data root is their own setting) unless it is the
    data set itself (``--dataset imagefolder``). The comment after ``  # `` stays. Any other absolute path is an
    error: the published header would name this machine's folders. ``folders``: the run folders' names so far, shared
    by the commands of one recipe (``_short_run_folder``)."""
    folders = {} if folders is None else folders
    text, sep, comment = command.partition("  # ")
    words, out, i = shlex.split(text), [], 0
    imagefolder = "imagefolder" in words or "--dataset=imagefolder" in words
    while i < len(words):
        word = words[i]
        i += 1
        flag, has_value, value = word.partition("=")
        if flag not in (*RUN_PATH_FLAGS, "--data-dir"):
            out.append(word)
            continue
        if not has_value:
            if i == len(words):
                raise ValueError(f"{flag} without a value in the recorded command {command!r}")
            value, i = words[i], i + 1
        path = Path(value)
        if flag == "--data-dir":
            if imagefolder:
                out += [flag, value]  # checked below with every other word
            continue
        if path.is_absolute():
            if flag == "--out":
                path = _short_run_folder(path, folders)
            elif path.name in RUN_FILES:
                path = _short_run_folder(path.parent, folders) / path.name
            else:
                path = Path(path.name)
        out += [flag, str(path)]
    for word in out:
        if MACHINE_PATH.search(word):
            raise ValueError(f"the recorded command {command!r} names a path of this machine ({word!r}); "
                             "publish a run whose command names none")
    return shlex.join(out) + sep + comment


def _flag_values(words: list[str], flag: str):
    """(index of the value, value) for each ``FLAG VALUE`` in ``words`` (portable commands: ``FLAG=VALUE`` split)."""
    return [(k + 1, words[k + 1]) for k, word in enumerate(words[:-1]) if word == flag]


def _hub_names_as_steps(metadata: dict) -> dict:
    """A step that took a published weight by its hub name (``--teacher bitnet_resnet18``) where an earlier step of
    the recipe made that file (its ``TEACHER_NOTE``: "the teacher bitnet_resnet18.bnc (sha256 ...)") names that step's file instead,
    saying what it ran with: the name serves whatever is published now, so the recipe rerun as recorded would learn
    from another model than the one that taught it."""
    steps = metadata.get("training") or []
    made: dict[str, tuple[str, str]] = {}  # a file's name -> (the run file an earlier step wrote, sha256 prefix)
    rewritten = []
    for step in steps:
        text, sep, comment = step["command"].partition("  # ")
        words, notes = shlex.split(text), []
        for flag in ("--init", "--teacher"):
            for index, value in _flag_values(words, flag):
                if "/" in value or "\\" in value or value.endswith(".bnc") or f"{value}.bnc" not in made:
                    continue  # a path, or a name no earlier step made
                path, sha = made[f"{value}.bnc"]
                words[index] = path
                notes.append(f"it ran with {flag} {value}, which named that file then (sha256 {sha}...)")
        command = step["command"]
        if notes:
            command = shlex.join(words) + sep + comment
            for note in notes:
                command = command_with_note(command, note)
        out = [value for _, value in _flag_values(words, "--out")]
        for name, sha in TEACHER_NOTE.findall(comment):
            if out:
                made[name] = (f"{out[-1]}/best_ternary.bnc", sha)
        rewritten.append(dict(step, command=command))
    if not steps:
        return metadata
    last = metadata.get("command") == steps[-1]["command"]
    return dict(metadata, training=rewritten, **({"command": rewritten[-1]["command"]} if last else {}))


def _portable(metadata: dict) -> dict:
    """``metadata`` with every recorded command portable (this run's, its recipe's steps, what it started from)."""
    folders: dict[Path, Path] = {}

    def walk(value):
        if isinstance(value, dict):
            return {k: portable_command(v, folders) if k == "command" and isinstance(v, str) else walk(v)
                    for k, v in value.items()}
        return [walk(v) for v in value] if isinstance(value, list) else value
    return walk(metadata)




def run_length(metadata: dict) -> int | None:
    """How many epochs the run that saved these weights was set for: recorded by the run, or, in files saved before
    it was, read from its command (the budget's note, or ``--epochs`` by the command line's own parser)."""
    if metadata.get("epochs") is not None:
        return metadata["epochs"]
    command = str(metadata.get("command", ""))
    text, _, comment = command.partition("  # ")
    budget = BUDGET_GAVE.search(comment)
    if budget:
        return int(budget.group(1))
    words = shlex.split(text)
    if words[:2] != ["bitnetcnn", "train"]:
        return None
    from bitnetcnn.cli import build_parser
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a command this version no longer parses: unknown
            args = build_parser().parse_args(words[1:])
    except SystemExit:
        return None
    return None if args.time_budget is not None else args.epochs  # a budget's --epochs is only its cap


EARLY_EPOCH = "the weights of epoch"


def _mark_early_epoch(metadata: dict) -> dict:
    """A best model from before the run's last epoch (a run still going, or a later epoch that scored lower) says
    so in its last training step: rerunning the command trains all the epochs, and the wall time is the time to
    these weights. Said once: a published file published again keeps its note."""
    epoch, epochs = metadata.get("epoch"), run_length(metadata)
    if epoch is None or epochs is None or epoch + 1 >= epochs or not metadata.get("command"):
        return metadata
    return _with_last_step_note(metadata, f"{EARLY_EPOCH} {epoch + 1} of {epochs}, the best of those validated by then",
                                _noted)


def _noted(command: str, note: str) -> str:
    """``command`` with ``note`` added to its comment (once)."""
    return command if EARLY_EPOCH in command.partition("  # ")[2] else command_with_note(command, note)


def _with_last_step_note(metadata: dict, note: str, add=command_with_note) -> dict:
    """``metadata`` with ``note`` in the comment of its last training step, which is also its ``command``."""
    if not metadata.get("training"):  # a file saved before runs recorded their steps: its last step is its command
        return dict(metadata, command=add(metadata["command"], note))
    *earlier, last = metadata["training"]
    last = dict(last, command=add(last["command"], note))
    return dict(metadata, command=last["command"], training=[*earlier, last])


def publish(path: Path, entry: str, tag: str, licence: str = "MIT", data_dir: str | None = None,
            out_dir: Path = PRETRAINED_DIR, force: bool = False, note: str | None = None) -> PretrainedCfg:
    """Measure ``path`` on its test set, write it as ``out_dir/ENTRY.bnc`` with that metadata, return its cfg.
    An existing ``ENTRY.bnc`` (a published weight, another tag's included) is replaced only with ``force``.
    ``note`` is added to the last command's comment: what the command does not say, such as which published files
    its ``--init`` and ``--teacher`` paths held then (publishing replaces them)."""
    known = entries()
    if entry not in known:
        raise ValueError(f"unknown hub entry {entry!r}; the entries are: {', '.join(known)}")
    target = Path(out_dir) / f"{entry}.bnc"
    if target.exists() and not force:
        raise ValueError(f"{target} exists (a published weight: the hub's sha256 names it, and recorded recipes may "
                         "start from it): pass --force to replace it, or --out-dir to write elsewhere")
    model = load_checkpoint(path)
    own = model.pretrained_cfg
    if own.model != known[entry].model:
        raise ValueError(f"{path} holds a {own.model}, but {entry!r} serves {known[entry].model}")
    if not any(isinstance(m, TERNARY_LAYERS) for m in model.modules()):
        kind = "full-precision" if model.model_args.get("quant") == "fp" else "Bit"
        raise ValueError(f"{path} holds a {kind} model, not a converted ternary one: publish a run's "
                         "best_ternary.bnc (or bitnetcnn convert's output)")
    if own.dataset is None:
        raise ValueError(f"{path} does not record the data set it was trained on: it cannot be measured")
    header = model.checkpoint_header
    # refused before the long part
    recorded = _hub_names_as_steps(_portable(_mark_early_epoch(dict(header.get("metadata") or {},
                                                                     command=own.command))))
    if note:
        recorded = _with_last_step_note(recorded, note)
    measured = evaluate_model(model, data_dir=data_dir, source=str(path))
    names = own.class_names or get_dataset_spec(own.dataset).class_names
    scores = {"top1": measured["top1"], "top5": measured["top5"]}
    metadata = dict(recorded, **{k: v for k, v in header["metrics"].items() if k != "command"})
    metadata.update(
        accuracy=measured["top1"], ternary_eval=scores, test_images=measured["images"],
        tag=tag, hub_entry=entry, licence=licence, mean=list(own.mean), std=list(own.std),
        input_size=list(own.input_size), class_names=list(names) if names else None,
        evaluated="top-1/top-5 by scripts/publish_weight.py (bitnetcnn eval) on the CPU")
    with tempfile.TemporaryDirectory() as tmp:
        staged = save_checkpoint(model, Path(tmp) / target.name, metadata)
        rewritten = load_checkpoint(staged)
        _same_weights(model, rewritten, path)
        data = staged.read_bytes()
        if len(data) > MAX_SHIPPED_BYTES:
            raise ValueError(f"{path} takes {len(data):,} bytes written, over the {MAX_SHIPPED_BYTES:,} the package "
                             "ships: publish it at a URL and declare PretrainedCfg(url=..., sha256=...)")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
        with os.fdopen(fd, "wb") as out:  # written whole beside it, then moved in: never half a published weight
            out.write(data)
        os.replace(part, target)
    return PretrainedCfg(**{**rewritten.pretrained_cfg.to_dict(), "file": target.name, "file_size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest()})


def _same_weights(before: torch.nn.Module, after: torch.nn.Module, path: Path) -> None:
    a, b = before.state_dict(), after.state_dict()
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise RuntimeError(f"{path}: the rewritten file does not hold the same tensors; nothing was published")


def render(cfg: PretrainedCfg, name: str) -> str:
    """``cfg`` as the Python source of ``bitnetcnn/pretrained/__init__.py`` (class names by their constant where there is one)."""
    lines = [f"{name} = PretrainedCfg("]
    for key, value in cfg.to_dict().items():
        if value is None or key == "url":
            continue
        if key == "class_names":
            constant = next((c for c in dir(known_names) if getattr(known_names, c) == tuple(value)), None)
            text = f"class_names.{constant}" if constant else repr(tuple(value))
        elif key == "training":
            steps = "".join(f"\n        TrainingStep({s['command']!r}, {s['wall_time_s']!r}, {s['hardware']!r}),"
                            for s in value)
            text = f"({steps}\n    )"
        elif isinstance(value, list):
            text = repr(tuple(value))
        else:
            text = repr(value)
        lines.append(f"    {key}={text},")
    return "\n".join(lines + [")"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a converted model (a run's best_ternary.bnc)")
    parser.add_argument("--entry", required=True, help="the hub entry it serves, e.g. bitnet_resnet18")
    parser.add_argument("--tag", required=True, help="which weight of the entry, e.g. cifar100")
    parser.add_argument("--licence", default="MIT")
    parser.add_argument("--data-dir", help="data root (default: $BITNETCNN_DATA)")
    parser.add_argument("--out-dir", type=Path, default=PRETRAINED_DIR, help="default: src/bitnetcnn/pretrained/")
    parser.add_argument("--force", action="store_true", help="replace an existing OUT_DIR/ENTRY.bnc")
    parser.add_argument("--note", help="added to the last command's comment, e.g. which published files its --init "
                                       "and --teacher paths held then")
    args = parser.parse_args(argv)
    try:
        cfg = publish(args.checkpoint, args.entry, args.tag, args.licence, args.data_dir, args.out_dir, args.force,
                      args.note)
    except (ValueError, FileNotFoundError, RuntimeError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"# wrote {args.out_dir / cfg.file}: top-1 {cfg.top1:.2%}, top-5 {cfg.top5:.2%} on {cfg.test_images:,} "
          f"test images, {cfg.file_size:,} bytes. Paste into bitnetcnn/pretrained/__init__.py and name it as the entry's pretrained= in bitnetcnn/hub.py:")
    print(render(cfg, f"{args.entry.upper()}_{args.tag.upper()}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
