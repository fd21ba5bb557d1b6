"""`python -m loop.plan`: what a composed run will hold in GPU memory, row by row, before any
model loads, against the GPU's memory (`plan.gpu_memory=80GiB`, or the GPU of this machine).

    python -m loop.plan teacher=qwen7b student=llama1b plan.gpu_memory=80GiB
    python -m loop.plan experiment=paper_squad plan.gpu_memory=141GiB

The same plan runs when `loop.run` starts on a GPU (or with plan.gpu_memory set): a run that
cannot fit stops there with one line naming the settings to change. How each row is counted:
loop/core/memory.py. Exit status: 0 when it fits (or no size is known), 1 when it does not.
"""

from __future__ import annotations

import sys

import loop.tasks  # noqa: F401 (hands loop.core the domains, loop.core.domain.provide)


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException

    from loop.core.cli import reported
    from loop.core.errors import ConfigError
    from loop.core.measure import compose
    from loop.core.memory import check, parse_size, table

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    with reported(also=(HydraException,)):
        run = compose(argv)
        memory = parse_size(run.plan.gpu_memory) if run.plan.gpu_memory else None
        print(f"teacher={run.teacher.name} ({run.teacher.backend}) student={run.student.name} "
              f"task={run.task.name} executor={run.executor.name}; GPU dtypes (auto: bfloat16)")
        print(table(run, memory))
        try:
            check(run)
        except ConfigError as e:  # the launch check's line
            print(f"at launch: {e}")
            return 1
        if memory is None:
            print("no GPU here and no plan.gpu_memory given: nothing to check against")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
