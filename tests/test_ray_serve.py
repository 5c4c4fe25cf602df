"""The Ray Serve backend (``askexpert serve --backend ray``) against the uvicorn server: a real local Ray
cluster and Ray Serve application on a loopback port, started by the real CLI, answering the same
requests with the same answers, under the same HTTP contract."""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest
from conftest import provided

from askexpert.contract.protocol import encode_images
from askexpert.runtime.settings import Connection, Inputs, Security
from askexpert_lab.testbed.server import ServerProcess

TOKEN = "ray-test-token"


def _requests(tiny_system) -> list[tuple[str, np.ndarray]]:
    """Batches of 1, 7 and 150 test images (150: more than --max-batch 64, so sent in parts) to each expert."""
    from askexpert.runtime.edge_models import TorchGeneralist
    from askexpert.runtime.inputs import open_input

    gen = TorchGeneralist(tiny_system["generalist"])
    batches, _, _, _ = open_input("split:test", input_spec=gen.input, class_names=gen.class_names,
                                  data=gen.meta.dataset.config, batch_size=150, limit=150)
    images, _ = next(batches)
    return [(key, images[:n]) for key in ("0", "1", "2", "general") for n in (1, 7, 150)]


def _answers(client, requests) -> list[list[dict]]:
    out = []
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
    expert a replica (every switch evicts and loads): the same answers as a real uvicorn server's
    to batches of 1, 7 and 150 images, the same expert list, OpenAPI schema and metric
    names, the token enforced; an edge run over the Ray server, over /v1 and over the Open Inference Protocol,
    equals one with the experts in process."""
    from askexpert.runtime.clients import InProcessExpertClient
    from askexpert.runtime.edge import EdgeRunner
    from askexpert.runtime.session import EdgeSettings, edge_system, run_edge
    from askexpert.serving.pool import ExpertPool

    provided("ray.serve")
    bundle = tiny_system["bundle"]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    requests = _requests(tiny_system)
    images = requests[-1][1]
    np.savez(tmp_path / "in.npz", images=images, labels=np.zeros(len(images), np.int64))

    common = ["--max-batch", "64", "--token-file", str(token_file)]
    uvicorn = ServerProcess(bundle, extra_args=common, token=TOKEN, log_path=tmp_path / "uvicorn.log")
    with uvicorn as url, httpx.Client(base_url=url, headers=auth, timeout=120) as local:  # the real uvicorn server
        expected = _answers(local, requests)
        experts = local.get("/v1/experts").json()
        schema = local.get("/openapi.json").json()
        metrics = _metric_names(local.get("/metrics").text)
    system = edge_system(EdgeSettings(system=bundle, connection=Connection(server=None)))
    in_process = EdgeRunner(system.model, system.policy, InProcessExpertClient(ExpertPool(bundle)), system.experts)
    local_edge = [t.pred for t in in_process.run([(images, np.zeros(len(images), np.int64))])]

    common = [*common, "--backend", "ray"]
    server = ServerProcess(bundle, extra_args=[*common, "--ray-set", 'per_expert={"0": {"replicas": 2}}'],
                           token=TOKEN, log_path=tmp_path / "ray.log")
    with server as url, httpx.Client(base_url=url, headers=auth, timeout=120) as client:
        _same(_answers(client, requests), expected)
        assert client.get("/v1/experts").json() == experts
        assert client.get("/openapi.json").json() == schema
        scraped = client.get("/metrics").text
        assert _metric_names(scraped) == metrics
        # 1 + 7 + 150 images to expert 0, the 150 in parts of at most 64 (3 model batches)
        assert re.search(r'^askexpert_images_total\{expert="0"\} 158\.0$', scraped, re.MULTILINE), scraped
        assert httpx.get(f"{url}/v1/health").status_code == 401
        assert httpx.get(f"{url}/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 403
        body, h = encode_images(images[:1])
        bad = client.post("/v1/experts/9/infer", content=body, headers=h)
        assert bad.status_code == 404 and "0, 1, 2, general" in bad.json()["detail"]
        settings = EdgeSettings(system=bundle, connection=Connection(server=url),
                                inputs=Inputs(sources=[str(tmp_path / "in.npz")]), security=Security(token=TOKEN))
        assert [t.pred for t in run_edge(settings).traces] == local_edge
        v2 = EdgeSettings(system=bundle, connection=Connection(server=url, protocol="v2"),
                          inputs=Inputs(sources=[str(tmp_path / "in.npz")]),
                          security=Security(token=TOKEN))  # the same app: the Open Inference Protocol on Ray Serve too
        assert [t.pred for t in run_edge(v2).traces] == local_edge
    assert server.proc.returncode == 0, (tmp_path / "ray.log").read_text()[-2000:]

    # alternating experts 0 and 1: with one expert a replica, every request switches (evicts and loads)
    order = [i for n in range(3) for i in (n, 3 + n)]  # requests[0:3] go to expert 0, [3:6] to expert 1
    two = [requests[i] for i in order]
    multiplexed = [*common, "--experts", "0,1", "--ray-set", "multiplex={models_per_replica: 1}"]
    with ServerProcess(bundle, extra_args=multiplexed, token=TOKEN, log_path=tmp_path / "ray-mux.log") as url, \
            httpx.Client(base_url=url, headers=auth, timeout=120) as client:
        _same(_answers(client, two), [expected[i] for i in order])


def test_without_ray_the_flag_names_the_install(tiny_system, monkeypatch, capsys):
    import importlib.util

    from askexpert.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("ray") else real(name, *a))
    assert main(["serve", str(tiny_system["bundle"]), "--backend", "ray"]) == 2
    assert "pip install 'askexpert[ray]'" in capsys.readouterr().err


def test_ray_settings_are_checked_before_anything_starts(tiny_system, capsys):
    provided("ray.serve")
    from askexpert.cli import main
    from askexpert.serving.ray_app import load_ray_settings

    bundle = str(tiny_system["bundle"])
    assert main(["serve", bundle, "--backend", "ray", "--ray-set", "experts.replica=2"]) == 2
    assert "experts.replica: unknown key" in capsys.readouterr().err
    assert main(["serve", bundle, "--backend", "ray", "--ray-set", 'per_expert={"0": {"gpus": -1}}']) == 2
    assert "per_expert.0" in capsys.readouterr().err
    assert main(["serve", bundle, "--address", "auto"]) == 2  # a Ray flag without the Ray backend
    assert "add --backend ray" in capsys.readouterr().err
    assert main(["serve", bundle, "--backend", "ray", "--inline-max", "2"]) == 2  # a uvicorn flag on Ray
    assert "--inline-max is for the uvicorn backend" in capsys.readouterr().err
    assert main(["serve", bundle, "--inline-max", "-1"]) == 2
    assert "--inline-max must be 0 or more" in capsys.readouterr().err
    shipped = load_ray_settings("ray-serve", ["experts.gpus=0.25", "experts.autoscaling={max_replicas: 4}"])
    assert shipped.experts.gpus == 0.25 and shipped.experts.autoscaling.max_replicas == 4
    assert shipped.ingress.cpus == 0 and shipped.multiplex is None
