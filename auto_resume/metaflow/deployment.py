"""What a metaflow-dagster definitions file says about how to run its flow.

The generated file is read as text (Python AST), never imported: importing it would register a
second ``op_start`` in our code location and run its module-level code. Only literal constants and
literal arguments of its ``_run_step`` calls are used.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auto_resume.core.errors import UnsupportedFlowError

_CONSTANTS = (
    "FLOW_FILE",
    "FLOW_NAME",
    "METAFLOW_TOP_ARGS",
    "METAFLOW_STEP_ENV",
    "STEP_WITH_DECORATORS",
)
# Newer metaflow-dagster files also list every step decorator; read it when present.
_OPTIONAL_CONSTANTS = ("STEP_DECORATOR_SPECS",)

# Step decorators whose ``runtime_step_cli`` hook rewrites the step command (interpreter, remote
# launcher, extra options). metaflow-dagster calls those hooks; a resume that ran the plain
# command would execute such a step somewhere else, or differently, so these flows are refused.
# @environment's hook only adds variables, which the file also passes as ``extra_env``.
UNSUPPORTED_STEP_DECORATORS = frozenset(
    {"batch", "kubernetes", "conda", "pypi", "parallel", "sandbox", "slurm", "nvidia", "nvct"}
)


class DeploymentError(Exception):
    """A definitions file is not one metaflow-dagster generated, or cannot be read."""


class UnsupportedDeploymentError(DeploymentError, UnsupportedFlowError):
    """A definitions file of a flow auto-resume cannot resume: refused for that flow alone."""


@dataclass(frozen=True)
class StepOptions:
    """How the definitions file invokes one Metaflow step."""

    max_user_code_retries: int = 0
    retry_delay_seconds: float = 0.0
    tags: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    with_decorators: tuple[str, ...] = ()
    # Names of the step's own decorators (static, or --with at compile time): an injected
    # decorator of one of these names is ignored, as Metaflow ignores it.
    decorators: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Deployment:
    """A flow as deployed by one metaflow-dagster definitions file."""

    definitions_file: Path
    job_name: str
    flow_file: Path
    flow_name: str
    top_args: tuple[str, ...]
    step_env: dict[str, str]
    steps: dict[str, StepOptions]

    @property
    def resume_job_name(self) -> str:
        """Name of the companion resume job in the auto-resume code location."""
        return f"{self.job_name}_resume"

    def step_options(self, step_name: str) -> StepOptions:
        """Options for ``step_name``; defaults when the file does not mention the step."""
        return self.steps.get(step_name, StepOptions())

    def top_arg(self, name: str) -> str | None:
        """Value of a ``--name=value`` top-level Metaflow argument, if present."""
        prefix = f"--{name}="
        for arg in self.top_args:
            if arg.startswith(prefix):
                return arg[len(prefix) :]
        return None


def read_deployment(definitions_file: Path) -> Deployment:
    """Parse a metaflow-dagster definitions file.

    Args:
        definitions_file: Path of a file written by ``python flow.py dagster create``.

    Returns:
        The flow's job name, flow file, Metaflow arguments and per-step options.

    Raises:
        DeploymentError: The file is missing, is not Python, or lacks what metaflow-dagster writes.
    """
    try:
        source = definitions_file.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(definitions_file))
    except OSError as exc:
        raise DeploymentError(
            f"cannot read definitions file {definitions_file}: {exc.strerror or exc}; generate it with "
            f"`python <flow>.py dagster create {definitions_file}` or fix the path"
        ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise DeploymentError(
            f"definitions file {definitions_file} is not a Python source file ({exc}); point the policy "
            f"at the .py file written by `python <flow>.py dagster create <file>`"
        ) from exc
    except SyntaxError as exc:
        raise DeploymentError(
            f"definitions file {definitions_file} is not valid Python (line {exc.lineno}): "
            f"{exc.msg}; regenerate it with `python <flow>.py dagster create {definitions_file}`; if "
            "metaflow-dagster writes it so again (it does for some flow shapes), list the flow file "
            "itself as `flow_file:` (auto-resume then builds its job), or remove the entry"
        ) from exc

    constants = _module_constants(tree)
    missing = [name for name in _CONSTANTS if name not in constants]
    job_names = _job_names(tree)
    if missing or len(job_names) != 1:
        problem = (
            f"it lacks the constants {', '.join(missing)}"
            if missing
            else f"it defines {len(job_names)} @job functions instead of one"
        )
        raise DeploymentError(
            f"{definitions_file} does not look like a metaflow-dagster definitions file: {problem}; "
            f"point the policy at the file written by `python <flow>.py dagster create <file>`"
        )
    with_decorators: dict[str, list[str]] = constants["STEP_WITH_DECORATORS"]
    decorator_specs: dict[str, list[str]] = constants.get("STEP_DECORATOR_SPECS") or {}
    _check_decorators(definitions_file, with_decorators, decorator_specs)
    steps = _step_options(tree, with_decorators, decorator_specs)
    return Deployment(
        definitions_file=definitions_file.resolve(),
        job_name=job_names[0],
        flow_file=Path(constants["FLOW_FILE"]),
        flow_name=str(constants["FLOW_NAME"]),
        top_args=tuple(constants["METAFLOW_TOP_ARGS"]),
        step_env=dict(constants["METAFLOW_STEP_ENV"]),
        steps=steps,
    )


def decorator_name(spec: str) -> str:
    """The decorator name of a Metaflow decospec (``retry:times=1`` -> ``retry``)."""
    return spec.split(":", 1)[0].strip()


def _check_decorators(
    definitions_file: Path,
    with_decorators: dict[str, list[str]],
    decorator_specs: dict[str, list[str]],
) -> None:
    for source in (with_decorators, decorator_specs):
        for step_name, specs in source.items():
            for spec in specs:
                name = decorator_name(str(spec))
                if name in UNSUPPORTED_STEP_DECORATORS:
                    raise UnsupportedDeploymentError(
                        f"{definitions_file}: step {step_name!r} uses @{name}, which changes how "
                        "the step is launched; auto-resume runs steps locally with the plain "
                        "Metaflow command and cannot resume this flow: remove the flow from the "
                        "policy (or the decorator from the step)"
                    )


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    constants: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in _CONSTANTS + _OPTIONAL_CONSTANTS:
            try:
                constants[target.id] = ast.literal_eval(value)
            except ValueError:
                continue
    return constants


def _decorator_name(decorator: ast.expr) -> str | None:
    func = decorator.func if isinstance(decorator, ast.Call) else decorator
    return func.id if isinstance(func, ast.Name) else None


def _job_names(tree: ast.Module) -> list[str]:
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and any(_decorator_name(d) == "job" for d in node.decorator_list)
    ]


def _retry_policy(function: ast.FunctionDef) -> tuple[int, float]:
    """(max_retries, delay) from ``@op(retry_policy=RetryPolicy(...))``, or (0, 0)."""
    for decorator in function.decorator_list:
        if not (isinstance(decorator, ast.Call) and _decorator_name(decorator) == "op"):
            continue
        for keyword in decorator.keywords:
            if keyword.arg == "retry_policy" and isinstance(keyword.value, ast.Call):
                values = {k.arg: _literal(k.value, 0) for k in keyword.value.keywords}
                return int(values.get("max_retries") or 0), float(values.get("delay") or 0)
    return 0, 0.0


def _literal(node: ast.expr, default: Any) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return default


def _keyword(keywords: dict[str, ast.expr], name: str, default: Any) -> Any:
    return _literal(keywords[name], default) if name in keywords else default


def _step_options(
    tree: ast.Module, with_decorators: dict[str, list[str]], decorator_specs: dict[str, list[str]]
) -> dict[str, StepOptions]:
    def names(step_name: str) -> frozenset[str]:
        specs = [*with_decorators.get(step_name, ()), *decorator_specs.get(step_name, ())]
        return frozenset(decorator_name(str(spec)) for spec in specs)

    options: dict[str, StepOptions] = {}
    for function in tree.body:
        if not isinstance(function, ast.FunctionDef):
            continue
        max_retries, delay = _retry_policy(function)
        for call in ast.walk(function):
            if not (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name)
                and call.func.id == "_run_step"
                and len(call.args) >= 2
            ):
                continue
            step_name = _literal(call.args[1], None)
            if not isinstance(step_name, str):
                continue
            keywords = {k.arg: k.value for k in call.keywords if k.arg}
            user_retries = _keyword(keywords, "max_user_code_retries", 0)
            tags = _keyword(keywords, "tags", [])
            extra_env = _keyword(keywords, "extra_env", None)
            options[step_name] = StepOptions(
                max_user_code_retries=max(int(user_retries or 0), max_retries),
                retry_delay_seconds=delay,
                tags=tuple(str(t) for t in tags or ()),
                extra_env={str(k): str(v) for k, v in (extra_env or {}).items()},
                with_decorators=tuple(with_decorators.get(step_name, ())),
                decorators=names(step_name),
            )
    for step_name in {*with_decorators, *decorator_specs}:
        own = tuple(with_decorators.get(step_name, ()))
        options.setdefault(step_name, StepOptions(with_decorators=own, decorators=names(step_name)))
    return options
