"""The Ray Serve backend (``askexpert serve --backend ray``) against the uvicorn server: a real local Ray
cluster and Ray Serve application on a loopback port, started by the real CLI, answering the same
requests with the same answers, under the same HTTP contract."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from askexpert.runtime.protocol import encode_images
from askexpert.serving.process import ServerProcess

TOKEN = "ray-test-token"


def _requests(tiny_system) -> list[tuple[str, np.ndarray]]:
    """Batches of 1, 7 and 150 test images (150: more than --max-batch 64, so sent in parts) to each expert."""
    from askexpert.runtime.edge_models import TorchGeneralist
    from askexpert.runtime.inputs import open_input

    gen = TorchGeneralist(tiny_system["generalist"])
    batches, _, _, _ = open_input("split:test", input_spec=gen.input, class_names=gen.class_names,
                                  data=gen.meta.dataset["config"], batch_size=150, limit=150)
    images, _ = next(batches)
    return [(key, images[:n]) for key in ("0", "1", "2", "general") for n in (1, 7, 150)]


def _answers(url: str, requests, token: str | None = None) -> list[list[dict]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out = []
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        for key, images in requests:
            body, h = encode_images(images)
            reply = client.post(f"/v1/experts/{key}/infer", content=body, headers=h, params={"topk": 3})
            assert reply.status_code == 200, reply.text
            out.append(reply.json()["results"])
    return out


def _same(a: list[list[dict]], b: list[list[dict]]) -> None:
    for ra, rb in zip(a, b, strict=True):
        assert [r["pred"] for r in ra] == [r["pred"] for r in rb]
        assert [r["topk"] for r in ra] == [r["topk"] for r in rb]
        assert np.allclose([r["probs"] for r in ra], [r["probs"] for r in rb], atol=1e-5)


def _metric_names(text: str) -> set[str]:
    return set(re.findall(r"^# TYPE (\S+)", text, flags=re.MULTILINE))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_serve_answers_as_the_uvicorn_server_does(tiny_system, tmp_path):
    """Per-expert deployments (expert 0 with 2 replicas), then one multiplexed deployment holding one
    expert a replica (every switch evicts and reloads): the same answers as uvicorn to batches of 1, 7
    and 150 images, the same expert list, OpenAPI schema and metric names, the token enforced; an edge
    run over the Ray server equals one over uvicorn."""
    from askexpert.runtime.session import EdgeSettings, run_edge

    pytest.importorskip("ray.serve", reason="the Ray Serve backend needs askexpert[ray]")
    bundle = tiny_system["bundle"]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    requests = _requests(tiny_system)
    common = ["--max-batch", "64", "--token-file", str(token_file)]
    np.savez(tmp_path / "in.npz", images=requests[-1][1], labels=np.zeros(150, np.int64))
    edge = dict(system=bundle, inputs=[str(tmp_path / "in.npz")], token=TOKEN)

    with ServerProcess(bundle, extra_args=common, token=TOKEN) as url:
        expected = _answers(url, requests, TOKEN)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        experts = httpx.get(f"{url}/v1/experts", headers=auth).json()
        schema = httpx.get(f"{url}/openapi.json", headers=auth).json()
        metrics = _metric_names(httpx.get(f"{url}/metrics", headers=auth).text)
        local_edge = [t.pred for t in run_edge(EdgeSettings(server=url, **edge)).traces]

    ray_args = [*common, "--backend", "ray", "--ray-set", 'per_expert={"0": {"replicas": 2}}']
    server = ServerProcess(bundle, extra_args=ray_args, token=TOKEN, log_path=tmp_path / "ray.log")
    with server as url:
        _same(_answers(url, requests, TOKEN), expected)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{url}/v1/experts", headers=auth).json() == experts
        assert httpx.get(f"{url}/openapi.json", headers=auth).json() == schema
        scraped = httpx.get(f"{url}/metrics", headers=auth).text
        assert _metric_names(scraped) == metrics
        # 150 images ran as parts of at most 64 (3 batches), counted once each
        assert re.search(r'^askexpert_images_total\{expert="0"\} 158\.0$', scraped, re.MULTILINE), scraped
        assert httpx.get(f"{url}/v1/health").status_code == 401
        assert httpx.get(f"{url}/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 403
        body, h = encode_images(requests[0][1])
        bad = httpx.post(f"{url}/v1/experts/9/infer", content=body, headers={**h, **auth})
        assert bad.status_code == 404 and "0, 1, 2, general" in bad.json()["detail"]
        assert [t.pred for t in run_edge(EdgeSettings(server=url, **edge)).traces] == local_edge
    assert server.proc.returncode == 0, (tmp_path / "ray.log").read_text()[-2000:]

    multiplexed = [*common, "--backend", "ray", "--ray-set", "multiplex={models_per_replica: 1}"]
    with ServerProcess(bundle, extra_args=multiplexed, token=TOKEN, log_path=tmp_path / "ray-mux.log") as url:
        _same(_answers(url, requests, TOKEN), expected)


def test_without_ray_the_flag_names_the_install(tiny_system, monkeypatch, capsys):
    import importlib.util

    from askexpert.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("ray") else real(name, *a))
    assert main(["serve", str(tiny_system["bundle"]), "--backend", "ray"]) == 2
    assert "pip install 'askexpert[ray]'" in capsys.readouterr().err


def test_ray_settings_are_checked_before_anything_starts(tiny_system, capsys):
    pytest.importorskip("ray.serve", reason="the Ray Serve backend needs askexpert[ray]")
    from askexpert.cli import main
    from askexpert.serving.ray_app import load_ray_settings

    bundle = str(tiny_system["bundle"])
    assert main(["serve", bundle, "--backend", "ray", "--ray-set", "experts.replica=2"]) == 2
    assert "experts.replica: unknown key" in capsys.readouterr().err
    assert main(["serve", bundle, "--backend", "ray", "--ray-set", 'per_expert={"0": {"gpus": -1}}']) == 2
    assert "per_expert.0" in capsys.readouterr().err
    assert main(["serve", bundle, "--address", "auto"]) == 2  # a Ray flag without the Ray backend
    assert "add --backend ray" in capsys.readouterr().err
    shipped = load_ray_settings("ray-serve", ["experts.gpus=0.25", "experts.autoscaling={max_replicas: 4}"])
    assert shipped.experts.gpus == 0.25 and shipped.experts.autoscaling.max_replicas == 4
    assert shipped.ingress.cpus == 0 and shipped.multiplex is None
