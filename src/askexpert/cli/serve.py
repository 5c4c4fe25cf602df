"""The ``askexpert serve`` command: its parser and its handler."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from askexpert.cli._common import log_console, require_positive
from askexpert.console import logs_on
from askexpert.contract.protocol import MAX_IMAGES
from askexpert.errors import ConfigError
from askexpert.extensions import lab_hook
from askexpert.security import TOKEN_ENV, is_loopback


def cmd_serve(args: argparse.Namespace) -> int:
    if args.backend == "triton":
        return _serve_on_triton(args)
    import uvicorn

    from askexpert.security import check_exposure, read_token
    from askexpert.serving.app import ServerLimits, create_app
    from askexpert.serving.local import INLINE_MAX, LocalExperts
    from askexpert.serving.pool import ExpertPool

    token = read_token(args.token_file)
    check_exposure(args.host, token, args.insecure)  # before minutes of loading models
    require_positive(("--max-request-images", args.max_request_images), ("--max-in-flight", args.max_in_flight),
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
        if args.server_device != "host" or args.known_images:
            raise ConfigError("--server-device and --known-images pace the uvicorn backend's pool only",
                              fix="leave them out with --backend ray, or serve with --backend uvicorn")
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
    pacer = _pace(pool, args)
    app = create_app(LocalExperts(pool, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                                  inline_max=INLINE_MAX if args.inline_max is None else args.inline_max),
                     limits=limits, token=token)
    log_console().log(f"serving {len(pool.ids())} experts ({', '.join(pool.ids())}) of {args.source} on "
                      f"{scheme}://{args.host}:{args.port} ({pool.device}); API docs at /docs"
                      + ("; bearer token required" if token else ""))
    if token and scheme == "http" and not is_loopback(args.host):
        log_console().log("[yellow]the token travels in clear text over plain HTTP: add --ssl-certfile/--ssl-keyfile")
    with logs_on(log_console(), getattr(logging, args.log_level.upper())):  # askexpert's records as uvicorn's
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                    ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                    limit_concurrency=2 * args.max_in_flight + 16)  # a backstop on connections; the guard first
    if pacer is not None:
        log_console().log(f"paced to {args.server_device}: {pacer.stats.describe()}")
    return 0


def _serve_on_triton(args: argparse.Namespace) -> int:
    """``serve --backend triton``: a real Triton (PyTriton's) on an exported repository, or on a bundle exported
    first (that needs the full install's torch)."""
    from askexpert.contract.bundle import is_bundle
    from askexpert.serving.triton_backend import require_pytriton, serve_triton

    unsupported = [flag for flag, on in (("--token-file", args.token_file), ("--ssl-certfile", args.ssl_certfile),
                                         ("--server-device", args.server_device != "host"),
                                         ("--experts", args.experts), ("--address", args.address)) if on]
    if unsupported:
        raise ConfigError(f"not offered with --backend triton (Triton's own options apply there): "
                          f"{', '.join(unsupported)}", fix="leave them out, or serve with --backend uvicorn")
    require_pytriton()
    repo = args.source
    if is_bundle(repo):
        from askexpert.paths import user_cache_dir
        from askexpert.system.export_triton import TritonBatching, export_triton

        repo = user_cache_dir() / "triton" / args.source.resolve().name
        export_triton(args.source, repo, TritonBatching(args.max_batch, round(args.max_wait_ms * 1000)),
                      include_general=not args.no_general)
    serve_triton(repo, host=args.host, port=args.port, threads=args.threads,
                 on_ready=lambda names: log_console().log(
                     f"serving {', '.join(names)} of {repo} on Triton at http://{args.host}:{args.port} (Open "
                     f"Inference Protocol; gRPC {args.port + 1}, metrics {args.port + 2}); Ctrl-C stops"))
    return 0


def _pace(pool, args: argparse.Namespace):
    """``--server-device``: each batch lasting that device's time, known images answered ahead (or None)."""
    if args.known_images and args.server_device == "host":
        raise ConfigError("--known-images answers ahead for a paced server", fix="add --server-device h100 (or "
                          "jetson-agx-orin), or leave --known-images out")
    read_known_images = lab_hook("read_known_images", "--known-images")
    known = read_known_images(args.known_images) if args.known_images else None
    pace_pool = lab_hook("pace_pool", f"--server-device {args.server_device} (a paced server)")
    pacer = pace_pool(pool, args.server_device, known)
    if pacer is not None:
        log_console().log(f"each batch lasts {pacer.device.describe()}'s time for it"
                          + (f"; the answers to {len(known)} known images computed ahead" if known is not None else
                             "; no known images: an image computed here that takes longer is counted"))
    return pacer


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
        log_console().log(f"serving {len(keys)} experts ({', '.join(keys)}) of {args.source} on Ray Serve, "
                          f"{where}, at {scheme}://{args.host}:{args.port}; API docs at /docs"
                          + ("; bearer token required" if token else "") + "; Ctrl-C stops")

    run_server(args.source, settings, address=args.address, host=args.host, port=args.port,
               include_general=not args.no_general, only=only, ssl_certfile=args.ssl_certfile,
               ssl_keyfile=args.ssl_keyfile, log_level=args.log_level, on_ready=ready, device=args.device,
               trace=not args.eager, threads=args.threads, expect_system_id=args.expect_system_id,
               max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, limits=limits, token=token)


def register(sub) -> None:
    """The ``askexpert serve`` command and its flags."""
    p = sub.add_parser("serve", help="serve the experts of a bundle (or an expert run) over HTTP (FastAPI + uvicorn)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Load every expert of a system bundle (with its calibrated temperature) or of an "
                       "expert run directory, and the general model (as expert 'general'), and serve them: GET "
                       "/v1/health (with the bundle's system id), GET /v1/experts, POST /v1/experts/{id}/infer, GET "
                       "/metrics (Prometheus), and the same experts over the Open Inference Protocol under /v2 (models "
                       "expert-<id>, general). Requests to one expert are batched dynamically. Wire format: "
                       "docs/protocol.md; OpenAPI at /openapi.json.",
                       epilog="examples:\n  askexpert serve system --port 8000\n"
                       "  askexpert serve runs/experts-progressive-fmnist --port 8000")
    p.add_argument("source", type=Path, help="a bundle (askexpert build-system) or an expert run directory; with "
                   "--backend triton, a repository from askexpert export triton (or a bundle, exported first)")
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
    p.add_argument("--server-device", default="host", help="pace every batch to a near-edge device's time: h100, "
                   "jetson-agx-orin (costs/profiles.yaml, server_devices); host (default): this host's own speed")
    p.add_argument("--known-images", type=Path, metavar="NPZ", help="with --server-device: images the edge will "
                   "send (an .npz 'images' array), answered ahead so a device faster than this host is met")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's and the server's own records at this level and above (info: start, shutdown)")
    ray_group = p.add_argument_group("Ray Serve backend (pip install 'askexpert[ray]'; docs/scale-out.md)")
    ray_group.add_argument("--backend", choices=["uvicorn", "ray", "triton"], default="uvicorn",
                           help="uvicorn: one process; ray: each expert a Ray Serve deployment (replicas, "
                           "autoscaling, GPU fractions, several machines), same HTTP contract; triton: a real Triton "
                           "Inference Server through PyTriton on a repository from askexpert export triton (or a "
                           "bundle, exported first), Open Inference Protocol only (askexpert[triton], its own "
                           "environment; docs/triton.md)")
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
