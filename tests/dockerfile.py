"""A small Dockerfile reader for tests: instructions grouped by build stage.

Enough of the syntax for docker/Dockerfile: comments, `\\` line continuations, exec (JSON) and shell
forms. Not a full parser (no heredocs, no escape directive).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Instruction:
    name: str  # upper case: FROM, RUN, USER, ...
    args: str  # the rest of the logical line, continuations joined

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form argument (after any --flags), or None for the shell form."""
        text = self.args
        if self.name == "HEALTHCHECK":
            match = re.search(r"(?:^|\s)CMD\s+(.*)$", text)
            text = match.group(1) if match else ""
        text = text.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{self.name}: not a JSON array of strings: {text}")
        return value

    def env(self) -> dict[str, str]:
        """ENV KEY=VALUE pairs (the legacy `ENV KEY VALUE` form too)."""
        words = shlex.split(self.args)
        if words and "=" not in words[0]:
            return {words[0]: " ".join(words[1:])}
        return dict(word.split("=", 1) for word in words)


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]

    def last(self, name: str) -> Instruction | None:
        found = self.all(name)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for instruction in self.all("ENV"):
            merged.update(instruction.env())
        return merged


def instructions(text: str) -> list[Instruction]:
    found, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical = (pending + line).strip()
        pending = ""
        if logical:
            name, _, args = logical.partition(" ")
            found.append(Instruction(name.upper(), args.strip()))
    if pending.strip():
        raise ValueError(f"the Dockerfile ends inside a continued line: {pending!r}")
    return found


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults (before the first FROM) and the stages, in order."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for instruction in instructions(text):
        if instruction.name == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            found.append(Stage(words[0], name))
        elif not found:
            if instruction.name != "ARG":
                raise ValueError(f"{instruction.name} before the first FROM")
            key, _, default = instruction.args.partition("=")
            args[key] = default
        else:
            found[-1].instructions.append(instruction)
    return args, found
