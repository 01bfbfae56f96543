"""Protocols and extra CLI commands are plugins, found through entry points, never imported by name.

`pyproject.toml` registers each protocol's plugin object in the `perp_keeper.protocols` group and each
extra command (the devnet's `devnet up` and `demo`) in `perp_keeper.commands`. Adding a protocol is one
package under `strategies/` plus one line there; the engine has no `if protocol == ...`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from keeper.errors import ConfigurationError, MetadataError, SettingError
from keeper.metadata import read_json
from keeper.protocol import ProtocolPlugin

PROTOCOLS_GROUP = "perp_keeper.protocols"
COMMANDS_GROUP = "perp_keeper.commands"


@dataclass(frozen=True)
class Command:
    """A subcommand a plugin adds: `add` builds its parser, `run` executes it (an exit code)."""

    name: str
    add: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], argparse.ArgumentParser]
    run: Callable[[argparse.Namespace], int]
    loads_env: bool = True  # read `.env` before running (the devnet's own commands do not need it)


@cache
def protocols() -> Mapping[str, ProtocolPlugin]:
    """Every registered protocol plugin, by name (sorted, so messages list them in a stable order)."""
    found: dict[str, ProtocolPlugin] = {}
    for entry in entry_points(group=PROTOCOLS_GROUP):
        plugin: ProtocolPlugin = entry.load()
        found[plugin.name] = plugin
    if not found:
        raise ConfigurationError(
            f"no protocol is registered (entry points {PROTOCOLS_GROUP!r}): install the package, "
            "e.g. pip install -e ."
        )
    return dict(sorted(found.items()))


def commands() -> list[Command]:
    found: list[Command] = []
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        register: Callable[[], list[Command]] = entry.load()
        found += register()
    return found


def described_by(path: Path) -> ProtocolPlugin:
    """The protocol a metadata file describes: its "protocol" field, else the plugin that recognises it."""
    known = protocols()
    data = read_json(Path(path))
    name = data.get("protocol") if isinstance(data, dict) else None
    if name is not None:
        if name not in known:
            raise MetadataError(f"{path}: protocol must be one of {', '.join(known)}, got {name!r}")
        return known[name]
    for plugin in known.values():
        if plugin.recognises(data):
            return plugin
    raise MetadataError(f"{path}: not the metadata of any known protocol ({', '.join(known)})")


def select(flag_value: str | None, metadata: Path, env: Mapping[str, str]) -> ProtocolPlugin:
    """--protocol, else KEEPER_PROTOCOL, else what the metadata file describes; they must agree."""
    known = protocols()
    described = described_by(metadata)
    wanted = flag_value or env.get("KEEPER_PROTOCOL", "").strip() or described.name
    setting = "--protocol" if flag_value else "KEEPER_PROTOCOL"
    if wanted not in known:
        raise SettingError(f"{setting}: expected one of {', '.join(known)}, got {wanted!r}")
    if wanted != described.name:
        raise SettingError(f"{setting} is {wanted} but {metadata} describes a {described.name} deployment")
    return described
