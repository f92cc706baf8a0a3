"""What a resume of a wide foreach costs, against the work that must really be redone.

One run, on a fresh local datastore in a temporary directory, prints:

1. the in-process clone cost per task (``cloning.clone_task`` over the origin's tasks);
2. the resume of a WIDTH-way ``ForeachFlow`` whose last item failed, by the companion resume job
   executed in-process (``build_resume_job(...).execute_in_process``, ephemeral instance);
3. Metaflow's own ``python foreach_flow.py resume`` on the same origin run;
4. the floor: running just the failed item, the join and end as three step subprocesses;

and the ratios resume / floor (goal: at most 1.5 at 1,000 items, 3 at 10,000: issue 14) and
resume / native resume (goal: below 1). It also prints what planning and cloning cost per task
(reading the origin step's task indexes, ``read_origin_step``; cloning them, from the resume's
own step report) so that two widths can be compared, and, with ``--child``, the peak resident
memory (VmHWM) of the process that ran the resume job: a fresh interpreter, as a run worker is.

The origin run is built the way metaflow-dagster runs it (``init``, ``start``, one ``step body``
per item with its task ids, the last item failing), but each task is a fork of this process with
Metaflow already imported rather than a new interpreter: 1,000 tasks then take seconds, not
minutes. Metaflow's own runtime (``run``) can be used instead with ``--origin metaflow``.
Usage::

    METAFLOW_USER=bench .venv/bin/python benchmarks/clone_benchmark.py [--width 1000] [--workers 4] \\
        [--repeat 3] [--child] [--no-native]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _support import machine

ROOT = Path(__file__).resolve().parents[1]
DEFINITIONS = ROOT / "examples" / "generated" / "foreach_flow_dagster.py"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=int, default=1000, help="foreach items (default 1000)")
    parser.add_argument("--workers", type=int, default=4, help="Metaflow --max-workers for the origin run")
    parser.add_argument("--profile", action="store_true", help="cProfile the resume job, print the top 25")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of the resume and of the floor, alternating (default 3; 0: make the origin run only)",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        help="datastore directory printed by an earlier run of the same --width: reuse its origin run",
    )
    parser.add_argument(
        "--origin", choices=("fork", "metaflow"), default="fork", help="how the failed origin run is made"
    )
    parser.add_argument(
        "--child",
        action="store_true",
        help="run each resume job in a fresh interpreter and print its peak memory (VmHWM)",
    )
    parser.add_argument("--no-native", action="store_true", help="skip Metaflow's native resume")
    args = parser.parse_args()
    os.environ.setdefault("METAFLOW_USER", "benchmark")
    print(machine())
    scratch = args.reuse or Path(tempfile.mkdtemp(prefix="auto-resume-bench-"))
    # An isolated datastore and metadata root: the repository's .metaflow stays untouched.
    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(scratch)

    from auto_resume.metaflow.deployment import read_deployment

    base = read_deployment(DEFINITIONS)
    top_args = tuple(
        f"--datastore-root={scratch / '.metaflow'}" if a.startswith("--datastore-root=") else a
        for a in base.top_args
    )
    deployment = dataclasses.replace(
        base, top_args=top_args, step_env={**base.step_env, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(scratch)}
    )
    workdir = scratch / "counters"
    failed_item = args.width - 1
    params = [f"--width={args.width}", f"--workdir={workdir}", f"--fail_at=body:{failed_item}"]
    env = {**os.environ, **deployment.step_env}
    flow = [sys.executable, str(deployment.flow_file), *deployment.top_args]
    print(f"ForeachFlow, width {args.width}, item {failed_item} fails once; datastore {scratch}")

    started = time.monotonic()
    if args.reuse:
        origin = "benchorigin"
    elif args.origin == "metaflow":
        origin = _metaflow(
            [*flow, "run", f"--max-workers={args.workers}", f"--max-num-splits={args.width + 1}", *params],
            scratch / "origin-run-id",
            env,
            expect_failure=True,
        )
    else:
        origin = _forked_origin(deployment, params, args.width, args.workers)
    print(f"origin run ({args.origin}, {args.workers} workers): {time.monotonic() - started:.1f}s, {origin}")

    if args.repeat == 0:
        print("--repeat 0: the origin run only; pass the datastore above to --reuse")
        return
    per_task = _clone_cost(deployment, origin)
    print(f"1. in-process clone: {per_task * 1000:.2f} ms/task over {args.width - 1} tasks")
    read_s = _read_cost(deployment, origin)
    print(
        f"   planning read (read_origin_step of the body, {args.width} tasks): {read_s:.2f}s, "
        f"{read_s / args.width * 1000:.3f} ms/task, median of 3"
    )

    # The resume and the floor alternate, args.repeat times each: on a shared machine the load
    # drifts, and medians of interleaved runs keep the ratio honest.
    resumes: list[float] = []
    floors: list[float] = []
    summary: list[str] = []
    peaks: list[float] = []
    for _ in range(args.repeat):
        if args.child:
            resume_s, summary, peak = _in_child(deployment, origin)
            peaks.append(peak)
        else:
            resume_s, summary = _resume_job(deployment, origin, args.profile)
        resumes.append(resume_s)
        floors.append(_floor(deployment, origin, failed_item, args.width))
    resume_s, floor_s = statistics.median(resumes), statistics.median(floors)
    where = "a fresh interpreter" if args.child else "in-process"
    print(f"2. auto-resume job ({where}): {resume_s:.2f}s median of {_runs(resumes)}")
    for line in summary:
        print(f"     {line}")
    if peaks:
        print(f"   peak memory (VmHWM) of the process running the resume job: {max(peaks):.0f} MiB")

    native_s = float("nan")
    if not args.no_native:
        native_s = _native(flow, origin, args.workers, args.width, scratch, env)
    print(f"3. Metaflow native resume: {native_s:.2f}s")

    print(f"4. failed item + join + end as step subprocesses: {floor_s:.2f}s median of {_runs(floors)}")
    goal = 1.5 if args.width <= 1000 else 3
    print(f"resume / (failed item + downstream) = {resume_s / floor_s:.2f}  (goal <= {goal:g})")
    print(f"resume / native resume              = {resume_s / native_s:.2f}  (goal < 1)")
    print(f"(load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())})")


def _native(
    flow: list[str], origin: str, workers: int, width: int, scratch: Path, env: dict[str, str]
) -> float:
    started = time.monotonic()
    _metaflow(
        [
            *flow,
            "resume",
            f"--origin-run-id={origin}",
            f"--max-workers={workers}",
            f"--max-num-splits={width + 1}",
        ],
        scratch / "native-run-id",
        env,
        expect_failure=False,
    )
    return time.monotonic() - started


def _runs(seconds: list[float]) -> str:
    return "[" + ", ".join(f"{s:.2f}" for s in seconds) + "]"


def _forked_origin(deployment, params: list[str], width: int, workers: int) -> str:  # type: ignore[no-untyped-def]
    """A failed origin run, task by task as metaflow-dagster runs it, each task a fork."""
    import metaflow.cli  # noqa: F401  (imported once, before forking)

    run_id = "benchorigin"
    top = list(deployment.top_args)
    values = dict(p[2:].split("=", 1) for p in params)
    for name, value in values.items():
        os.environ["METAFLOW_INIT_" + name.upper()] = value
    _fork_all(deployment, [[*top, "init", f"--run-id={run_id}", "--task-id=params"]], 1)
    start = [
        *top,
        "step",
        "start",
        f"--run-id={run_id}",
        "--task-id=1",
        f"--input-paths={run_id}/_parameters/params",
    ]
    _fork_all(deployment, [start], 1)
    bodies = [
        [
            *top,
            "step",
            "body",
            f"--run-id={run_id}",
            f"--task-id=1-{i}",
            f"--input-paths={run_id}/start/1",
            f"--split-index={i}",
        ]
        for i in range(width)
    ]
    statuses = _fork_all(deployment, bodies, workers)
    if statuses[-1] == 0 or any(statuses[:-1]):
        sys.exit(f"origin run: expected only the last item to fail, got statuses {statuses[-3:]}")
    return run_id


def _fork_all(deployment, commands: list[list[str]], workers: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Run ``flow.py <args>`` for each argument list in forked children, ``workers`` at a time."""
    flow_file = str(deployment.flow_file)
    sys.path.insert(0, str(deployment.flow_file.parent))
    statuses: dict[int, int] = {}
    running: dict[int, int] = {}
    pending = list(enumerate(commands))
    while pending or running:
        while pending and len(running) < workers:
            index, argv = pending.pop(0)
            pid = os.fork()
            if pid == 0:  # the child: run the flow's CLI as `python flow.py <argv>` would
                code = 1
                try:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                    os.dup2(devnull, 2) if os.environ.get("BENCH_QUIET", "1") == "1" else None
                    sys.argv = [flow_file, *argv]
                    # Into this process's own __main__: Metaflow registers ForeachFrame there
                    # for pickling, and a fresh module (runpy) would lack it.
                    main_module = sys.modules["__main__"]
                    main_module.__dict__["__file__"] = flow_file
                    source = Path(flow_file).read_text()
                    exec(compile(source, flow_file, "exec"), main_module.__dict__)
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                finally:
                    os._exit(code)
            running[pid] = index
        pid, status = os.wait()
        statuses[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    return [statuses[i] for i in range(len(commands))]


def _metaflow(command: list[str], run_id_file: Path, env: dict[str, str], expect_failure: bool) -> str:
    result = subprocess.run(
        [*command, f"--run-id-file={run_id_file}"], env=env, capture_output=True, text=True, check=False
    )
    if (result.returncode != 0) != expect_failure:
        sys.exit(
            f"unexpected exit status {result.returncode} of {' '.join(command[:6])} ...:\n"
            + result.stderr[-3000:]
        )
    return run_id_file.read_text().strip()


def _clone_cost(deployment, origin: str) -> float:  # type: ignore[no-untyped-def]
    from auto_resume.metaflow.cloning import clone_task
    from auto_resume.metaflow.datastore import store_for
    from auto_resume.metaflow.origin import read_origin_step
    from auto_resume.metaflow.records import register_run

    store = store_for(deployment)
    target = f"clonebench{int(time.time())}"
    register_run(store, deployment, target)
    body = read_origin_step(store, origin, "body")
    tasks = [t for t in body.tasks.values() if t.ok]
    started = time.monotonic()
    for task in tasks:
        clone_task(store, body, task.pathspec, target, task.task_id)
    return (time.monotonic() - started) / max(1, len(tasks))


def _read_cost(deployment, origin: str) -> float:  # type: ignore[no-untyped-def]
    """Median of 3 reads of the origin's body step: what planning the wide step reads."""
    from auto_resume.metaflow.datastore import store_for
    from auto_resume.metaflow.origin import read_origin_step

    store = store_for(deployment)
    times = []
    for _ in range(3):
        started = time.monotonic()
        read_origin_step(store, origin, "body")
        times.append(time.monotonic() - started)
    return statistics.median(times)


def _in_child(deployment, origin: str) -> tuple[float, list[str], float]:  # type: ignore[no-untyped-def]
    """``_resume_job`` in a fresh interpreter (spawn); its time, step lines and VmHWM in MiB."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_child_resume, (deployment, origin))


def _child_resume(deployment, origin: str) -> tuple[float, list[str], float]:  # type: ignore[no-untyped-def]
    elapsed, summary = _resume_job(deployment, origin, profile=False)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return elapsed, summary, int(line.split()[1]) / 1024
    return elapsed, summary, float("nan")


def _resume_job(deployment, origin: str, profile: bool) -> tuple[float, list[str]]:  # type: ignore[no-untyped-def]
    from dagster import DagsterInstance

    from auto_resume.dagster import naming
    from auto_resume.dagster.resume_job import build_resume_job, resume_run_config
    from auto_resume.metaflow.flows import load_flow_shape

    job = build_resume_job(deployment, load_flow_shape(deployment.flow_file, deployment.flow_name))
    instance = DagsterInstance.ephemeral()
    # Dagster's console logger would print every event of the run; keep the output to figures.
    config = {
        **resume_run_config(deployment, origin),
        "loggers": {"console": {"config": {"log_level": "ERROR"}}},
    }
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.monotonic()
    result = job.execute_in_process(run_config=config, instance=instance, raise_on_error=False)
    elapsed = time.monotonic() - started
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    if not result.success:
        sys.exit("the resume job failed")
    summary = [e.user_message for e in instance.all_logs(result.run_id) if e.user_message.startswith("step ")]
    # Where the wide step's own time went, from its op's output metadata.
    for event in result.all_events:
        if not event.is_successful_output or not event.step_key.endswith("body"):
            continue
        metadata = {k: v.value for k, v in event.step_output_data.metadata.items()}
        if naming.CLONE_SECONDS in metadata:
            read_s, clone_s = metadata[naming.ORIGIN_READ_SECONDS], metadata[naming.CLONE_SECONDS]
            tasks = metadata[naming.TASKS_CLONED] + metadata[naming.TASKS_EXECUTED]
            cloned = max(1, metadata[naming.TASKS_CLONED])
            summary.append(
                f"body: planning read {read_s:.2f}s ({read_s / tasks * 1000:.3f} ms/task), "
                f"cloning {clone_s:.2f}s ({clone_s / cloned * 1000:.3f} ms/task, beside the failed item)"
            )
    return elapsed, summary


def _floor(deployment, origin: str, failed_item: int, width: int) -> float:  # type: ignore[no-untyped-def]
    """Run the failed item, the join and end into a scratch run: the work a resume cannot avoid."""
    from auto_resume.metaflow import commands
    from auto_resume.metaflow.datastore import store_for
    from auto_resume.metaflow.origin import OriginReader
    from auto_resume.metaflow.records import register_run

    reader = OriginReader(deployment)
    run_id = f"floorbench{int(time.time())}"
    register_run(store_for(deployment), deployment, run_id)
    bodies = reader.origin_tasks(origin, "body")
    start = next(iter(reader.origin_tasks(origin, "start").values())).pathspec
    body_task = f"1-{failed_item}"
    steps = [
        ("body", body_task, [start], failed_item),
        (
            "join",
            "1",
            [bodies[(i,)].pathspec for i in range(width) if i != failed_item]
            + [f"{run_id}/body/{body_task}"],
            None,
        ),
        ("end", "1", [f"{run_id}/join/1"], None),
    ]
    started = time.monotonic()
    for step, task_id, inputs, split in steps:
        command = commands.step_command(
            deployment, step, run_id, task_id, inputs, split, retry_count=0, origin_run_id=origin
        )
        result = commands.run_step(deployment, command, step)
        if result.returncode != 0:
            sys.exit(f"floor step {step} failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - started


if __name__ == "__main__":
    main()
