"""The container files pass their linters offline: hadolint, and the compose spec's JSON schema.

Building and running the images needs a container engine (docker/build.sh does it with podman or
docker); these checks need none.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_dockerfiles_are_hadolint_clean() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), "docker/Dockerfile", "docker/Dockerfile.anvil"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_file_follows_the_compose_spec() -> None:
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker/compose.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_runs_as_non_root_with_state_on_a_volume_and_a_healthcheck() -> None:
    text = (ROOT / "docker/Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim-bookworm" in text
    assert "-r requirements.lock" in text
    assert "USER 10001" in text
    assert 'VOLUME ["/var/lib/perp-keeper"]' in text
    assert "HEALTHCHECK" in text
    assert "/health" in text
