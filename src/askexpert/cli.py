"""The ``askexpert`` command line: parses arguments and calls the library; nothing else."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

import askexpert
from askexpert.contract.protocol import MAX_IMAGES
from askexpert.errors import AskExpertError, ConfigError
from askexpert.security import TOKEN_ENV, is_loopback

EPILOG = """\
examples:
  askexpert demo                                    train, bundle, serve and stream the demo system
  askexpert train generalist --config configs/generalist-fmnist.yaml
  askexpert train generalist --epochs 3 --set data.train_subset=5000 --name quick
  askexpert eval runs/quick                          top-1/top-5, per-class accuracy, confusion matrix
  askexpert build-system runs/g runs/experts --out system    one deployable bundle (system.json + ONNX + experts)
  askexpert serve system                             the bundle's experts over HTTP
  askexpert edge system --server http://127.0.0.1:8000 --input photos/    the edge (no torch needed)
  askexpert models                                   presets with parameters and FLOPs
  askexpert datasets                                 which datasets are available here

Errors are one line naming the fix; the exit status is 2 for a user error.
"""


FULL_INSTALL = {"torch", "torchvision", "timm", "safetensors", "fastapi", "uvicorn", "matplotlib", "onnx",
                "onnxscript", "prometheus_client"}  # what only training, serving and the bench need


def _console() -> Console:
    """Progress and logs go to stderr."""
    from askexpert.console import stderr_console

    return stderr_console()


def _out() -> Console:
    """Tables go to stdout; piped into a file or another program, they keep their full width."""
    from askexpert.console import stdout_console

    return stdout_console()


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """Shortcut flags as ``section.key=value`` overrides, after the explicit ``--set`` ones."""
    out = list(args.set or [])
    for flag, key in (("name", "name"), ("output_dir", "output_dir"), ("data", "data.name"),
                      ("data_root", "data.root"), ("model", "model.name"), ("epochs", "train.epochs"),
                      ("batch_size", "train.batch_size"), ("lr", "train.lr"), ("device", "train.device"),
                      ("seed", "train.seed"), ("threads", "train.threads")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML run config (see configs/)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--name", help="run name: the run directory is OUTPUT_DIR/NAME")
    p.add_argument("--output-dir", help="parent of run directories (default: runs)")
    p.add_argument("--data", help="dataset: fashion-mnist, cifar10, cifar100 or imagefolder:PATH")
    p.add_argument("--data-root", help="directory holding the dataset files (only place searched)")
    p.add_argument("--model", help="model preset or timm model name (see: askexpert models)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue an interrupted run of the same config")
    group.add_argument("--overwrite", action="store_true", help="delete an existing run of the same name first")


def _this_process_output(cfg):
    """Under torchrun, processes other than 0 write their copy of the run into a scratch directory."""
    from askexpert.training.distributed import scratch_output_dir, this_process

    return cfg if this_process().main else cfg.model_copy(update={"output_dir": scratch_output_dir()})


def cmd_train_generalist(args: argparse.Namespace) -> int:
    from askexpert.config import load_run_config
    from askexpert.training import train_generalist

    cfg = _this_process_output(load_run_config(args.config, _run_overrides(args)))
    result = train_generalist(cfg, resume=args.resume, overwrite=args.overwrite, console=_console())
    _print_metrics(result.metrics, f"{cfg.model.name} on {cfg.data.name}", result.checkpoint)
    return 0


def cmd_train_experts(args: argparse.Namespace) -> int:
    from askexpert.training.experts import experts_run_config, experts_run_defaults, train_experts

    overrides = _run_overrides(args)
    for flag, key in (("strategy", "experts.strategy"), ("partition", "experts.partition"), ("init", "experts.init"),
                      ("passes", "experts.passes"), ("init_from", "experts.init_from")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = _this_process_output(experts_run_config(args.config, overrides, base=experts_run_defaults()))
    result = train_experts(cfg, resume=args.resume, overwrite=args.overwrite, console=_console())
    if not result.experts:  # the general model
        from askexpert.models import read_meta

        meta = read_meta(result.run_dir)
        _print_metrics(meta.metrics, f"general model {cfg.model.name} on {cfg.data.name}", result.run_dir / "model")
        return 0
    table = Table(title=f"{cfg.experts.strategy} experts from {cfg.experts.init_from} weights in {result.run_dir}")
    for col in ("expert", "classes", "val subset %", "test subset %", "test 'other' recall %", "steps", "images seen",
                "teacher passes"):
        table.add_column(col)
    for m in result.experts:
        other, budget = m.test.other_recall, m.budget
        table.add_row(str(m.expert), ", ".join(m.names), f"{m.val.subset_accuracy:.2f}",
                      f"{m.test.subset_accuracy:.2f}", "-" if other is None else f"{other:.1f}",
                      str(budget.steps) if budget else "-", str(m.images_seen or "-"),
                      str(budget.teacher_images) if budget else "-")
    _out().print(table)
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from askexpert.training.partition import make_partition

    part = make_partition(args.generalist, args.num_experts, method=args.method, file=args.file,
                          max_size=args.max_size, min_size=args.min_size, overlap=args.overlap, device=args.device,
                          seed=args.seed)
    out = args.out or (args.generalist if args.generalist.is_dir() else args.generalist.parent) / (
        f"partition-{args.method}-{len(part.experts)}.json")
    part.save(out)
    table = Table(title=f"partition ({part.method}{', with overlap' if part.overlap else ''}): {out}")
    table.add_column("expert")
    table.add_column("size", justify="right")
    table.add_column("classes")
    for e, names in part.table():
        table.add_row(str(e), str(len(part.experts[e])), names)
    _out().print(table)
    return 0


def _headline_table(report, args: argparse.Namespace) -> Table:
    """The systems at the headline operating point: baselines, each expert set, the control rows."""
    table = Table(title=f"test accuracy, tau chosen on validation for {100 * args.offload:.0f}% offload, "
                        f"k {args.k or 'best on validation'} (--k)")
    for col in ("system", "k", "overall %", "on offloaded %", "offload %", "hit rate %", "'other' %", "expert load"):
        table.add_column(col, justify="right" if col != "system" else "left")
    b = report.baselines
    table.add_row("generalist alone", "-", f"{b['generalist'].accuracy:.2f}",
                  f"{b['generalist'].offloaded_accuracy:.2f}", "0", "-", "-", "-")
    table.add_row("general model alone (everything offloaded)", "-", f"{b['general'].accuracy:.2f}",
                  f"{b['general'].offloaded_accuracy:.2f}", "100", "-", "-", "-")
    rows = [(f"collaborative: {label}", row) for label, row in report.headline.items()]
    rows += [(f"{'upper bound' if label.endswith('oracle routing') else 'control'}: {label}", row)
             for label, row in report.controls.items()]
    for name, row in rows:
        t = row.test
        table.add_row(name, str(row.k), f"{t.accuracy:.2f}", f"{t.offloaded_accuracy_system:.2f}",
                      f"{t.offload_rate:.1f}", f"{t.routing_hit_rate:.1f}", f"{t.expert_other_rate:.1f}",
                      " / ".join(map(str, t.expert_load)))
    return table


def _subset_table(report) -> Table:
    """Every expert of every set on its own subset's test images."""
    widest = max(len(v) for v in report.subset_accuracy.values())
    subsets = Table(title="each expert on its own subset's test images (accuracy %)")
    subsets.add_column("experts")
    for e in range(widest):
        subsets.add_column(f"expert {e}", justify="right")
    subsets.add_column("mean", justify="right")
    for label, values in report.subset_accuracy.items():
        subsets.add_row(label, *(f"{v:.2f}" for v in values), *([""] * (widest - len(values))),
                        f"{sum(values) / len(values):.2f}")
    return subsets


def cmd_evaluate_system(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from askexpert.bench.offline import GENERAL_AS_EXPERT, evaluate_system

    runs = {}
    for item in args.experts:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).name, item
        runs[label] = Path(path)
    report = evaluate_system(args.generalist, args.general, runs, ks=args.ks, rates=args.rates,
                             headline_rate=args.offload, headline_k=args.k, target_accuracy=args.target_accuracy,
                             confidence=args.confidence, fallback=args.fallback, device=args.device)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(report), indent=1))
    console = _out()
    console.print(_headline_table(report, args))
    if report.subset_accuracy:
        console.print(_subset_table(report))
    grid = Table(title="sweep on test (rows: system and k; columns: target offload rate; cells: overall accuracy %)")
    grid.add_column("system")
    grid.add_column("k")
    for rate in args.rates:
        grid.add_column(f"{100 * rate:.0f}%", justify="right")
    for system in [*runs, GENERAL_AS_EXPERT]:
        for k in args.ks:
            grid.add_row(system, str(k), *(f"{report.row(system, k, rate).test.accuracy:.2f}" for rate in args.rates))
    console.print(grid)
    if args.target_accuracy is not None:
        acc = Table(title=f"least offloading reaching {args.target_accuracy:.2f}% on validation (results on test)")
        for col in ("system", "k", "tau", "offload % (val)", "val %", "offload % (test)", "test %"):
            acc.add_column(col)
        for r in report.grid:
            if r.target_accuracy is not None:
                acc.add_row(r.system, str(r.k), f"{r.tau:.3f}", f"{r.val.offload_rate:.1f}", f"{r.val.accuracy:.2f}",
                            f"{r.test.offload_rate:.1f}", f"{r.test.accuracy:.2f}")
        console.print(acc)
    if args.out:
        console.print(f"full report: {args.out}")
    return 0


def _plan_bundle(bundle, args: argparse.Namespace):
    """Point a freshly built bundle at the most accurate operating point within --p95-latency or
    --edge-energy on --edge-device over --link; the bundle is removed when no point fits (nothing half-made
    stays at --out)."""
    import shutil

    from askexpert.console import logs_on
    from askexpert.runtime.link import parse_link
    from askexpert.testbed.measure import plan_bundle, validation_images

    _require_positive(("--p95-latency", args.p95_latency), ("--edge-energy", args.edge_energy),
                      ("--plan-images", args.plan_images))
    link = parse_link(args.link)
    console = _console()
    console.log(f"measuring the cost model's parts on {args.edge_device} over "
                f"{link.describe() if link else 'loopback'} with {args.server_load} competing clients ...")
    try:
        with logs_on(console):
            bundle, choice, parts, placement = plan_bundle(
                bundle.root, p95_ms=args.p95_latency, edge_mj=args.edge_energy, device=args.edge_device, link=link,
                k=args.k, load=args.server_load, mode=args.edge_mode,
                edge_profile=args.edge_profile, radio=args.radio, say=console.log,
                images=validation_images(bundle.root, args.plan_images))
    except BaseException:
        shutil.rmtree(bundle.root, ignore_errors=True)
        raise
    console.log(placement.describe())
    x = choice.prediction
    console.log(f"measured: the generalist {x.edge_ms:.2f} ms an image (median), an offload {x.offload_ms:.2f} ms "
                f"on the socket + {x.link_ms:.2f} ms of link ({'; '.join(parts.notes)}); the most accurate point "
                "within the budget on validation is kept")
    return bundle


def cmd_build_system(args: argparse.Namespace) -> int:
    from askexpert.routing import DEFAULT_K
    from askexpert.system.build import archive_bundle, build_system

    budget = args.p95_latency is not None or args.edge_energy is not None
    bundle = build_system(args.generalist, args.experts, args.out, offload=args.offload, accuracy=args.accuracy,
                          tau=args.tau, k=args.k or DEFAULT_K, confidence=args.confidence, fallback=args.fallback,
                          include_general=not args.no_general, archive=args.archive and not budget, name=args.name,
                          device=args.device, overwrite=args.overwrite, curve_ks=args.curve_k,
                          deferral=args.deferral)
    if budget:
        bundle = _plan_bundle(bundle, args)
        if args.archive:
            archive_bundle(bundle.root)
    m = bundle.manifest
    r = m.routing
    table = Table(title=f"system bundle {bundle.root} (schema {m.schema_version})")
    table.add_column("")
    table.add_column("", justify="left")
    table.add_row("classes", f"{len(m.classes)} ({m.data.name}; calibrated on {m.data.val_images} validation images)")
    table.add_row("generalist", f"{m.generalist.onnx} ({m.generalist.parameters / 1e6:.2f}M parameters, "
                  f"T {r.temperature:.3f})")
    for e in m.experts:
        table.add_row(f"expert {e.id}", f"{', '.join(e.class_names)} (T {e.temperature:.3f})")
    table.add_row("general model", "included" if m.general else "left out")
    op = r.operating_point
    table.add_row("routing", f"tau {r.tau:.4f}, k {r.k}, {r.confidence}, fallback {r.fallback}")
    if r.deferral is not None:
        table.add_row("learned deferral", f"{len(r.deferral.features)} features, L2 {r.deferral.l2:g} (5-fold CV), "
                      f"fitted on {r.deferral.fitted_on} validation images at k {r.deferral.k}")
    table.add_row("operating point", f"{op.target} {op.value:g}: on validation {op.val_offload_rate:.1f}% offloaded, "
                  f"{op.val_accuracy:.2f}% accurate")
    if op.predicted is not None:
        x = op.predicted
        table.add_row("predicted", f"p95 {x.p95_ms:.1f} ms, mean {x.mean_ms:.1f} ms, edge {x.edge_mj:.1f} mJ an image "
                      f"on {x.device} over {x.link} ({x.load} competing clients)")
    if m.curve is not None:
        table.add_row("operating curve", f"{len(m.curve.points)} points (k {', '.join(map(str, m.curve.ks))}): the "
                      "edge's --slo-p95 / --energy-budget move along it")
    table.add_row("system id", f"{bundle.system_id} (sha256 of system.json: publish it, and serve and run "
                  "with --expect-system-id ID)")
    table.add_row("files", f"{len(m.files)}, each with its sha256 in system.json"
                  + (f"; archive {bundle.root}.tar.gz" if args.archive else ""))
    _out().print(table)
    return 0


def _require_positive(*flags: tuple[str, float | None]) -> None:
    """Refuse a flag given a value <= 0 (None: not given, its default applies)."""
    for flag, value in flags:
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be positive, got {value}",
                              fix=f"give {flag} a positive value, or leave it out for the default")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from askexpert.security import check_exposure, read_token
    from askexpert.serving.app import ServerLimits, create_app
    from askexpert.serving.local import INLINE_MAX, LocalExperts
    from askexpert.serving.pool import ExpertPool

    token = read_token(args.token_file)
    check_exposure(args.host, token, args.insecure)  # before minutes of loading models
    _require_positive(("--max-request-images", args.max_request_images), ("--max-in-flight", args.max_in_flight),
                      ("--body-timeout", args.body_timeout), ("--max-batch", args.max_batch),
                      ("--max-body-bytes", args.max_body_bytes))
    if args.inline_max is not None and args.inline_max < 0:
        raise ConfigError(f"--inline-max must be 0 or more, got {args.inline_max}",
                          fix="give the most images a batch may have to run on the event loop (0: never)")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise ConfigError("TLS needs both --ssl-certfile and --ssl-keyfile", fix="give both (PEM files), or neither")
    limits = ServerLimits(max_images=args.max_request_images, max_body_bytes=args.max_body_bytes,
                          body_timeout_s=args.body_timeout, max_in_flight=args.max_in_flight)
    only = args.experts.split(",") if args.experts else None
    scheme = "https" if args.ssl_certfile else "http"
    if args.backend == "ray":
        if args.inline_max is not None:
            raise ConfigError("--inline-max is for the uvicorn backend (Ray Serve batches in its replicas)",
                              fix="leave --inline-max out with --backend ray")
        _serve_on_ray(args, limits, token, only, scheme)
        return 0
    if args.address or args.ray_config or args.ray_set:
        raise ConfigError("--address, --ray-config and --ray-set are for the Ray Serve backend",
                          fix="add --backend ray, or leave them out")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # the event loop and the model threads share the GIL: hand it over often, so neither waits long
    sys.setswitchinterval(0.0002)
    pool = ExpertPool(args.source, device=args.device, include_general=not args.no_general, trace=not args.eager,
                      expect_system_id=args.expect_system_id, only=only)
    app = create_app(LocalExperts(pool, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                  inline_max=INLINE_MAX if args.inline_max is None else args.inline_max),
                     limits=limits, token=token)
    _console().log(f"serving {len(pool.ids())} experts ({', '.join(pool.ids())}) of {args.source} on "
                   f"{scheme}://{args.host}:{args.port} ({pool.device}); API docs at /docs"
                   + ("; bearer token required" if token else ""))
    if token and scheme == "http" and not is_loopback(args.host):
        _console().log("[yellow]the token travels in clear text over plain HTTP: add --ssl-certfile/--ssl-keyfile")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                limit_concurrency=2 * args.max_in_flight + 16)  # a backstop on connections; the guard answers first
    return 0


def _serve_on_ray(args: argparse.Namespace, limits, token: str | None, only: list[str] | None, scheme: str) -> None:
    """``serve --backend ray``: the same application on Ray Serve deployments (askexpert.serving.ray_app)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise ConfigError("--backend ray needs Ray Serve, which is not installed here",
                          fix="pip install 'askexpert[ray]' (or: pip install 'ray[serve]'), or use the default "
                          "--backend uvicorn")
    from askexpert.serving.ray_app import load_ray_settings, run_server

    settings = load_ray_settings(args.ray_config, args.ray_set)

    def ready(keys: list[str], cluster_cpus: float) -> None:
        where = f"the Ray cluster at {args.address}" if args.address else f"a local Ray cluster ({cluster_cpus:g} CPUs)"
        _console().log(f"serving {len(keys)} experts ({', '.join(keys)}) of {args.source} on Ray Serve, "
                       f"{where}, at {scheme}://{args.host}:{args.port}; API docs at /docs"
                       + ("; bearer token required" if token else "") + "; Ctrl-C stops")

    run_server(args.source, settings, address=args.address, host=args.host, port=args.port,
               include_general=not args.no_general, only=only, ssl_certfile=args.ssl_certfile,
               ssl_keyfile=args.ssl_keyfile, log_level=args.log_level, on_ready=ready, device=args.device,
               trace=not args.eager, threads=args.threads, expect_system_id=args.expect_system_id,
               max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, limits=limits, token=token)


def cmd_edge(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from askexpert.console import logs_on, progress_bar
    from askexpert.corruptions import parse_corruption
    from askexpert.runtime.link import parse_link_arg
    from askexpert.runtime.session import EdgeSettings, run_edge
    from askexpert.security import read_token

    _require_positive(("--timeout", args.timeout), ("--deadline", args.deadline), ("--slo-p95", args.slo_p95),
                      ("--energy-budget", args.energy_budget))
    if args.retries < 0:
        raise ConfigError(f"--retries must be 0 or more, got {args.retries}", fix="give --retries 0, 1, 2, ...")
    settings = EdgeSettings(
        system=args.system, server=args.server[0] if args.server and len(args.server) == 1 else args.server,
        inputs=args.input, link=parse_link_arg(args.link),
        corrupt=parse_corruption(args.corrupt) if args.corrupt else None,
        offload_rate=args.offload_rate, tau=args.tau, temperature=args.temperature, k=args.k,
        confidence=args.confidence, fallback=args.fallback, batch_size=args.batch_size, limit=args.limit,
        threads=args.threads, timeout_s=args.timeout, retries=args.retries, deadline_s=args.deadline,
        trace=args.trace, predictions=args.predictions, resume=args.resume, token=read_token(args.token_file),
        ca_file=args.ca_file, expect_system_id=args.expect_system_id, slo_p95_ms=args.slo_p95,
        energy_budget_mj=args.energy_budget, target_offload=args.target_offload,
        target_accuracy=args.target_accuracy, probe=args.probe, radio=args.radio,
        energy_profile=args.edge_profile or _edge_energy_profile(args.device), encoding=_encoding(args.encode),
    )
    placement = None
    if args.device == "host":
        console = _console()
        with logs_on(console), progress_bar(console, transient=True) as progress:
            report = run_edge(settings, progress=progress)
    else:
        import tempfile

        from askexpert.runtime.session import freeze_split
        from askexpert.testbed.placement import EmulatedEdge

        with EmulatedEdge(args.device, mode=args.edge_mode) as edge, tempfile.TemporaryDirectory() as tmp:
            _console().log(edge.placement.describe())
            settings = freeze_split(settings, Path(tmp) / "inputs.npz")  # the throttled edge reads no dataset
            if settings.threads is None:  # one thread on the one edge core, not the host's count
                settings = replace(settings, threads=edge.threads)
            _console().log(f"streaming {' '.join(settings.inputs)} through the {edge.placement.label} ...")
            report = edge.call(run_edge, s=settings)
        placement = edge.placement
        _out().print(f"[bold]edge[/bold]: {placement.describe()}")
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps({**asdict(report.summary), "policy": asdict(report.policy),
                                            "control": asdict(report.control) if report.control else None,
                                            "corruption": report.corruption, "encoding": report.encoding,
                                            "backend": report.backend, "input": report.input, "link": report.link,
                                            "system": report.source,
                                            "placement": placement.to_dict() if placement else None,
                                            "settings": {k: "(set)" if k == "token" and v else str(v)  # no secret
                                                         for k, v in asdict(settings).items()}}, indent=1))
    _print_edge_summary(report)
    return 0


def _encoding(text: str):
    from askexpert.contract.codecs import Encoding

    try:
        return Encoding.parse(text)
    except ValueError as err:
        raise ConfigError(str(err), fix="give --encode raw, npy, png, jpeg:Q or webp:Q with Q in 1..100") from err


def _edge_energy_profile(device: str) -> str:
    """The energy profile of an emulated edge device (costs/profiles.yaml), else the Raspberry Pi 4's."""
    from askexpert.costs.profiles import edge_speed

    return (edge_speed(device).energy_profile if device != "host" else None) or "raspberry-pi-4"


def _add_edge_device_flags(p: argparse.ArgumentParser, flag: str, default: str = "host") -> None:
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


def _print_edge_summary(report, title: str = "edge run", energy=None) -> None:
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
    _out().print(table)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from askexpert.models.checkpoint import checkpoint_stem
    from askexpert.models.onnx_export import export_onnx

    out = args.out or checkpoint_stem(args.checkpoint).with_suffix(".onnx")
    info = export_onnx(args.checkpoint, out, opset=args.opset)
    _out().print(f"wrote {info['path']} (opset {info['opset']}, {info['export_seconds']:.1f} s); "
                 f"largest difference from torch on 5 random images: {info['max_abs_diff']:.2e}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from askexpert.bench.report import goals
    from askexpert.bench.suite import run_bench

    if args.profile == "paper-scale":
        return _paper_scale(args)
    result = run_bench(args.profile, output_dir=Path(args.output_dir), results_dir=Path(args.results),
                       fresh=args.fresh, edge_profile=args.edge_profile, server_profile=args.server_profile,
                       radio=args.radio, edge_device=args.edge_device, edge_mode=args.edge_mode, console=_console())
    table = Table(title=f"bench {args.profile}: goals (ratios from this run)")
    for col in ("goal", "ratio", "met", "detail"):
        table.add_column(col)
    for g in goals(result):
        table.add_row(g.goal, f"{g.ratio:.2f}x", "yes" if g.met else "no", g.detail)
    _out().print(table)
    _out().print(f"report: {result.report}")
    return 0


def _paper_scale(args: argparse.Namespace) -> int:
    from askexpert.bench.scale import ScaleProfile, run_paper_scale
    from askexpert.bench.scale_report import ratios
    from askexpert.system.costing import CostSystem

    profile = ScaleProfile(devices=tuple(args.devices), images=args.scale_images,
                           sweep_images=min(args.scale_images, max(args.scale_images // 2, 1)))
    result = run_paper_scale(output_dir=Path(args.output_dir), results_dir=Path(args.results) / "paper-scale",
                             profile=profile, fresh=args.fresh, edge_mode=args.edge_mode,
                             server_profile=args.server_profile, console=_console(),
                             system=CostSystem(generalist_weights=args.generalist_weights,
                                               expert_weights=args.expert_weights))
    table = Table(title=f"paper scale at {100 * profile.headline_rate:.0f}% offloaded: collaborative against the "
                        "paper's ratios (0.55x latency vs edge execution, 0.54x energy vs full offload)")
    for col in ("device", "link", "latency vs edge execution", "latency vs medium on edge",
                "energy vs full offload"):
        table.add_column(col)
    for dev in profile.devices:
        for link in profile.links:
            q = ratios(result, dev, link, profile.headline_rate)
            table.add_row(dev, link, f"{q['latency_vs_edge_execution']:.2f}x", f"{q['latency_vs_edge_general']:.2f}x",
                          f"{q['energy_vs_full_offload']:.2f}x")
    _out().print(table)
    _out().print(f"report: {result.report} (weights {result.system['weights']}; accuracy not measured at this scale)")
    return 0


def _print_metrics(metrics: dict, title: str, checkpoint: Path) -> None:
    table = Table(title=title)
    for col in ("split", "samples", "top-1 %", "top-5 %", "NLL"):
        table.add_column(col, justify="right")
    for split in ("val", "test"):
        m = metrics.get(split)
        if m:
            top5 = next((v for k, v in m.items() if k.startswith("top") and k != "top1"), float("nan"))
            table.add_row(split, str(m["samples"]), f"{m['top1']:.2f}", f"{top5:.2f}", f"{m['nll']:.3f}")
    console = _out()
    console.print(table)
    train = metrics.get("train", {})
    if train:
        console.print(f"trained {train['epochs']} epochs at {train['images_per_s']:.0f} img/s on {train['device']} "
                      f"({train['seconds'] / 60:.1f} min); checkpoint: {checkpoint}.safetensors")


def cmd_eval(args: argparse.Namespace) -> int:
    from askexpert.training.evaluate import evaluate_checkpoint

    kw = dict(split=args.split, data=args.data, data_root=args.data_root, device=args.device,
              batch_size=args.batch_size, save_logits=args.save_logits, console=_console())
    console = _out()
    if (args.checkpoint / "partition.json").is_file():  # an expert run: every expert, one row each
        from askexpert.system.calibrate import expert_run

        _, stems, _ = expert_run(args.checkpoint)
        table = Table(title=f"experts of {args.checkpoint} on {args.split}")
        for col in ("expert", "classes", "subset %", "subset images", "'other' recall %", "top-1 with 'other' %"):
            table.add_column(col, justify="left" if col == "classes" else "right")
        for stem in stems:
            d = stem.parent
            out = args.out_dir / d.name if args.out_dir is not None else None
            report = evaluate_checkpoint(stem, out_dir=out, **kw)
            x = report.expert
            other = "-" if x["other_recall"] is None else f"{x['other_recall']:.2f}"
            table.add_row(d.name, ", ".join(x["classes"]), f"{x['subset_accuracy']:.2f}", str(x["subset_samples"]),
                          other, f"{report.metrics['top1']:.2f}")
        console.print(table)
        console.print(f"wrote {args.split}.json and {args.split}-confusion.png under each EXPERT/eval"
                      if args.out_dir is None else f"wrote {args.out_dir}/expert-*/{args.split}.json")
        return 0
    report = evaluate_checkpoint(args.checkpoint, out_dir=args.out_dir, **kw)
    m = report.metrics
    title = f"{report.model_name} on {report.dataset} {args.split}: top-1 {m['top1']:.2f}%, top-5 {report.top5:.2f}%"
    if report.expert is not None:
        x = report.expert
        other = "" if x["other_recall"] is None else f", 'other' recall {x['other_recall']:.2f}%"
        title = (f"expert {x['expert']} ({report.model_name}) on {report.dataset} {args.split}: its classes "
                 f"{x['subset_accuracy']:.2f}% ({x['subset_samples']} images){other}; top-1 over its outputs "
                 f"{m['top1']:.2f}%")
    table = Table(title=f"{title}, {m['samples']} images")
    table.add_column("class")
    table.add_column("accuracy %", justify="right")
    table.add_column("support", justify="right")
    for row in m["per_class"]:
        table.add_row(row["class"], f"{row['accuracy']:.2f}", str(row["support"]))
    console.print(table)
    console.print(f"wrote {report.out_dir}/{args.split}.json, {args.split}-confusion.png"
                  + (f", {args.split}-logits.safetensors" if args.save_logits else ""))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    console = _out()
    if args.timm is not None:
        import timm

        names = timm.list_models(args.timm or "*")
        console.print("\n".join(names) if names else f"no timm model matches {args.timm!r}")
        return 0
    from askexpert.models import PRESETS
    from askexpert.models.info import describe_preset

    table = Table(title="model presets (any timm model name works too: askexpert models --timm 'vit_*')")
    for col in ("preset", "role", "timm model", "input", "params", "MFLOPs/img", "weights"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("params", "MFLOPs/img") else "left")
    for preset in PRESETS.values():
        info = describe_preset(preset, num_classes=args.classes)
        table.add_row(preset.name, preset.role, preset.timm_name, info["input"], f"{info['parameters'] / 1e6:.2f}M",
                      f"{info['flops'] / 1e6:.1f}", "ImageNet" if preset.pretrained else "scratch")
    console.print(table)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    import contextlib
    import time

    from askexpert.runtime.clients import ExpertUnavailable, HttpExpertClient
    from askexpert.security import read_token
    from askexpert.testbed.load import CompetingLoad

    _require_positive(("--clients", args.clients), ("--seconds", args.seconds))
    token = read_token(args.token_file)
    try:
        with HttpExpertClient(args.server, token=token, ca_file=args.ca_file, timeout_s=5) as client:
            infos = [x for x in client.experts() if args.experts is None or x.id in args.experts.split(",")]
    except ExpertUnavailable as err:
        raise AskExpertError(f"cannot list the experts of {args.server} ({err})",
                             fix="start the server first (askexpert serve BUNDLE), or check --server") from err
    if not infos:
        raise ConfigError(f"{args.server} serves none of the experts {args.experts}", fix="name experts it lists")
    console = _console()
    console.log(f"{args.clients} clients, one image at a time to {', '.join(x.id for x in infos)}, "
                f"{args.think_ms:g} ms mean pause between answers, for {args.seconds:g} s ...")
    load = CompetingLoad(args.server, clients=args.clients, experts=[x.id for x in infos],
                         shape=tuple(infos[0].input_shape), think_ms=args.think_ms, token=token, ca_file=args.ca_file)
    with load, contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the load early; its count is still said
        time.sleep(args.seconds)
    stats = load.stats
    _out().print(f"{stats.requests} requests in {stats.seconds:.1f} s ({stats.rate:.0f}/s), {stats.failures} failed")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from askexpert.config import DataConfig
    from askexpert.data import DATASETS, load_dataset
    from askexpert.data.registry import locate_dataset

    console = _out()
    if args.name:
        bundle = load_dataset(DataConfig(name=args.name, root=args.data_root, download=not args.no_download))
        summary = bundle.summary()
        summary.pop("decoded_as", None)  # decoded at a default size here; the presets' inputs follow
        console.print_json(json.dumps({**summary, "class_names": bundle.class_names,
                                       "coarse_names": bundle.coarse_names}))
        if bundle.files is not None:
            _print_preset_inputs(bundle.files, console)
        return 0
    table = Table(title="datasets (askexpert datasets NAME loads one and shows its splits)")
    table.add_column("name")
    table.add_column("description")
    table.add_column("available here")
    for name, description in DATASETS.items():
        where = "-"
        if ":" not in name:
            try:
                where = str(locate_dataset(DataConfig(name=name, download=False)))
            except AskExpertError:
                where = "no (downloads on first use where a network exists)"
        table.add_row(name, description, where)
    console.print(table)
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from askexpert.data import han

    if args.name != han.TASK:
        raise ConfigError(f"askexpert data build knows no dataset {args.name!r}",
                          fix=f"build {han.TASK} (the other datasets are files: askexpert datasets)")
    spec = han.TINY if args.tiny else han.FULL
    out = han.build(args.root, seed=args.seed, spec=spec, workers=args.workers, force=args.force, console=_console())
    manifest = han.read_manifest(out)
    table = Table(title=f"{han.TASK} in {out} (manifest.json says how it was made; samples.png shows it)")
    for col in ("part", "split", "classes", "images", "designs (fonts never shared between splits)"):
        table.add_column(col)
    for part, splits in manifest["splits"].items():
        classes = len(manifest["classes"] if part == "task" else manifest["pool_classes"])
        for split, designs in splits.items():
            images = manifest["files"][f"{part}-{split}.npz"]["images"]
            table.add_row(part, split, str(classes), f"{images:,}", ", ".join(designs))
    _out().print(table)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from askexpert.training.pretrain import pretrain

    result = pretrain(args.model, pool=args.pool, epochs=args.epochs, lr=args.lr, seed=args.seed, out=args.out,
                      overrides=list(args.set or []), console=_console())
    state = "reused" if result.reused else f"trained in {result.seconds / 60:.1f} min"
    _out().print(f"{result.model} pretrained on {result.pool} ({result.epochs} epochs, {state}): "
                 f"{result.val_top1:.2f}% top-1 on the pool's validation split\n"
                 f"weights: {result.weights}\nstart from it: --set model.pretrained_file={result.weights}")
    return 0


def _print_preset_inputs(files, console: Console) -> None:
    """What each preset's input turns an image folder's files into (decoding follows the model)."""
    from askexpert.models import PRESETS

    by_input: dict[tuple[int, int], list[str]] = {}
    for preset in PRESETS.values():
        by_input.setdefault((preset.channels, preset.size), []).append(preset.name)
    table = Table(title=f"what each model input makes of these files ({files.describe()})")
    for col in ("presets", "input", "channels", "size"):
        table.add_column(col)
    side = files.side
    for (channels, size), names in sorted(by_input.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if channels == files.channels:
            conv = "as they are"
        elif channels == 3:
            conv = "grey copied to R, G and B"
        else:
            conv = "colour to grey (ITU-R 601 luma)"
        scale = "kept" if side == size else (f"upscaled from {side} px" if side < size else
                                             f"downscaled from {side} px (shorter side, then centre crop)")
        table.add_row(", ".join(names), f"{channels}x{size}x{size}", conv, scale)
    console.print(table)


def cmd_demo(args: argparse.Namespace) -> int:
    from askexpert.demo import comparison, reading, run_demo
    from askexpert.runtime.link import parse_link

    console = _console()
    console.rule("askexpert demo: collaborative inference on Fashion-MNIST, offline")
    result = run_demo(output_dir=Path(args.output_dir), fresh=args.fresh, limit=args.limit,
                      link=parse_link(args.link), edge_device=args.edge_device, edge_mode=args.edge_mode,
                      console=console)
    _print_edge_summary(result.report, title="askexpert demo: collaborative", energy=result.energy)
    table = Table(title=f"what collaboration buys: the same {result.report.summary.samples} images on the "
                        f"{result.placement.label}, link {result.report.link}")
    table.add_column("metric")
    for row in result.systems:
        table.add_column(row.name, justify="right")
    for label, values in comparison(result):
        table.add_row(label, *values)
    _out().print(table)
    for line in reading(result):
        _out().print(f"collaborative {line}")
    _out().print(f"[bold]edge[/bold]: {result.placement.describe()}")
    _out().print(f"energy, modelled: edge {result.energy.edge_energy_source}; server {result.energy.server_label}")
    _out().print(f"report: {result.report_dir / 'report.md'}; bundle: {result.bundle}")
    return 0


def _add_rule_flags(p: argparse.ArgumentParser, default_from: str | None = None) -> None:
    """``--confidence`` and ``--fallback``, their choices from the routing policy's own types. With
    ``default_from`` the flags default to None (the caller's own value wins, e.g. a bundle's)."""
    from typing import get_args

    from askexpert.contract.labels import CONFIDENCE_RULES, Fallback

    for flag, choices, what in (("--confidence", CONFIDENCE_RULES, "confidence score (a bundle built with "
                                 "--deferral learned scores with its learned rule unless this is given)"),
                                ("--fallback", get_args(Fallback), "when the generalist's answer stands after an "
                                 "offload")):
        if default_from is None:
            p.add_argument(flag, choices=choices, default=choices[0], help=f"{what} (default {choices[0]})")
        else:
            p.add_argument(flag, choices=choices, help=f"{what} (default: {default_from} {choices[0]})")


def _k_or_best(text: str) -> int | None:
    if text == "best":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive k nor 'best'")
    return int(text)


def _demo_command(sub) -> None:
    """The ``askexpert demo`` command and its flags."""
    p = sub.add_parser("demo", help="the collaborative system end to end on offline Fashion-MNIST",
                       description="Train (or reuse) a small generalist, general model and progressive experts on "
                       "Fashion-MNIST (a few minutes on 2 CPU cores), start the expert server on a free loopback "
                       "port, stream the test split through the edge runner over HTTP, print accuracy, offload "
                       "rate, latency and modelled energy, write a report into OUTPUT_DIR/demo/report, stop the "
                       "server.")
    p.add_argument("--output-dir", default="runs", help="parent of the demo directory (default: runs)")
    p.add_argument("--fresh", action="store_true", help="retrain instead of reusing the demo's models")
    p.add_argument("--limit", type=int, default=2000, help="test images to stream (default 2000)")
    p.add_argument("--link", default="wifi",
                   help="emulate a link on every offload: wifi (default), lte, 5g, none or rtt=20ms,bw=20mbit")
    _add_edge_device_flags(p, "--edge-device", default="rpi4")
    p.set_defaults(func=cmd_demo)


def _train_command(sub, exact) -> None:
    """The ``askexpert train`` command and its flags."""
    from askexpert.config import INIT_FROM, STRATEGIES

    p = sub.add_parser("train", help="train models (generalist, general model, experts)",
                       description="Train a model into a run directory (resolved config, logs, metrics, "
                       "checkpoint).")
    tsub = p.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=exact)
    g = tsub.add_parser("generalist", help="train the edge generalist",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train the small edge model on every class. Config: YAML file plus "
                        "overrides; the run directory gets config.yaml, train.log, metrics.jsonl, "
                        "model.safetensors + model.json and eval/ reports.",
                        epilog="example: askexpert train generalist --config configs/generalist-fmnist.yaml")
    _add_run_flags(g)
    g.set_defaults(func=cmd_train_generalist)

    x = tsub.add_parser("experts", help="train the general model, or static / progressive experts",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="--strategy general trains the medium model on every class (the common "
                        "starting point of the experts, and the everything-offloaded baseline). --strategy static "
                        "or progressive trains one expert per partition subset, from --init (the general run), "
                        "with the same image budget (--passes over each subset).",
                        epilog="examples:\n"
                        "  askexpert train experts --strategy general --name general --epochs 15\n"
                        "  askexpert partition runs/generalist --experts 3\n"
                        "  askexpert train experts --strategy progressive --init runs/general \\\n"
                        "      --partition runs/generalist/partition-confusion-3.json --name progressive")
    _add_run_flags(x)
    x.add_argument("--strategy", choices=list(STRATEGIES))
    x.add_argument("--init-from", choices=list(INIT_FROM),
                   help="the experts' starting weights: general (the trained --init model; the default), scratch "
                   "(random, from experts.init_seed; the same for every strategy) or pretrained (timm's weights)")
    x.add_argument("--partition", type=Path, help="partition file (askexpert partition)")
    x.add_argument("--init", type=Path, help="run directory of the general model the experts start from")
    x.add_argument("--passes", type=float, help="image budget per expert, in passes over its subset")
    x.set_defaults(func=cmd_train_experts)


def _partition_command(sub) -> None:
    """The ``askexpert partition`` command and its flags."""
    from askexpert.contract.schema import DEFAULT_MIN_SIZE

    p = sub.add_parser("partition", help="group classes into expert subsets",
                       description="Group the classes into expert subsets: from the generalist's confusion on the "
                       "validation split (agglomerative, size-bounded), from coarse labels (CIFAR-100 "
                       "superclasses), dealt at random (seeded: the control for a confusion partition) or from a "
                       "YAML file of class lists.")
    p.add_argument("generalist", type=Path, help="run directory (or checkpoint) of the generalist")
    p.add_argument("--num-experts", type=int, default=3, help="number of experts (default 3)")
    p.add_argument("--method", choices=["confusion", "coarse", "random", "file"], default="confusion")
    p.add_argument("--seed", type=int, default=0, help="with --method random: the deal's seed")
    p.add_argument("--file", type=Path, help="with --method file: YAML with experts: [[class, ...], ...]")
    p.add_argument("--max-size", type=int, help="most classes an expert may hold (default: 1.5 x the mean)")
    p.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                   help=f"fewest classes an expert may hold (default {DEFAULT_MIN_SIZE}: no one-class expert, whose "
                   "subset accuracy is trivially 100%%, unless asked for with --min-size 1)")
    p.add_argument("--overlap", type=float, metavar="THRESHOLD",
                   help="a class also joins the other expert it is most confused with, above this affinity")
    p.add_argument("--out", type=Path, help="output file (default: GENERALIST/partition-METHOD-E.json)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_partition)


def _evaluate_system_command(sub) -> None:
    """The ``askexpert evaluate-system`` command and its flags."""
    from askexpert.routing import DEFAULT_K

    p = sub.add_parser("evaluate-system", help="offline evaluation of the collaborative system over tau and k",
                       description="From the saved models (logits cached next to each checkpoint): the generalist "
                       "alone, the general model alone, and the collaborative system with each set of experts, for "
                       "a grid of target offload rates (tau chosen on validation) and k. Reports on test.")
    p.add_argument("generalist", type=Path, help="the generalist's run directory")
    p.add_argument("general", type=Path, help="the general model's run directory")
    p.add_argument("--experts", action="append", required=True, metavar="LABEL=RUN_DIR",
                   help="an expert run directory (repeatable), e.g. static=runs/static")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5])
    p.add_argument("--offload", type=float, default=0.3, help="target offload rate of the headline table")
    p.add_argument("--k", default=DEFAULT_K, type=_k_or_best, metavar="K|best",
                   help=f"k of the headline table (default {DEFAULT_K}, as edge and build-system use; best: the best "
                   "k on validation); the sweep shows every --ks")
    p.add_argument("--target-accuracy", type=float, metavar="PERCENT",
                   help="also choose tau as the least offloading reaching this validation accuracy")
    _add_rule_flags(p)
    p.add_argument("--out", type=Path, help="write the full report (JSON) here")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_evaluate_system)


def _build_system_command(sub) -> None:
    """The ``askexpert build-system`` command and its flags."""
    from askexpert.routing import DEFAULT_K

    p = sub.add_parser("build-system", help="trained runs + an operating point -> one deployable bundle",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Calibrate once on validation data (the generalist's and every expert's "
                       "temperature, tau for the operating point) and write one directory: system.json "
                       "(schema-versioned: classes, partition, routing, preprocessing, model specs, sha256 of every "
                       "file), the generalist as ONNX and safetensors, the experts (and the general model) as "
                       "safetensors. The edge then needs only ONNX Runtime, NumPy and httpx.",
                       epilog="examples:\n"
                       "  askexpert build-system runs/generalist runs/experts-progressive --out system\n"
                       "  askexpert build-system runs/g runs/experts --out system --accuracy 92 --k 2 --archive\n"
                       "  askexpert build-system runs/g runs/experts --out system --deferral learned")
    p.add_argument("generalist", type=Path, help="the generalist's run directory")
    p.add_argument("experts", type=Path, help="an expert run directory (askexpert train experts)")
    p.add_argument("--out", type=Path, required=True, help="the bundle directory to write")
    point = p.add_mutually_exclusive_group()
    point.add_argument("--offload", type=float, help="target offload share on validation, 0..1 (default 0.3)")
    point.add_argument("--accuracy", type=float, metavar="PERCENT",
                       help="the least offloading that reaches this validation accuracy")
    point.add_argument("--tau", type=float, help="a fixed confidence threshold")
    point.add_argument("--p95-latency", type=float, metavar="MS",
                       help="the most accurate point whose predicted p95 latency on --edge-device over --link is "
                       "within MS (the cost model's parts are measured there first)")
    point.add_argument("--edge-energy", type=float, metavar="MJ",
                       help="the most accurate point whose predicted edge energy an image is within MJ")
    p.add_argument("--k", type=int,
                   help=f"Top-k classes that choose the expert (default {DEFAULT_K}; with a budget, default: the "
                   "best k of the curve)")
    p.add_argument("--curve-k", type=int, nargs="+", metavar="K",
                   help="the k values of the operating curve the bundle carries (default 1 2 3, and --k)")
    _add_edge_device_flags(p, "--edge-device")
    p.add_argument("--link", default="wifi", help="the link a budget is for: wifi, lte, 5g, ethernet, rtt=..,bw=.. "
                   "(default wifi)")
    p.add_argument("--plan-images", type=int, default=1000, metavar="N",
                   help="validation images streamed through the emulated edge to measure a budget's cost model")
    p.add_argument("--server-load", type=int, default=0, metavar="CLIENTS",
                   help="competing clients on the server while the offloads are measured (default 0)")
    p.add_argument("--edge-profile", help="the edge's power for --edge-energy (default: the device's, else "
                   "raspberry-pi-4)")
    p.add_argument("--radio", help="the radio's energy profile (default: wifi for wifi, cellular for lte and 5g)")
    _add_rule_flags(p)
    p.add_argument("--deferral", choices=("confidence", "learned"), default="confidence",
                   help="which images to offload: those whose --confidence is under tau (the paper's rule, the "
                   "default), or 'learned': a rule fitted on validation to offload the images the routed expert "
                   "gets right and the generalist wrong (tau applies to its score; the bundle carries it)")
    p.add_argument("--no-general", action="store_true", help="leave the general model out of the bundle")
    p.add_argument("--archive", action="store_true", help="also write OUT.tar.gz")
    p.add_argument("--name", help="the system's name (default: the directory's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--device", default="auto", help="where logits are computed (cached next to each checkpoint)")
    p.set_defaults(func=cmd_build_system)


def _serve_command(sub) -> None:
    """The ``askexpert serve`` command and its flags."""
    p = sub.add_parser("serve", help="serve the experts of a bundle (or an expert run) over HTTP (FastAPI + uvicorn)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Load every expert of a system bundle (with its calibrated temperature) or of an "
                       "expert run directory, and the general model (as expert 'general'), and serve them: GET "
                       "/v1/health (with the bundle's system id), GET /v1/experts, POST /v1/experts/{id}/infer, GET "
                       "/metrics (Prometheus). Requests to one expert are batched dynamically. Wire format: "
                       "docs/protocol.md; OpenAPI at /openapi.json.",
                       epilog="examples:\n  askexpert serve system --port 8000\n"
                       "  askexpert serve runs/experts-progressive-fmnist --port 8000")
    p.add_argument("source", type=Path, help="a bundle (askexpert build-system) or an expert run directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.add_argument("--max-batch", type=int, default=64, help="most images in one model batch")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="how long a batch waits for more requests (0: run at once, batch what queued meanwhile)")
    p.add_argument("--inline-max", type=int, metavar="N",
                   help="a batch of at most N images formed while the server is idle and lightly loaded runs on "
                   "the event loop's thread, skipping the hand-off to its model thread and back (a lone edge "
                   "request's latency); default 1; 0: every batch in the model thread (uvicorn backend)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-general", action="store_true", help="do not load the general model")
    p.add_argument("--experts", metavar="IDS", help="serve only these experts, e.g. 0,1 or 2,general (the others "
                   "on another server: askexpert edge --server URL1 URL2 finds each where it is)")
    p.add_argument("--eager", action="store_true", help="run the models eagerly (no TorchScript trace)")
    p.add_argument("--log-level", default="warning")
    ray_group = p.add_argument_group("Ray Serve backend (pip install 'askexpert[ray]'; docs/scale-out.md)")
    ray_group.add_argument("--backend", choices=["uvicorn", "ray"], default="uvicorn",
                           help="uvicorn: one process; ray: each expert a Ray Serve deployment (replicas, "
                           "autoscaling, GPU fractions, several machines), same HTTP contract")
    ray_group.add_argument("--address", help="join this Ray cluster (auto: the one `ray start --head` runs here); "
                           "default: start a local one for this server")
    ray_group.add_argument("--ray-config", type=Path, metavar="FILE",
                           help="deployment settings YAML (example: configs/ray-serve.yaml)")
    ray_group.add_argument("--ray-set", action="append", default=[], metavar="KEY=VALUE",
                           help="override a deployment setting, e.g. experts.replicas=2 (repeatable)")
    sec = p.add_argument_group("security and limits (docs/security.md)")
    sec.add_argument("--token-file", type=Path, help="require 'Authorization: Bearer TOKEN' on every request, TOKEN "
                     f"being this file's first line (default: ${TOKEN_ENV} when set)")
    sec.add_argument("--insecure", action="store_true",
                     help="allow --host beyond loopback without a token (a trusted network only)")
    sec.add_argument("--ssl-certfile", type=Path, help="serve HTTPS with this PEM certificate (and --ssl-keyfile)")
    sec.add_argument("--ssl-keyfile", type=Path, help="the certificate's PEM private key")
    sec.add_argument("--expect-system-id", metavar="SHA256",
                     help="serve the bundle only if its system.json has this published sha256 (build-system prints it)")
    sec.add_argument("--max-request-images", type=int, default=MAX_IMAGES,
                     help="most images one request may carry (it runs as --max-batch batches)")
    sec.add_argument("--max-body-bytes", type=int,
                     help="largest request body (default: --max-request-images images of the expert's input shape)")
    sec.add_argument("--body-timeout", type=float, default=10.0,
                     help="seconds a request body may take to arrive (slower: 408)")
    sec.add_argument("--max-in-flight", type=int, default=256,
                     help="requests being read or answered at once (more: 503 with Retry-After)")
    p.set_defaults(func=cmd_serve)


def _edge_command(sub) -> None:
    """The ``askexpert edge`` command and its flags."""
    from askexpert.routing import DEFAULT_K

    p = sub.add_parser("edge", help="run the edge side: generalist, router, experts over HTTP",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run the generalist over the inputs, keep its confident answers, send the rest to "
                       "the chosen expert on --server. Every input gets a prediction: when the server is down, slow "
                       "or failing, the generalist's answer stands, flagged degraded. With a bundle the edge runs the "
                       "ONNX generalist with the bundle's calibration (ONNX Runtime, NumPy, httpx; no torch, no "
                       "dataset); with a generalist's run directory it runs torch and calibrates on validation.",
                       epilog="examples:\n"
                       "  askexpert edge system --server http://127.0.0.1:8000 --input photos/\n"
                       "  askexpert edge system --server http://h:8000 --input images.npz --link lte\n"
                       "  askexpert edge runs/generalist-fmnist --server http://127.0.0.1:8000 --input split:test")
    p.add_argument("system", type=Path, help="a bundle (askexpert build-system), or a generalist's run directory")
    p.add_argument("--server", nargs="+", metavar="URL",
                   help="expert server URL, e.g. http://127.0.0.1:8000, or several (each expert is asked on a "
                   "server that lists it; a dead server degrades only its experts); none: generalist only")
    p.add_argument("--input", nargs="+", default=["split:test"],
                   help="image files, an image folder (one sub-folder per class: labelled), a .npz with 'images' "
                   "(and 'labels'), or split:test|val|train of the generalist's dataset (full install)")
    p.add_argument("--limit", type=int, help="use at most this many inputs (a stratified subset when labelled)")
    p.add_argument("--batch-size", type=int, default=1, help="inputs processed together (1: a live stream)")
    p.add_argument("--link", help="emulated link: wifi, lte, 5g, ethernet or rtt=20ms,bw=20mbit; or a schedule, "
                   "wifi@0,lte@500 (lte from image 500 on; SIGUSR1 to the edge moves to the next entry at once)")
    p.add_argument("--encode", default="raw", metavar="FORM",
                   help="how offloaded images travel: raw (uint8 bytes, default), npy, png (lossless), jpeg:Q or "
                   "webp:Q (lossy at quality Q, 1..100); fewer bytes mean less link time and radio energy")
    p.add_argument("--corrupt", metavar="NAME:SEVERITY[@IMAGE]",
                   help="drift the inputs: gaussian_noise, brightness, contrast or gaussian_blur at severity 1..5 "
                   "(CIFAR-10-C's settings), from image IMAGE on (default 0), e.g. gaussian_noise:3@1000")
    hold = p.add_mutually_exclusive_group()
    hold.add_argument("--slo-p95", type=float, metavar="MS",
                      help="hold the p95 latency under MS: tau moves along the bundle's operating curve as offloads "
                      "get slower or faster (windows of 100 images)")
    hold.add_argument("--energy-budget", type=float, metavar="MJ",
                      help="hold the edge's energy an image under MJ (the --edge-profile's power, the --radio's cost)")
    hold.add_argument("--target-offload", type=float, metavar="SHARE",
                      help="hold the offload share at SHARE (0..1) as the inputs drift, without labels (tau follows "
                      "the confidence's quantile over the last 500 images)")
    p.add_argument("--target-accuracy", type=float, metavar="ACC",
                   help="hold the accuracy of the answers the edge keeps at ACC (0..1), estimated from the experts' "
                   "answers (with --probe's random extra offloads); with --slo-p95 or --energy-budget, that budget "
                   "caps it")
    p.add_argument("--probe", type=float, default=0.05, metavar="SHARE",
                   help="with --target-accuracy: the share of the images the edge keeps that go to their expert "
                   "anyway, to check the kept answers (counted in the offload rate; default 0.05)")
    p.add_argument("--edge-profile", help="the edge's power for --energy-budget (costs/profiles.yaml; default: the "
                   "emulated device's, else raspberry-pi-4)")
    p.add_argument("--radio", default="wifi", help="the radio's energy for --energy-budget: wifi or cellular")
    p.add_argument("--offload-rate", type=float, default=0.3,
                   help="run directories only: target offload rate for tau on validation (a bundle has its own)")
    p.add_argument("--tau", type=float, help="confidence threshold (overrides the bundle's / --offload-rate)")
    p.add_argument("--temperature", type=float, help="softmax temperature (default: the calibrated one)")
    p.add_argument("--k", type=int,
                   help=f"Top-k classes that choose the expert (default: the bundle's, or {DEFAULT_K})")
    _add_rule_flags(p, default_from="the bundle's, or")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="seconds any one network wait of a request may take (connect, send, each read)")
    p.add_argument("--retries", type=int, default=1, help="tries after a failed one, within --deadline")
    p.add_argument("--deadline", type=float, help="seconds one offload may take in all, retries included; then the "
                   "generalist's answer stands, flagged degraded (default: (retries + 1) x timeout)")
    p.add_argument("--threads", type=int, help="CPU threads for the generalist")
    p.add_argument("--trace", type=Path, help="write one JSON line per input (route and timings), as answered")
    p.add_argument("--predictions", type=Path, help="write a CSV of every input's prediction as it is made: file, "
                   "true and predicted class (id and name), the generalist's answer, confidence, route, expert, "
                   "degraded")
    p.add_argument("--resume", action="store_true", help="go on after the answers --predictions / --trace already "
                   "hold (an interrupted run with the same --input)")
    p.add_argument("--token-file", type=Path, help=f"the server's bearer token (default: ${TOKEN_ENV} when set)")
    p.add_argument("--ca-file", type=Path, help="the certificate authority of an https server (a self-signed one)")
    p.add_argument("--expect-system-id", metavar="SHA256",
                   help="run the bundle only if its system.json has this published sha256")
    p.add_argument("--summary", type=Path, help="write the summary as JSON")
    _add_edge_device_flags(p, "--device")
    p.set_defaults(func=cmd_edge)


def _export_onnx_command(sub) -> None:
    """The ``askexpert export-onnx`` command and its flags."""
    p = sub.add_parser("export-onnx", help="export a generalist to ONNX for ONNX Runtime on the edge",
                       description="Write an ONNX graph that takes uint8 images [N, C, H, W] (normalisation "
                       "inside) with class names in its metadata; checked against torch before it is kept.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--out", type=Path, help="default: next to the checkpoint, model.onnx")
    p.add_argument("--opset", type=int, default=18)
    p.set_defaults(func=cmd_export_onnx)


def _bench_command(sub) -> None:
    """The ``askexpert bench`` command and its flags."""
    p = sub.add_parser("bench", help="baselines, sweeps and a report with plots (resumable)",
                       description="Run every baseline (edge only, edge execution, full offload, collaborative "
                       "static and progressive) over the same test images and link, sweep tau and k, link presets "
                       "and concurrent clients, and write results/<date>-<host>-<profile>.json plus a Markdown "
                       "report with PNG plots. quick: demo-sized models, <= 20 min on 2 CPU cores; full: the full "
                       "recipes. Interrupted runs resume at the first missing measurement.")
    p.add_argument("--profile", choices=["quick", "full", "paper-scale"], default="quick",
                   help="paper-scale: DeiT-Tiny on the emulated edge devices, DeiT-Small experts on the server, "
                   "224x224 images, untrained weights unless given; costs only (about 18 min at --scale-images 150 "
                   "on 2 CPU cores)")
    p.add_argument("--devices", nargs="+", default=["rpi4", "snapdragon-820"],
                   help="paper-scale: the emulated edge devices (costs/profiles.yaml edge_speeds)")
    p.add_argument("--scale-images", type=int, default=150,
                   help="paper-scale: images a measurement at 30%% offload and of the baselines (half at other rates)")
    p.add_argument("--generalist-weights", type=Path, help="paper-scale: DeiT-Tiny weights file (default: untrained)")
    p.add_argument("--expert-weights", type=Path,
                   help="paper-scale: DeiT-Small weights file for the experts and general model (default: untrained)")
    p.add_argument("--output-dir", default="runs", help="models and cached measurements go to OUTPUT_DIR/bench-PROFILE")
    p.add_argument("--results", default="results", help="where the JSON and the report go")
    p.add_argument("--fresh", action="store_true", help="measure again (models are still reused)")
    p.add_argument("--edge-profile", help="energy profile of the edge (costs/profiles.yaml; default: the emulated "
                   "device's, else raspberry-pi-4)")
    _add_edge_device_flags(p, "--edge-device")
    p.add_argument("--server-profile", help="power profile of the near-edge server (costs/profiles.yaml; default: "
                   "h100-batch1 where the experts run on a GPU, epyc-9654-core where they run on this CPU)")
    p.add_argument("--radio", default="wifi", help="network profile of the edge radio")
    p.set_defaults(func=cmd_bench)


def _eval_command(sub) -> None:
    """The ``askexpert eval`` command and its flags."""
    p = sub.add_parser("eval", help="evaluate a checkpoint: top-1, top-5, per-class accuracy, confusion matrix",
                       description="Evaluate a checkpoint on a split of its dataset (or another dataset with "
                       "the same classes). Writes SPLIT.json and SPLIT-confusion.png. An expert is evaluated "
                       "on its classes plus 'other' (every other image): its subset accuracy and 'other' recall; "
                       "an expert run directory evaluates each of its experts.",
                       epilog="examples: askexpert eval runs/generalist; askexpert eval runs/experts; "
                       "askexpert eval runs/experts/expert-1 --split val")
    p.add_argument("checkpoint", type=Path, help="run directory (a model's, or an expert run's), or a checkpoint's "
                   ".json / .safetensors file")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--data", help="dataset to evaluate on (default: the checkpoint's)")
    p.add_argument("--data-root", type=Path, help="directory holding the dataset files")
    p.add_argument("--out-dir", type=Path, help="output directory (default: CHECKPOINT_DIR/eval)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--save-logits", action="store_true", help="also save logits and labels (safetensors)")
    p.set_defaults(func=cmd_eval)


def _models_command(sub) -> None:
    """The ``askexpert models`` command and its flags."""
    p = sub.add_parser("models", help="list model presets with parameter counts and FLOPs",
                       description="List the presets (edge and expert sizes per input scale) with their "
                       "parameter counts and FLOPs per image, or timm model names.")
    p.add_argument("--classes", type=int, default=10, help="output classes assumed for the counts")
    p.add_argument("--timm", nargs="?", const="", metavar="PATTERN", help="list timm model names instead")
    p.set_defaults(func=cmd_models)


def _load_command(sub) -> None:
    """The ``askexpert load`` command and its flags."""
    p = sub.add_parser("load", help="load an expert server with competing clients (other edges sharing it)",
                       description="Start CLIENTS processes that each send one image at a time to one of the "
                       "server's experts (drawn at random) and pause a random think time (exponential, mean "
                       "--think-ms) between answers: edges that offload a share of their images. Real HTTP; stops "
                       "after --seconds (or Ctrl-C) and says what was sent.",
                       epilog="example: askexpert load http://127.0.0.1:8000 --clients 15 --seconds 120")
    p.add_argument("server", help="the expert server's URL")
    p.add_argument("--clients", type=int, default=15)
    p.add_argument("--think-ms", type=float, default=30.0, help="mean pause between a client's answer and its next "
                   "request (0: a closed loop at full speed)")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--experts", help="comma-separated expert ids (default: every expert the server lists)")
    p.add_argument("--token-file", type=Path, help=f"the server's bearer token (default: ${TOKEN_ENV} when set)")
    p.add_argument("--ca-file", type=Path, help="the certificate authority of an https server")
    p.set_defaults(func=cmd_load)


def _datasets_command(sub) -> None:
    """The ``askexpert datasets`` command and its flags."""
    p = sub.add_parser("datasets", help="list datasets and where they are found, or load one",
                       description="Without NAME: the registered datasets and whether their files are "
                       "here. With NAME: load it (downloading where allowed) and print its splits.")
    p.add_argument("name", nargs="?", help="fashion-mnist, cifar10, cifar100 or imagefolder:PATH")
    p.add_argument("--data-root", type=Path)
    p.add_argument("--no-download", action="store_true")
    p.set_defaults(func=cmd_datasets)


def _data_command(sub, exact) -> None:
    """The ``askexpert data build`` command and its flags."""
    p = sub.add_parser("data", help="build a dataset that is made by code (han100: Han characters from fonts)")
    dsub = p.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=exact)
    b = dsub.add_parser("build", help="render han100 and its pretraining pool from Debian's font packages",
                        description="Render the han100 task (100 classes, 500/50/100 images a class, each split in "
                        "fonts of its own) and its 1,000-class pretraining pool, offline and deterministically from "
                        "--seed, into ROOT/han100 (default: the user cache). About 2 minutes on 2 cores.")
    b.add_argument("name", help="han100")
    b.add_argument("--root", type=Path, help="parent directory (default: $ASKEXPERT_DATA or ~/.cache/askexpert)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=None, help="rendering processes (default: the CPU count)")
    b.add_argument("--tiny", action="store_true", help="10 classes and a 30-class pool, a few images each (tests)")
    b.add_argument("--force", action="store_true", help="build again over an existing build")
    b.set_defaults(func=cmd_data_build)


def _pretrain_command(sub) -> None:
    """The ``askexpert pretrain`` command and its flags."""
    p = sub.add_parser("pretrain", help="a pretrained start, offline: train a model on a disjoint pool of classes",
                       description="Train MODEL on every class of a pretraining pool (default han100-pool: 1,000 "
                       "characters han100 does not hold) and print the weights file that model.pretrained_file "
                       "and experts.init_from: pretrained read. Cached: a finished run is reused.")
    p.add_argument("model", help="a model preset or timm name (e.g. vit-mini-expert-32g)")
    p.add_argument("--pool", default="han100-pool")
    p.add_argument("--epochs", type=int, default=20,
                   help="epochs on the pool (default 20; 5 leave the medium model near chance)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="run directory (default: ~/.cache/askexpert/pretrained/POOL/...)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="an override of the run config")
    p.set_defaults(func=cmd_pretrain)


def cmd_testbed_check(args) -> int:
    from askexpert.bench.machine import describe, machine_info
    from askexpert.testbed.check import run_check
    from askexpert.testbed.reference import refresh_features

    console = Console(stderr=True)
    if args.refresh:
        with console.status("exporting the published models and reading their graphs ...") as status:
            path = refresh_features(lambda name: status.update(f"exporting and reading {name} ..."))
        console.log(f"wrote {path}")
        from askexpert.costs.device_model import reference_features

        reference_features.cache_clear()
    result = run_check(args.device or None, runs=args.runs, out_dir=args.out, emulate=not args.no_emulate,
                       machine=describe(machine_info()), log=console.log)
    for p in result["profiles"]:
        table = Table(title=f"{p['device']}: device model against {len(p['models'])} published figures"
                      + (f" (caveat: {p['caveat']})" if p["caveat"] else ""))
        for col in ("model", "published ms", "emulated ms", "in-sample", "leave-one-out"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for m, r in p["models"].items():
            emu = f"{r['emulated_ms']:.1f}" if r["emulated_ms"] is not None else "-"
            table.add_row(m, f"{r['published_ms']:.1f}", emu, f"{r['predicted_ms']:.1f} ({r['error_pct']:+.1f}%)",
                          f"{r['loo_ms']:.1f} ({r['loo_error_pct']:+.1f}%)")
        Console().print(table)
        w = p["within"]
        print(f"  within +/-10% in-sample: {w['in_sample']} of {w['of']}; within +/-25% leave-one-out: "
              f"{w['leave_one_out']} of {w['of']}"
              + (f"; not emulated: {p['not_emulated']}" if p["not_emulated"] else ""))
        for m, r in p["paper_models"].items():
            print(f"  {m} at 224 predicted: {r['predicted_ms']:.0f} ms")
    if args.out:
        print(f"wrote {args.out / 'summary.json'} and {args.out / 'summary.md'}")
    return 0


def _testbed_command(sub, exact) -> None:
    """The ``askexpert testbed check`` command and its flags."""
    p = sub.add_parser("testbed", help="the emulated edge's device models against their published figures")
    tsub = p.add_subparsers(dest="what", required=True, metavar="WHAT", parser_class=exact)
    c = tsub.add_parser("check", help="each published model: its figure, the device model in-sample and leave-one-"
                        "out, and its latency on the emulated edge",
                        description="For every edge profile with a published per-model table (costs/profiles.yaml): "
                        "fit the device model, predict each published model in-sample and leave-one-out, run its "
                        "graph on the emulated edge, and predict DeiT-Tiny and DeiT-Small. The first run exports the "
                        "published models (about 1.5 GB under ~/.cache/askexpert/reference; needs torch).")
    c.add_argument("--device", action="append", help="a profile (repeatable; default: every profile with a table)")
    c.add_argument("--runs", type=int, default=3, help="timed runs a model on the emulated edge (median; default 3)")
    c.add_argument("--out", type=Path, help="write summary.json and summary.md here")
    c.add_argument("--no-emulate", action="store_true", help="the fit and its validation only")
    c.add_argument("--refresh", action="store_true",
                   help="export the published models again and rewrite costs/reference_graphs.json")
    c.set_defaults(func=cmd_testbed_check)


def build_parser() -> argparse.ArgumentParser:
    """The command line: one function a command (above) adds its parser."""
    parser = argparse.ArgumentParser(
        prog="askexpert", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Collaborative ViT inference: an edge generalist asks near-edge experts when unsure.",
    )
    parser.add_argument("--version", action="version", version=f"askexpert {askexpert.__version__}")
    # flags are spelled out: "--out" must never silently mean "--out-dir"
    exact = functools.partial(argparse.ArgumentParser, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=exact)
    _demo_command(sub)
    _train_command(sub, exact)
    _testbed_command(sub, exact)
    _partition_command(sub)
    _evaluate_system_command(sub)
    _build_system_command(sub)
    _serve_command(sub)
    _edge_command(sub)
    _export_onnx_command(sub)
    _bench_command(sub)
    _eval_command(sub)
    _models_command(sub)
    _datasets_command(sub)
    _data_command(sub, exact)
    _pretrain_command(sub)
    _load_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AskExpertError as err:
        print(f"askexpert: error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in FULL_INSTALL:
            print(f"askexpert: error: '{args.command}' needs {err.name}, which the slim edge install leaves out -- "
                  "fix: pip install 'askexpert[all]'", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        hint = {"train": "; the run continues with --resume", "edge": "; the answers so far are kept: add --resume"}
        print(f"askexpert: interrupted{hint.get(args.command, '')}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
