"""``askexpert testbed check``: each device model against the figures it was fitted to.

For every edge profile with a published table: each published model's prediction in-sample (the model
fitted on the whole table) and leave-one-out (refitted without it), and its *emulated* latency: the
model's ONNX graph run batch 1 on the emulated edge (the host computes, the edge sleeps out the rest),
median of a few runs. Then the paper's models (DeiT-Tiny, DeiT-Small at 224) as each device model
predicts them, by op class. Writes ``summary.json`` (per profile, per model: ``published_ms``,
``emulated_ms``, ``predicted_ms``, ``loo_ms``) and ``summary.md``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from askexpert.costs.device_model import reference_features, validate
from askexpert.costs.profiles import edge_speed, edge_speed_names
from askexpert.costs.references import ensure_reference
from askexpert.errors import AskExpertError
from askexpert_lab.testbed.placement import EmulatedEdge

PAPER_MODELS = ("deit_tiny", "deit_small")
IN_SAMPLE, LEAVE_ONE_OUT = 10.0, 25.0  # the goals, percent


def check_profile(name: str, *, runs: int = 3, emulate: bool = True, log=print) -> dict:
    """One profile's validation rows, emulated where the host is slower than the device allows."""
    profile = edge_speed(name)
    features = reference_features()
    model, prior = profile.device_model(), profile.prior_model()
    rows = {c.model: {"published_ms": c.published_ms, "predicted_ms": c.predicted_ms, "loo_ms": c.loo_ms,
                      "error_pct": c.error_pct, "loo_error_pct": c.loo_error_pct, "emulated_ms": None}
            for c in validate(name, features, profile.published_ms, prior)}
    why_not, placement = (None, None) if emulate else ("--no-emulate", None)
    if emulate:
        try:
            with EmulatedEdge(profile, mode="model", calibration_runs=runs) as edge:
                for m in rows:
                    rows[m]["emulated_ms"] = edge.graph_times(ensure_reference(m), runs)[0]
                    log(f"{name} {m}: published {rows[m]['published_ms']:.1f} ms, "
                        f"emulated {rows[m]['emulated_ms']:.1f}")
                placement = edge.placement.to_dict()
        except AskExpertError as err:  # a device faster than this host: validated, not emulated
            why_not, placement = str(err), None
    paper = {m: {"predicted_ms": model.predict_ms(features[m]),
                 "by_class_ms": {k: v for k, v in model.breakdown_ms(features[m]).items() if v > 0}}
             for m in PAPER_MODELS if m in features}
    return {"device": name, "description": profile.description, "published": profile.published,
            "transformer_in_table": profile.transformer, "caveat": profile.caveat, "scalar": profile.scalar,
            "device_model": model.to_dict(), "prior": prior.device if prior else None,
            "models": rows, "paper_models": paper, "placement": placement, "not_emulated": why_not,
            "within": {"in_sample": sum(abs(r["error_pct"]) <= IN_SAMPLE for r in rows.values()),
                       "leave_one_out": sum(abs(r["loo_error_pct"]) <= LEAVE_ONE_OUT for r in rows.values()),
                       "of": len(rows)}}


def _md(result: dict) -> str:
    lines = [f"# Device models against their published figures ({result['machine']})", ""]
    for p in result["profiles"]:
        lines += [f"## {p['device']}: {p['description']}", "", f"Data: {p['published']['source']}", ""]
        if p["caveat"]:
            lines += [f"**Caveat:** {p['caveat']} (here: {p['prior']}).", ""]
        if p["not_emulated"]:
            lines += [f"Not emulated on this host: {p['not_emulated']}", ""]
        lines += ["| model | published ms | emulated ms | in-sample ms | error | leave-one-out ms | error |",
                  "|---|---|---|---|---|---|---|"]
        for m, r in p["models"].items():
            emu = f"{r['emulated_ms']:.1f}" if r["emulated_ms"] is not None else "-"
            lines.append(f"| {m} | {r['published_ms']:.1f} | {emu} | {r['predicted_ms']:.1f} | "
                         f"{r['error_pct']:+.1f}% | {r['loo_ms']:.1f} | {r['loo_error_pct']:+.1f}% |")
        w = p["within"]
        lines += ["", f"Within +/-{IN_SAMPLE:.0f}% in-sample: {w['in_sample']} of {w['of']}; within +/-"
                  f"{LEAVE_ONE_OUT:.0f}% leave-one-out: {w['leave_one_out']} of {w['of']}.", ""]
        for m, r in p["paper_models"].items():
            parts = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["by_class_ms"].items(), key=lambda kv: -kv[1]))
            lines.append(f"- {m} at 224: **{r['predicted_ms']:.0f} ms** predicted ({parts})")
        lines.append("")
    return "\n".join(lines)


def run_check(devices: list[str] | None = None, *, runs: int = 3, out_dir: Path | None = None,
              emulate: bool = True, machine: str = "this host", log=print) -> dict:
    names = devices or [n for n in edge_speed_names() if edge_speed(n).published_ms]
    result = {"machine": machine, "goals_pct": {"in_sample": IN_SAMPLE, "leave_one_out": LEAVE_ONE_OUT},
              "profiles": [check_profile(n, runs=runs, emulate=emulate, log=log) for n in names]}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(result, indent=1, default=asdict))
        (out_dir / "summary.md").write_text(_md(result))
    return result
