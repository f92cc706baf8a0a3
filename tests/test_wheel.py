"""The installed wheel is the product: build it, install it in a fresh virtualenv, use it there.

The wheel is installed with the lock's constraints (``constraints/newest.txt``), and every command
runs outside the repository, so nothing is read from the source tree: the demo runs the example
flow shipped as package data, ``auto-resume validate`` checks a policy, and ``dagster definitions
validate`` loads ``auto_resume.definitions`` from a workspace, as a deployment would.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.slow

CONSTRAINTS = ROOT / "constraints" / "newest.txt"


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh virtualenv holding only the built wheel and its locked dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["METAFLOW_USER"] = os.environ.get("METAFLOW_USER", "auto-resume")
    env.pop("AUTO_RESUME_POLICY", None)
    env.pop("DAGSTER_HOME", None)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)], tmp, env)
    (wheel,) = dist.glob("auto_resume-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    _run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), str(wheel)],
        tmp,
        env,
    )
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return venv, env


def test_the_package_comes_from_the_wheel_with_its_examples(installed: tuple[Path, dict[str, str]]) -> None:
    venv, env = installed
    where = _run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import auto_resume, pathlib; print(pathlib.Path(auto_resume.__file__).parent)",
        ],
        venv.parent,
        env,
    ).strip()
    package = Path(where)
    assert package.is_relative_to(venv), f"auto_resume imported from {package}, not from the virtualenv"
    assert {path.name for path in (package / "examples").glob("*.py")} >= {
        "foreach_flow.py",
        "demo_support.py",
    }


def test_demo_runs_from_the_wheel(installed: tuple[Path, dict[str, str]]) -> None:
    venv, env = installed
    out = _run(
        [
            str(
                venv / "bin" / "auto-resume",
            ),
            "demo",
        ],
        venv.parent,
        env,
    )
    assert "resume run" in out and "succeeded" in out, out
    assert "successful=True" in out, out


def test_validate_and_the_code_location_load_from_the_wheel(
    installed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    venv, env = installed
    python = str(venv / "bin" / "python")
    examples = Path(
        _run([python, "-c", "import auto_resume.cli.demo as d; print(d.EXAMPLES)"], tmp_path, env).strip()
    )
    env = {**env, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    # A definitions file compiled from a shipped flow, and a flow declared by its file.
    definitions = tmp_path / "linear_flow_dagster.py"
    compile_argv = [python, str(examples / "linear_flow.py"), "--no-pylint", "--datastore=local"]
    _run([*compile_argv, "--metadata=local", "dagster", "create", str(definitions)], tmp_path, env)
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nflows:\n"
        f"  - definitions_file: {definitions.name}\n"
        f"  - flow_file: {examples / 'foreach_flow.py'}\n"
    )
    out = _run([str(venv / "bin" / "auto-resume"), "validate", "policy.yaml"], tmp_path, env)
    assert "valid; resume jobs:" in out and "LinearFlow_resume" in out and "ForeachFlow_resume" in out, out

    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: auto_resume.definitions\n"
        "      working_directory: .\n      location_name: auto_resume\n"
    )
    _run([str(venv / "bin" / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], tmp_path, env)
