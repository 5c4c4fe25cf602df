"""What several commands share: consoles, run-config flags, edge-device flags, printed summaries."""

from __future__ import annotations

import argparse
import functools

from rich.console import Console
from rich.table import Table

from askexpert.errors import ConfigError

# flags are spelled out: "--out" must never silently mean "--out-dir"
exact_parser = functools.partial(argparse.ArgumentParser, allow_abbrev=False)


def log_console() -> Console:
    """Progress and logs go to stderr."""
    from askexpert.console import stderr_console

    return stderr_console()


def table_console() -> Console:
    """Tables go to stdout; piped into a file or another program, they keep their full width."""
    from askexpert.console import stdout_console

    return stdout_console()


def require_positive(*flags: tuple[str, float | None]) -> None:
    """Refuse a flag given a value <= 0 (None: not given, its default applies)."""
    for flag, value in flags:
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be positive, got {value}",
                              fix=f"give {flag} a positive value, or leave it out for the default")


def add_edge_device_flags(p: argparse.ArgumentParser, flag: str, default: str = "host") -> None:
    from askexpert.costs.profiles import edge_speed_names

    p.add_argument(flag, default=default, choices=["host", *edge_speed_names()],
                   help="emulate this edge device on one core of this host, each model call lasting the device "
                   "model's time for it (costs/profiles.yaml edge_speeds), the server pinned to the other "
                   f"cores; host: the edge runs unthrottled in this process (default: {default})")
    p.add_argument("--edge-mode", default="auto", choices=["auto", "model", "kernel", "paced"],
                   help="how the edge is slowed: model (each model call lasts the device model's prediction for its "
                   "graph, other work dilated by the device's sysbench figure; auto, the default, is model), or the "
                   "older one-ratio emulation: kernel (a cgroup CPU quota at the reference model's ratio; needs a "
                   "writable CPU controller), paced (each model call at least its CPU time x that ratio)")


def print_edge_summary(report, title: str = "edge run", energy=None) -> None:
    s, p = report.summary, report.policy
    table = Table(title=f"{title}: {s.samples} images from {report.input} ({report.backend}, {report.source}), "
                        f"link {report.link}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if s.accuracy is not None:
        table.add_row("accuracy, collaborative %", f"{s.accuracy:.2f}")
        table.add_row("accuracy, generalist alone %", f"{s.generalist_accuracy:.2f}")
        if s.offloaded_accuracy is not None:
            table.add_row("on offloaded: collaborative / generalist %",
                          f"{s.offloaded_accuracy:.2f} / {s.offloaded_generalist_accuracy:.2f}")
    table.add_row("offload rate %", f"{s.offload_rate:.1f} (tau {p.tau:.3f}, k {p.k}, {p.confidence})")
    table.add_row("expert fallbacks ('other') / degraded (no answer)", f"{s.expert_fallbacks} / {s.degraded}")
    if s.expert_calls_per_offload > 1:
        table.add_row("re-routing on the server", f"{s.expert_calls_per_offload:.2f} experts asked an offload; "
                      f"{s.rerouted} answered by another expert than the routed one")
    if report.resumed:
        table.add_row("resumed", f"{report.resumed} answers from the interrupted run (latency: this run's only)")
    lat = s.latency_ms
    table.add_row("latency p50 / p95 / mean ms", f"{lat.p50:.2f} / {lat.p95:.2f} / {lat.mean:.2f}")
    c = report.control
    if c is not None:
        unit = {"slo-p95": f"p95 <= {c.target:g} ms", "energy-budget": f"edge energy <= {c.target:g} mJ",
                "target-offload": f"offload {100 * c.target:g}% +/- 3 points",
                "target-accuracy": f"kept accuracy >= {100 * c.target:g}% - 2 points"}[c.mode]
        table.add_row(f"windows of {c.window} images within {unit}",
                      f"{c.windows_within} of {c.windows} ({c.share_within:.1f}%)" if c.windows else "none complete")
        if c.estimate_by_window:
            table.add_row("kept accuracy by window: estimated / true %", ", ".join(
                f"{e:.1f} / {'-' if t is None else f'{t:.1f}'}"
                for e, t in zip(c.estimate_by_window, c.kept_accuracy_by_window, strict=True)))
        table.add_row("tau's path", f"{len(c.changes) - 1} changes, tau {c.tau_min:.4f}..{c.tau_max:.4f}; last: "
                      f"{c.changes[-1].why}")
    if report.corruption:
        table.add_row("inputs drifted", report.corruption)
    if s.up_bytes_per_offload:
        table.add_row("bytes an offload: up / down" + (f" ({report.encoding})" if report.encoding else ""),
                      f"{s.up_bytes_per_offload:,.0f} / {s.down_bytes_per_offload:,.0f}")
    b = s.breakdown_ms_offloaded
    table.add_row("offloaded: edge / encode / network / link / queue / expert ms",
                  " / ".join(f"{b[k]:.2f}" for k in ("edge_ms", "encode_ms", "network_ms", "link_ms", "queue_ms",
                                                      "expert_ms")))
    if energy is not None:
        table.add_row(f"edge energy per image ({energy.edge_energy_kind})",
                      f"{energy.edge_mj_per_image:.2f} mJ (compute {energy.edge_compute_mj_per_image:.2f}, waiting "
                      f"{energy.edge_wait_mj_per_image:.2f}, radio {energy.radio_mj_per_image:.3f})")
        table.add_row(f"server energy per image ({energy.server_label})", f"{energy.server_mj_per_image:.2f} mJ")
    table_console().print(table)


def add_rule_flags(p: argparse.ArgumentParser, default_from: str | None = None) -> None:
    """``--confidence`` and ``--fallback``, their choices from the routing policy's own types. With
    ``default_from`` the flags default to None (the caller's own value wins, e.g. a bundle's)."""
    from typing import get_args

    from askexpert.contract.confidence import CONFIDENCE_RULES
    from askexpert.contract.labels import Fallback

    for flag, choices, what in (("--confidence", CONFIDENCE_RULES, "confidence score (a bundle built with "
                                 "--deferral learned scores with its learned rule unless this is given)"),
                                ("--fallback", get_args(Fallback), "when the generalist's answer stands after an "
                                 "offload")):
        if default_from is None:
            p.add_argument(flag, choices=choices, default=choices[0], help=f"{what} (default {choices[0]})")
        else:
            p.add_argument(flag, choices=choices, help=f"{what} (default: {default_from} {choices[0]})")
