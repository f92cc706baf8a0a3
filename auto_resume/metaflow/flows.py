"""A flow file imported: its flow class, its graph as a FlowShape, and what running it takes.

A flow file is imported once per process (and path); importing it must not run the flow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from auto_resume.core.errors import MetaflowAccessError, UnsupportedFlowError
from auto_resume.core.flow_shape import FlowShape, StepShape, topological
from auto_resume.metaflow import internals
from auto_resume.metaflow.commands import default_top_args
from auto_resume.metaflow.datastore import default_configuration, step_env_for
from auto_resume.metaflow.deployment import UNSUPPORTED_STEP_DECORATORS


@lru_cache(maxsize=64)
def _import_flow_module(flow_file: Path) -> Any:
    module_name = "auto_resume_flow_" + hashlib.sha1(str(flow_file).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(module_name, flow_file)
    if spec is None or spec.loader is None:
        raise MetaflowAccessError(f"cannot import flow file {flow_file}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(flow_file.parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        raise MetaflowAccessError(
            f"importing flow file {flow_file} failed: {exc!r}; it must be importable "
            "(keep `MyFlow()` under `if __name__ == '__main__':`)"
        ) from exc
    finally:
        sys.path.remove(str(flow_file.parent))
    return module


def _flow_class(flow_file: Path, flow_name: str | None) -> Any:
    """The flow class ``flow_name`` of ``flow_file``; the only one defined there when None."""
    from metaflow.flowspec import FlowSpec

    module = _import_flow_module(flow_file)
    if flow_name is not None:
        flow_class = internals.mutated_flow_class(getattr(module, flow_name, None))
        if not (isinstance(flow_class, type) and issubclass(flow_class, FlowSpec)):
            raise MetaflowAccessError(f"flow file {flow_file} has no flow class {flow_name}")
        return flow_class
    found = [
        value
        for value in map(internals.mutated_flow_class, vars(module).values())
        if isinstance(value, type)
        and issubclass(value, FlowSpec)
        and value is not FlowSpec
        and value.__module__ == module.__name__
    ]
    if len(found) != 1:
        names = ", ".join(sorted(c.__name__ for c in found)) or "none"
        raise MetaflowAccessError(
            f"flow file {flow_file} defines {len(found)} flow classes ({names}); name the one to "
            "run with `flow_class:` in its policy entry"
        )
    return found[0]


def project_system_tags(flow_file: Path, flow_name: str, top_args: Sequence[str]) -> tuple[str, ...]:
    """The system tags ``@project`` puts on every run, step and task of the flow; () without it.

    Metaflow's project decorator adds ``project:<name>`` and ``project_branch:<branch>`` as
    sticky tags of the metadata provider when a flow starts, so a run is found in its project's
    namespace; records auto-resume writes itself (a resume's run, its steps, its clones) need
    them too. The branch is the decorator's, or ``--branch``/``--production`` of the top-level
    arguments (metaflow-dagster writes them there), or ``user.<user name>``, as the decorator
    computes it (``format_name``).
    """
    from metaflow.decorators import flow_decorators
    from metaflow.plugins.project_decorator import format_name
    from metaflow.util import get_username

    decorators = flow_decorators(_flow_class(flow_file, flow_name))
    project = next((d for d in decorators if d.name == "project"), None)
    if project is None:
        return ()
    branch = project.attributes.get("branch") or _top_option(top_args, "branch")
    production = bool(project.attributes.get("production")) or "--production" in top_args
    name = project.attributes["name"]
    _, branch_name = format_name(flow_name, name, production, branch, get_username())
    return (f"project:{name}", f"project_branch:{branch_name}")


def _top_option(top_args: Sequence[str], name: str) -> str | None:
    """Value of ``--name value`` or ``--name=value`` among Metaflow's top-level arguments."""
    for index, arg in enumerate(top_args):
        if arg == f"--{name}" and index + 1 < len(top_args):
            return top_args[index + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def load_flow_shape(flow_file: Path, flow_name: str) -> FlowShape:
    """Import a flow file and return its graph.

    Raises:
        MetaflowAccessError: The file cannot be imported or has no such flow class.
    """
    return _flow_shape(_flow_class(flow_file, flow_name), flow_file)


def _flow_shape(flow_class: Any, flow_file: Path) -> FlowShape:
    from metaflow.graph import FlowGraph

    flow_name = flow_class.__name__
    graph = FlowGraph(flow_class)
    steps = []
    for node in graph.sorted_nodes:
        shape = graph[node] if isinstance(node, str) else node
        if shape.parallel_step or shape.parallel_foreach or shape.type == "split-parallel":
            raise UnsupportedFlowError(
                f"flow {flow_name} in {flow_file}: step {shape.name!r} is a @parallel step (or "
                "starts one), which metaflow-dagster and auto-resume do not support; remove the "
                "flow from the policy"
            )
        steps.append(
            StepShape(
                name=shape.name,
                type=shape.type,
                in_funcs=tuple(sorted(shape.in_funcs)),
                out_funcs=tuple(shape.out_funcs),
                is_foreach_join=shape.type == "join"
                and bool(shape.split_parents)
                and graph[shape.split_parents[-1]].type == "foreach",
            )
        )
    return FlowShape(name=flow_name, steps=topological(steps))


@dataclass(frozen=True)
class FlowFile:
    """A flow file that auto-resume runs itself: its graph, parameters and step decorators."""

    flow_file: Path
    shape: FlowShape
    parameters: tuple[str, ...]
    # Per step: user-code retries and the delay between them (@retry), @environment variables.
    retries: dict[str, tuple[int, float]]
    environment: dict[str, dict[str, str]]
    top_args: tuple[str, ...]
    step_env: dict[str, str]
    # Per step: the names of its decorators (an injected one of these names is ignored).
    decorators: dict[str, frozenset[str]] = field(default_factory=dict)


def load_flow_file(flow_file: Path, flow_name: str | None = None) -> FlowFile:
    """Import a flow file and read what running it takes, as metaflow-dagster would compile it.

    The Metaflow arguments are those of this process's Metaflow configuration (datastore,
    metadata provider, environment), with the datastore root resolved now, as
    ``dagster create`` resolves it when it writes a definitions file.

    Raises:
        MetaflowAccessError: The file cannot be imported or names no single flow.
        UnsupportedFlowError: The flow uses a step decorator that changes how a step is
            launched, or configs or mutators (which a definitions file handles).
    """
    flow_class = _flow_class(flow_file, flow_name)
    shape = _flow_shape(flow_class, flow_file)
    if features := internals.run_time_features(flow_class, [step.name for step in shape.steps]):
        raise UnsupportedFlowError(
            f"flow {shape.name} in {flow_file} uses {', '.join(features)}: its parameters and step "
            "decorators exist only once Metaflow has read its configs, and auto-resume builds a "
            "flow_file job from the class as written; compile it with metaflow-dagster "
            "(`python <flow>.py dagster create <file>`) and list that file as `definitions_file:`"
        )
    retries, environment = _step_decorators(flow_class, shape, flow_file)
    configuration = default_configuration()
    return FlowFile(
        flow_file=flow_file.resolve(),
        shape=shape,
        parameters=internals.flow_parameters(flow_class),
        retries=retries,
        environment=environment,
        top_args=default_top_args(configuration),
        step_env=step_env_for(configuration),
        decorators={
            step.name: frozenset(
                getattr(d, "name", "") for d in getattr(getattr(flow_class, step.name), "decorators", [])
            )
            for step in shape.steps
        },
    )


def _step_decorators(
    flow_class: Any, shape: FlowShape, flow_file: Path
) -> tuple[dict[str, tuple[int, float]], dict[str, dict[str, str]]]:
    """Per step: (@retry times, delay) and @environment variables; refuses launcher decorators."""
    retries: dict[str, tuple[int, float]] = {}
    environment: dict[str, dict[str, str]] = {}
    for step in shape.steps:
        function = getattr(flow_class, step.name)
        for decorator in getattr(function, "decorators", []):
            name = getattr(decorator, "name", "")
            if name in UNSUPPORTED_STEP_DECORATORS:
                raise UnsupportedFlowError(
                    f"flow {shape.name} in {flow_file}: step {step.name!r} uses @{name}, which "
                    "changes how the step is launched; auto-resume runs steps as local "
                    "subprocesses only: remove the flow from the policy"
                )
            attributes = getattr(decorator, "attributes", {}) or {}
            if name == "retry":
                delay = float(attributes.get("minutes_between_retries") or 0) * 60
                retries[step.name] = (int(attributes.get("times") or 0), delay)
            elif name == "environment":
                environment[step.name] = {str(k): str(v) for k, v in (attributes.get("vars") or {}).items()}
    return retries, environment
