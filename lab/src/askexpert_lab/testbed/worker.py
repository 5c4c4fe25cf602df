"""The edge's own process: pinned to the edge core, running whatever the placement sends it.

It answers two requests over a pipe: time the reference workload under a pacer, and call a module-level
function with keyword arguments (the edge runner, a bench system; the placement passes its pacer,
:mod:`askexpert_lab.testbed.pacing`, as one of them). The process keeps no pacing state of its own. Exceptions come
back as they are (pickled), so the caller sees the edge's own error. Torch-free by construction:
the edge imports what the deployed edge imports.
"""

from __future__ import annotations

import os
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path


def worker_main(conn, cores: list[int]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))
    references: dict[Path, object] = {}
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        kind = request[0]
        if kind == "stop":
            conn.send(("ok", None))
            return
        try:
            if kind == "reference":
                from askexpert_lab.testbed.reference import ReferenceWorkload

                path, runs, pacer = request[1], request[2], request[3]
                if path not in references:
                    references[path] = ReferenceWorkload(path)
                result = references[path].times_ms(runs=runs, pacer=pacer)
            elif kind == "call":
                fn, kwargs = request[1], request[2]
                result = fn(**kwargs)
            else:
                raise ValueError(f"unknown request {kind!r}")
        except BaseException as err:  # the caller re-raises it
            try:
                conn.send(("error", err, traceback.format_exc()))
            except Exception:  # unpicklable: send its text
                conn.send(("error", RuntimeError(f"{type(err).__name__}: {err}"), traceback.format_exc()))
            if isinstance(err, KeyboardInterrupt | SystemExit):
                return
            continue
        conn.send(("ok", result))


if __name__ == "__main__":  # python -m askexpert_lab.testbed.worker FD CORES
    worker_main(Connection(int(sys.argv[1])), [int(c) for c in sys.argv[2].split(",")])
