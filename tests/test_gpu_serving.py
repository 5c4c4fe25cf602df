"""The server's GPU path (float16, CUDA-graph replay with padding to the captured batch sizes): its answers
are the CPU pool's, image by image, for every batch size. Runs where a CUDA device is present (a lent GPU
machine); elsewhere each test is skipped, saying so in the run's log (-ra): this machine cannot have one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from askexpert.serving.pool import GRAPH_SIZES, ExpertPool

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the GPU "
                                "serving path (fp16, CUDA graphs) runs on a lent GPU machine")


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def test_the_gpu_pool_answers_as_the_cpu_pool_at_every_batch_size(tiny_system):
    """fp16 under CUDA graphs against float32 on the CPU: the same top answer for nearly every image, and
    probabilities within fp16's error, at sizes that hit a captured graph, fall between two (padded) and pass
    the largest (run eagerly)."""
    cpu = ExpertPool(tiny_system["bundle"], device="cpu")
    gpu = ExpertPool(tiny_system["bundle"], device="cuda")
    assert gpu.half and gpu.dtype == torch.float16
    assert all(m.graphs is not None for m in gpu.models.values())
    sizes = sorted({1, 3, GRAPH_SIZES[0], GRAPH_SIZES[0] + 1, GRAPH_SIZES[-1], GRAPH_SIZES[-1] + 5})
    for key in cpu.ids():
        for n in sizes:
            images = _images(n)
            want, got = cpu.infer(key, images).probs, gpu.infer(key, images).probs
            assert got.shape == want.shape and got.dtype == torch.float32 and got.device.type == "cpu"
            assert torch.allclose(got, want, atol=2e-2), (key, n, float((got - want).abs().max()))
            assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.98, (key, n)


def test_a_padded_batch_answers_each_image_as_alone(tiny_system):
    """Padding to a captured size adds rows, never changes the real ones: image i of a batch of 3 (padded)
    equals image i asked alone (the graph of size 1)."""
    gpu = ExpertPool(tiny_system["bundle"], device="cuda")
    images = _images(3)
    key = gpu.ids()[0]
    together = gpu.infer(key, images).probs
    alone = torch.cat([gpu.infer(key, images[i:i + 1]).probs for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-3)
