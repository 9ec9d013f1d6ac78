"""The notes a recorded training command carries in its comment (``COMMAND  # NOTE; NOTE``): what the command alone
does not say (how many epochs a time budget gave, which teacher file a distillation read), written by the run
and read back by scripts/publish_weight.py. Plain strings, no Lightning: reading a recipe needs no trainer."""

from __future__ import annotations

import re


def budget_note(epochs: int) -> str:
    """What a budgeted run's recorded command adds."""
    return f"the time budget gave {epochs} epoch{'' if epochs == 1 else 's'}"


def command_with_note(command: str, note: str) -> str:
    """``command`` with ``note`` added to its comment (``COMMAND  # NOTE; NOTE``), as recorded commands carry what
    the command alone does not say."""
    text, sep, comment = command.partition("  # ")
    return f"{text}  # {comment}; {note}" if sep else f"{text}  # {note}"


# budget_note's number, read back (scripts/publish_weight.py reads it from older files)
BUDGET_GAVE = re.compile(r"the time budget gave (\d+) epochs?\b")


# what a step that made a teacher notes; scripts/publish_weight.py reads it back (TEACHER_NOTE)
TEACHER_NOTE = re.compile(r"the teacher (\S+) \(sha256 ([0-9a-f]+)\.\.\.\)")


def teacher_note(file: str, sha256: str) -> str:
    """What a distillation's recorded command adds about one teacher file (:data:`TEACHER_NOTE` reads it back)."""
    return f"the teacher {file} (sha256 {sha256[:12]}...)"
