"""The edge's answers on disk, written as they are made: the predictions CSV and the JSON-lines trace.

Both files get every batch's rows as soon as the batch is answered, flushed, so a crash, a kill or a
power-cut of the process loses nothing already answered; ``--resume`` reads them back, checks they
belong to the same inputs, and the run goes on from the first unanswered input.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, fields
from pathlib import Path

from askexpert.errors import ConfigError
from askexpert.runtime.edge import Route, SampleTrace

PREDICTION_COLUMNS = ["index", "file", "label", "label_name", "pred", "pred_name", "local_pred", "local_pred_name",
                      "confidence", "route", "expert", "degraded"]
_TRACE_FIELDS = {f.name for f in fields(SampleTrace)}
_TIMINGS = ("edge_ms", "edge_share_ms", "encode_ms", "network_ms", "link_ms", "queue_ms", "expert_ms",
            "expert_share_ms", "total_ms")


class AnswerLog:
    """Appends each batch's traces to the predictions CSV and/or the trace file, flushed per batch."""

    def __init__(self, predictions: Path | None, trace: Path | None, *, class_names: list[str],
                 files: list[str] | None, append: bool) -> None:
        self.names, self.files = class_names, files
        mode = "a" if append else "w"
        self._handles = []
        self._csv = self._trace = None
        if predictions is not None:
            fresh = not append or not predictions.is_file() or predictions.stat().st_size == 0
            predictions.parent.mkdir(parents=True, exist_ok=True)
            handle = open(predictions, mode, newline="")  # noqa: SIM115 (closed in close())
            self._handles.append(handle)
            self._csv = csv.writer(handle)
            if fresh:
                self._csv.writerow(PREDICTION_COLUMNS)
        if trace is not None:
            trace.parent.mkdir(parents=True, exist_ok=True)
            self._trace = open(trace, mode)  # noqa: SIM115 (closed in close())
            self._handles.append(self._trace)

    def _name(self, c: int | None) -> str:
        return self.names[c] if c is not None and 0 <= c < len(self.names) else ""

    def write(self, traces: Iterable[SampleTrace]) -> None:
        for t in traces:
            if self._csv is not None:
                self._csv.writerow([t.index, self.files[t.index] if self.files else "",
                                    "" if t.label is None else t.label, self._name(t.label), t.pred,
                                    self._name(t.pred), t.local_pred, self._name(t.local_pred), f"{t.confidence:.4f}",
                                    t.route.value, t.expert or "", int(t.degraded)])
            if self._trace is not None:
                self._trace.write(json.dumps(asdict(t)) + "\n")
        for handle in self._handles:
            handle.flush()

    def close(self) -> None:
        for handle in self._handles:
            handle.close()

    def __enter__(self) -> AnswerLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_trace(path: Path) -> list[SampleTrace]:
    out = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line a kill cut short: it and what follows are not answered
            break
        row = {k: v for k, v in row.items() if k in _TRACE_FIELDS}
        row["route"] = Route(row["route"])
        out.append(SampleTrace(**row))
    return out


def _read_predictions(path: Path) -> tuple[list[SampleTrace], list[str]]:
    """The answers of a predictions CSV (timings unknown: NaN) and each row's file."""
    out, files = [], []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != PREDICTION_COLUMNS:
        raise ConfigError(f"{path} is not an askexpert predictions file (its header differs)",
                          fix="point --predictions at the file a previous run wrote, or leave out --resume")
    for row in rows[1:]:
        if len(row) != len(PREDICTION_COLUMNS):  # the row a kill cut short
            break
        r = dict(zip(PREDICTION_COLUMNS, row, strict=True))
        out.append(SampleTrace(index=int(r["index"]), label=int(r["label"]) if r["label"] else None,
                               pred=int(r["pred"]), local_pred=int(r["local_pred"]), confidence=float(r["confidence"]),
                               route=Route(r["route"]), expert=r["expert"] or None, degraded=r["degraded"] == "1",
                               **dict.fromkeys(_TIMINGS, math.nan)))
        files.append(r["file"])
    return out, files


def _truncate(path: Path, rows: int, header: bool) -> None:
    """Keep the first ``rows`` records of a file (and its header line)."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:rows + int(header)]))


def resume(predictions: Path | None, trace: Path | None, *, files: list[str] | None, count: int) -> list[SampleTrace]:
    """The answers an interrupted run already wrote (from the trace when there is one: it has the timings),
    both files cut back to the rows they share; checked against the inputs (their number and files)."""
    if predictions is None and trace is None:
        raise ConfigError("--resume continues the files of an interrupted run, and none is named",
                          fix="give the same --predictions (and/or --trace) as the interrupted run")
    have_trace = trace is not None and trace.is_file()
    have_predictions = predictions is not None and predictions.is_file() and predictions.stat().st_size > 0
    done: list[list[SampleTrace]] = []
    found_files = None
    if have_trace:
        done.append(_read_trace(trace))
    if have_predictions:
        answers, found_files = _read_predictions(predictions)
        done.append(answers)
    if not done:
        return []
    n = min(len(d) for d in done)
    restored = done[0][:n]
    if [t.index for t in restored] != list(range(n)):
        raise ConfigError("the files to resume do not hold answers 0, 1, 2, ... in order",
                          fix="start a fresh run (leave out --resume, or give new --predictions/--trace paths)")
    if n > count:
        raise ConfigError(f"the files to resume hold {n} answers, more than the {count} inputs given",
                          fix="resume with the same --input and --limit as the interrupted run")
    if files and found_files and found_files[:n] != files[:n]:
        first = next(i for i, (a, b) in enumerate(zip(found_files, files, strict=False)) if a != b)
        raise ConfigError(f"answer {first} of {predictions} is for {found_files[first]}, but input {first} now is "
                          f"{files[first]}", fix="resume with the same --input and --limit as the interrupted run")
    if have_trace:
        _truncate(trace, n, header=False)
    if have_predictions:
        _truncate(predictions, n, header=True)
    return restored


def skip(batches, n: int):
    """The batches of an input without its first ``n`` images."""
    for images, labels in batches:
        if n >= len(images):
            n -= len(images)
            continue
        yield images[n:], None if labels is None else labels[n:]
        n = 0

