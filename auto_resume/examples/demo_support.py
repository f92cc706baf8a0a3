"""Side effects the example flows leave, so tests and the demo can see what really ran.

Every execution of a step's code appends a line to ``<workdir>/<step>[-<index>].count``
(``ran``, with the value of ``AUTO_RESUME_INJECTED`` when a resume's injected decorator set it);
a step named in ``fail_at`` (``process``, or ``body:3`` for one foreach item) fails the first
time it runs and succeeds afterwards. With an empty ``workdir`` both are off.
"""

import os
import time


def record_and_maybe_fail(workdir, fail_at, step, index=None):
    if not workdir:
        return
    os.makedirs(workdir, exist_ok=True)
    name = step if index is None else f"{step}-{index}"
    # A resume's injected `environment` decorator shows on the line of the execution it reached.
    injected = os.environ.get("AUTO_RESUME_INJECTED")
    with open(os.path.join(workdir, name + ".count"), "a") as counter:
        counter.write(f"ran with AUTO_RESUME_INJECTED={injected}\n" if injected else "ran\n")
    # Injected the same way, a slow step (to show a resume's time limit stopping it).
    time.sleep(float(os.environ.get("AUTO_RESUME_EXAMPLE_SLEEP") or 0))
    target = step if index is None else f"{step}:{index}"
    marker = os.path.join(workdir, name + ".failed-once")
    if target in fail_at.split(",") and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"injected failure in {target} (it will succeed when run again)")


def record_result(workdir, *values):
    """Write the end step's values to ``<workdir>/alpha.txt``, space-separated (off without workdir)."""
    if workdir:
        with open(os.path.join(workdir, "alpha.txt"), "w") as out:
            out.write(" ".join(str(value) for value in values) + "\n")


def record_and_fail_twice(workdir, fail_twice_at, step, index=None):
    """Like ``record_and_maybe_fail``, but a step named in ``fail_twice_at`` fails on its first
    TWO runs and succeeds on the third (a resume chain: the first resume fails too)."""
    if not workdir:
        return
    name = step if index is None else f"{step}-{index}"
    target = step if index is None else f"{step}:{index}"
    if target not in fail_twice_at.split(","):
        return
    marker = os.path.join(workdir, name + ".failures")
    failures = 0
    if os.path.exists(marker):
        with open(marker) as previous:
            failures = len(previous.read().splitlines())
    if failures < 2:
        with open(marker, "a") as out:
            out.write("failed\n")
        raise RuntimeError(f"injected failure {failures + 1} of 2 in {target}")
