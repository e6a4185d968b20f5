"""What a user installs: the wheel carries the licence and the project's links, and the docs site
points at the same repository as the package metadata."""

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def docs_repo_url() -> str:
    """``repo_url`` of ``mkdocs.yml`` (read as text: the file's tags need mkdocs' YAML loader)."""
    found = re.search(r"^repo_url:\s*(\S+)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    assert found, "mkdocs.yml has no repo_url"
    return found[1]


def test_the_docs_and_the_package_name_one_repository():
    urls = pyproject()["project"].get("urls", {})
    assert urls.get("Repository") == docs_repo_url(), (
        "pyproject's [project.urls] Repository and mkdocs.yml's repo_url must agree"
    )
    for name, url in urls.items():
        assert url.startswith(docs_repo_url()), f"[project.urls] {name} = {url} is off the repo"


def test_the_wheel_ships_the_licence_and_the_links(tmp_path):
    # a wheel build in a subprocess, without build isolation (no download): 1-4 s
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "pyro_blr", source / "pyro_blr", ignore=shutil.ignore_patterns("__pycache__")
    )
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("pyro_blr-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        licences = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert licences, f"no LICENSE in {wheel.name}: {names[-5:]}"
        text = archive.read(licences[0]).decode()
        assert "Apache License" in text and "Version 2.0" in text
        assert (ROOT / "LICENSE").read_text() == text
        assert "pyro_blr/py.typed" in names
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(meta))
    assert metadata["License-Expression"] == "Apache-2.0"
    links = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert links.get("Repository") == docs_repo_url()
