"""The expert server paced to a near-edge device: each batch lasts the device's time (a fake clock), known images
answered ahead, a slower host counted; and a real paced server answering as the unpaced one does."""

from __future__ import annotations

import numpy as np
import pytest

from askexpert.costs.device_model import reference_features
from askexpert.costs.server_device import server_device
from askexpert.errors import ConfigError
from askexpert_lab.server_pacing import ServerPacer, read_known_images


class FakeClock:
    def __init__(self) -> None:
        self.now, self.slept = 100.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def pacer(clock: FakeClock) -> ServerPacer:
    return ServerPacer(server_device("h100"), {"0": reference_features()["deit_small"]}, clock=clock,
                       sleep=clock.sleep)


def test_a_batch_lasts_the_devices_time_on_a_fake_clock():
    clock = FakeClock()
    p = pacer(clock)
    images = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    target = p.batch_s("0", 4)
    assert target == pytest.approx(server_device("h100").batch_ms(reference_features()["deit_small"], 4) / 1000)

    def compute(x):
        clock.now += 0.0001  # the host computes in 0.1 ms
        return np.full((len(x), 3), 1 / 3)

    start = clock.now
    out, seconds = p.run("0", images, compute)
    assert out.shape == (4, 3) and clock.now - start == pytest.approx(target)  # the call lasted the device's time
    assert seconds == pytest.approx(target)
    assert clock.slept == [pytest.approx(target - 0.0001)] and p.stats.computed_images == 4 and p.stats.over == 0


def test_known_images_are_answered_ahead_and_a_slower_host_is_counted():
    clock = FakeClock()
    p = pacer(clock)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    probs = rng.random((3, 5))
    p.learn("0", images, probs)

    def never(x):
        raise AssertionError("a known image is not computed again")

    start = clock.now
    assert np.array_equal(p.run("0", images[[2, 0]], never)[0], probs[[2, 0]])
    assert clock.now - start == pytest.approx(p.batch_s("0", 2)) and p.stats.known_images == 2

    def slow(x):
        clock.now += 0.05  # 50 ms here: slower than the device
        return np.zeros((len(x), 5))

    clock.slept.clear()
    _, seconds = p.run("0", rng.integers(0, 256, (1, 3, 8, 8), dtype=np.uint8), slow)  # unknown: computed here
    assert clock.slept == [] and p.stats.over == 1 and seconds == pytest.approx(0.05)  # the host's time reported
    assert p.stats.over_ms == pytest.approx(50 - 1000 * p.batch_s("0", 1))


def test_bad_known_images_are_refused(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pictures=np.zeros((2, 1, 4, 4), dtype=np.uint8))
    with pytest.raises(ConfigError, match="cannot read known images") as err:
        read_known_images(bad)
    assert "'images' array" in err.value.fix
    np.savez(bad, images=np.zeros((2, 1, 4, 4), dtype=np.float32))
    with pytest.raises(ConfigError, match="float32"):
        read_known_images(bad)


def test_a_paced_server_answers_as_the_unpaced_one_at_the_devices_time(tiny_system, bundle_server, tmp_path):
    """A real server paced to the Orin's GPU with the test images known: every answer equals the unpaced
    server's, and each reply's compute time is at least the device's time for its batch."""
    from askexpert.costs.device_model import graph_features
    from askexpert.models.onnx_export import export_onnx
    from askexpert.runtime.clients import HttpExpertClient
    from askexpert_lab.testbed.server import ServerProcess

    bundle = tiny_system["bundle"]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 1, 28, 28), dtype=np.uint8)
    known = tmp_path / "known.npz"
    np.savez(known, images=images)
    onnx = tmp_path / "expert-0.onnx"
    from askexpert.contract.bundle import open_system

    system = open_system(bundle)
    export_onnx(system.path(system.manifest.experts[0].checkpoint), onnx)
    device_ms = server_device("jetson-agx-orin").batch_ms(graph_features(onnx), 1)
    with HttpExpertClient(bundle_server) as plain:
        expected = [plain.infer("0", images[i:i + 1]).pred[0] for i in range(len(images))]
    with ServerProcess(bundle, threads=1, extra_args=["--server-device", "jetson-agx-orin", "--known-images",
                                                      str(known), "--no-general"]) as url, \
            HttpExpertClient(url) as paced:
        replies = [paced.infer("0", images[i:i + 1]) for i in range(len(images))]
    assert [r.pred[0] for r in replies] == expected
    # reported: the device's time, or the host's where a loaded host took longer (never less); the fake-clock
    # tests above pin the exact value
    assert all(r.compute_ms >= device_ms * (1 - 1e-6) for r in replies)
    assert all(r.round_trip_ms >= device_ms for r in replies)  # and the batch lasted it
