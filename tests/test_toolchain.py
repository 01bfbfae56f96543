from pathlib import Path

import pytest

from devnet import toolchain


def test_everything_pinned_is_installed_and_anvil_runs() -> None:
    import subprocess

    for pkg in (*toolchain.PACKAGES, toolchain.anvil_package()):
        assert (toolchain.package_dir(pkg) / "package.json").exists(), pkg.spec
    version = subprocess.run([str(toolchain.anvil_path()), "--version"], capture_output=True, text=True)
    assert f"anvil Version: {toolchain.ANVIL_VERSION}" in version.stdout


def test_a_tampered_tarball_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PERP_KEEPER_CACHE", str(tmp_path))

    def fake_pack(pkg: toolchain.NpmPackage, dest: Path) -> Path:
        tarball = dest / "evil.tgz"
        tarball.write_bytes(b"not the package")
        return tarball

    monkeypatch.setattr(toolchain, "_npm_pack", fake_pack)
    with pytest.raises(toolchain.ToolchainError, match="integrity mismatch"):
        toolchain.ensure()


def test_an_unreachable_registry_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PERP_KEEPER_CACHE", str(tmp_path))
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    with pytest.raises(
        toolchain.ToolchainError, match=r"npm pack .* failed \(is the npm registry reachable\?\)"
    ):
        toolchain.ensure()
