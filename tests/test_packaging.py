"""What pip installs works without the checkout: the wheel ships the dashboards' apps and the
demo checkpoints, declares every package the code imports, and installs `mambapanel`."""

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Import names that differ from their distribution names.
DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "umap": "umap-learn"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--disable-pip-version-check", "-w", str(out), str(ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (path,) = out.glob("mambapanel-*.whl")
    return path


@pytest.mark.slow
def test_the_wheel_ships_the_apps_the_checkpoints_and_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert {"dashboards/explorer.py", "dashboards/compare.py"} <= names
    checkpoints = {n for n in names if n.startswith("mambapanel/checkpoints/")}
    assert {f"mambapanel/checkpoints/vmamba-micro-{o}.pth" for o in ("cross", "morton")} <= (
        checkpoints
    )
    assert "mambapanel = compute.__main__:main" in scripts
    assert not any(n.startswith("tests/") for n in names)


@pytest.mark.slow
def test_an_installed_copy_serves_its_own_apps_and_demo_checkpoints(wheel, tmp_path):
    """Unpacked outside the checkout and imported from there (this environment gives the
    dependencies), ``compute serve`` and ``compute demo`` find their files in the copy."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    probe = (
        "import compute.serve as s, compute.demo as d, mambapanel;"
        "print(s.serve_command(['r'], s.ServeOptions())[4]);"
        "print(d.checkpoint('cross')); print(mambapanel.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    app, checkpoint, package = result.stdout.split()
    for path in (app, checkpoint, package):
        assert Path(path).is_relative_to(site) and Path(path).is_file(), path
    assert app.endswith("dashboards/explorer.py")


def imported_distributions() -> set[str]:
    """Third-party distributions imported by mambapanel/, compute/ and dashboards/."""
    found = set()
    for folder in ("mambapanel", "compute", "dashboards"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    found.add(node.module.split(".")[0])
    local = {"mambapanel", "compute", "dashboards", "__future__"}
    return {DISTRIBUTIONS.get(name, name) for name in found - local - sys.stdlib_module_names}


def test_every_imported_package_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        requirement.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower()
        for requirement in project["dependencies"]
    }
    assert imported_distributions() - declared == set()
    assert "psutil" not in declared  # benchmarks and tests only: the bench and test extras
    assert {"pandas", "scipy", "colorcet", "threadpoolctl"} <= declared
