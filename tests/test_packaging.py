"""Package metadata: one version, a licence, a citation, every imported package declared, exact pins only in
constraints.txt."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import tomllib
import yaml

import landmark_lit

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {
    "PIL": "pillow",
    "hydra": "hydra-core",
    "SimpleITK": "SimpleITK",
    "nrrd": "pynrrd",
    "yaml": "pyyaml",
}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_the_version_is_stated_once():
    project = _project()
    assert "version" not in project and project["dynamic"] == ["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", landmark_lit.__version__)
    assert landmark_lit.__version__ not in (ROOT / "CITATION.cff").read_text()


def test_licence_and_citation():
    project = _project()
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    assert (
        "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    )
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    paper = citation["preferred-citation"]
    assert citation["license"] == "Apache-2.0" and citation["type"] == "software"
    assert paper["authors"][0]["family-names"] == "Noothout" and paper["year"] == 2020
    assert paper["journal"] == "IEEE Transactions on Medical Imaging" and paper["doi"].startswith(
        "10.1109/TMI"
    )
    assert (ROOT / "landmark_lit" / "py.typed").is_file()


def test_every_imported_package_is_declared():
    project = _project()
    extras = project["optional-dependencies"]
    declared = _names(project["dependencies"]) | {n for reqs in extras.values() for n in _names(reqs)}
    imported = set()
    for path in (ROOT / "landmark_lit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {
        m for m in imported if m not in sys.stdlib_module_names and m not in ("landmark_lit", "__future__")
    }
    missing = {m for m in third_party if DISTRIBUTIONS.get(m, m).lower() not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_exact_pins_live_in_the_constraints_file():
    project = _project()
    requirements = project["dependencies"] + [
        r for reqs in project["optional-dependencies"].values() for r in reqs
    ]
    assert not [r for r in requirements if "==" in r], (
        "pyproject.toml states ranges; pins go in constraints.txt"
    )
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    assert pins["torch"] == "2.13.0"
    assert _names(project["dependencies"]) <= set(pins)  # every dependency has its tested version
    # dev is built from the other extras
    assert project["optional-dependencies"]["dev"][0] == "landmark_lit[io,cluster,tune,export]"
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_every_package_folder_is_listed_and_conf_is_mapped():
    """pyproject lists the packages (conf/ is mapped into landmark_lit.conf, which find cannot see): every
    folder of landmark_lit with an __init__.py must be listed, or the wheel silently lacks it."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "landmark_lit").rglob("__init__.py")
    }
    assert set(tool["packages"]) == folders | {"landmark_lit.conf"}
    assert tool["package-dir"] == {"landmark_lit.conf": "conf"}
    assert not (ROOT / "landmark_lit" / "conf").exists()  # one source of the configs


def test_the_wheel_holds_every_config(tmp_path):
    import subprocess
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)  # fmt: skip
    (wheel,) = tmp_path.glob("landmark_lit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = [p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml")]
    assert len(configs) > 50
    assert [c for c in configs if f"landmark_lit/conf/{c}" not in names] == []
    assert "landmark_lit/conf/__init__.py" in names and not any(n.startswith("conf/") for n in names)


def test_no_long_rooms():
    """The house rule: no module over 450 lines, no class over 150, no function over 60 (a definition's own
    docstring not counted: documentation does not make a room long)."""

    def code_lines(node: ast.AST) -> int:
        n = node.end_lineno - node.lineno + 1
        if ast.get_docstring(node, clean=False) is not None:
            n -= node.body[0].end_lineno - node.body[0].lineno + 1
        return n

    too_long = []
    for path in sorted((Path(__file__).resolve().parents[1] / "landmark_lit").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 450:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            limit = 150 if isinstance(node, ast.ClassDef) else 60
            if (
                isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and code_lines(node) > limit
            ):
                too_long.append(f"{path.name}: {node.name} {code_lines(node)} lines (limit {limit})")
    assert not too_long, too_long
