"""The device model: op classes read from a graph, a non-negative fit to a published table, leave-one-out,
a model call paced to its prediction, and the refusal of a profile with no figures."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from askexpert.contract.bundle import open_system
from askexpert.costs.device_model import OP_CLASSES, DeviceModel, GraphFeatures, fit, graph_features, validate
from askexpert.costs.profiles import SpeedProfile, edge_speed, edge_speed_names
from askexpert.errors import ConfigError
from askexpert.runtime.onnx_model import OnnxGeneralist
from askexpert.runtime.pacing import NO_PACING
from askexpert_lab.testbed.pacing import DevicePacer, RatioPacer


def _graph(path):
    """A hand-built ONNX graph with one op of each class at known sizes (batch 1)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def w(name, *shape):
        return numpy_helper.from_array(np.zeros(shape, np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w3"], ["a"], pads=[1, 1, 1, 1]),  # 3x3 s1: 8*4*9 * 8*8 MACs
        helper.make_node("Relu", ["a"], ["b"]),  # 8*8*8 floats written
        helper.make_node("Conv", ["b", "w1"], ["c"]),  # 1x1: 16*8 * 8*8
        helper.make_node("Conv", ["c", "wd"], ["d"], group=16, pads=[1, 1, 1, 1]),  # depthwise: 16*9 * 8*8
        helper.make_node("Reshape", ["d", "shape"], ["e"]),  # a view: not counted
        helper.make_node("MatMul", ["e", "wl"], ["f"]),  # dense: 16 rows x 64 -> 32
        helper.make_node("Transpose", ["f"], ["ft"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["f", "ft"], ["y"]),  # attention: 16x32 by 32x16
    ]
    inits = [w("w3", 8, 4, 3, 3), w("w1", 16, 8, 1, 1), w("wd", 16, 1, 3, 3), w("wl", 64, 32),
             numpy_helper.from_array(np.array([1, 16, 64], np.int64), "shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_graph_is_read_as_op_classes_at_batch_one(tmp_path):
    f = graph_features(_graph(tmp_path / "g.onnx")).values
    assert f["conv_3x3"] == pytest.approx(8 * 4 * 9 * 64 / 1e6)
    assert f["conv_pointwise"] == pytest.approx(16 * 8 * 64 / 1e6)
    assert f["conv_grouped"] == pytest.approx(16 * 9 * 64 / 1e6)
    assert f["dense"] == pytest.approx(16 * 64 * 32 / 1e6)
    assert f["attention"] == pytest.approx(16 * 32 * 16 / 1e6)
    assert f["conv_spatial"] == 0
    assert f["elementwise"] == pytest.approx(4 * (8 * 64 + 16 * 32) / 1e6)  # the Relu and the Transpose
    assert f["layers"] == 7  # every op but the Reshape (a view)


COEF = {"conv_3x3": 0.1, "conv_pointwise": 0.2, "dense": 0.5, "elementwise": 1.0, "layers": 0.3}


def _table():
    """Hand-made models and their times under known op-class costs (``COEF``)."""
    rows = {"a": {"conv_3x3": 1000, "layers": 40, "elementwise": 10}, "b": {"conv_pointwise": 300, "layers": 100},
            "c": {"conv_3x3": 200, "conv_pointwise": 100, "elementwise": 30, "layers": 60},
            "d": {"dense": 50, "conv_3x3": 500, "layers": 20, "elementwise": 5},
            "e": {"dense": 400, "layers": 200, "elementwise": 40}, "f": {"conv_pointwise": 800, "layers": 30}}
    feats = {n: GraphFeatures({c: float(v.get(c, 0)) for c in OP_CLASSES}) for n, v in rows.items()}
    truth = DeviceModel("hand", {c: COEF.get(c, 0.0) for c in OP_CLASSES}, tuple(rows))
    return feats, {n: truth.predict_ms(f) for n, f in feats.items()}


def test_the_fit_recovers_a_hand_made_table():
    feats, published = _table()
    model = fit("hand", feats, published)
    for c in OP_CLASSES:
        assert model.coef[c] == pytest.approx(COEF.get(c, 0.0), abs=1e-6)
    assert all(model.coef[c] >= 0 for c in OP_CLASSES)


def test_leave_one_out_refits_without_the_model():
    feats, published = _table()
    published = {**published, "e": published["e"] * 1.5}  # one figure off the others' costs
    rows = {r.model: r for r in validate("hand", feats, published)}
    rest = fit("hand", feats, {n: v for n, v in published.items() if n != "e"})
    assert rows["e"].loo_ms == pytest.approx(rest.predict_ms(feats["e"]))
    assert rows["e"].loo_error_pct == pytest.approx(100 * (rest.predict_ms(feats["e"]) / published["e"] - 1))
    assert rows["a"].predicted_ms == pytest.approx(fit("hand", feats, published).predict_ms(feats["a"]))
    assert abs(rows["e"].loo_error_pct) > abs(rows["e"].error_pct)  # held out, it is predicted worse


class FakeClock:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def clock(self):
        return self.now

    def sleep(self, s):
        self.slept.append(s)
        self.now += s

    def call(self, ms):
        self.now += ms / 1000
        return "answer"


def test_a_model_call_lasts_its_prediction_on_a_fake_clock(tmp_path):
    path = _graph(tmp_path / "g.onnx")
    feats = graph_features(path)
    model = DeviceModel("hand", {c: 1.0 for c in OP_CLASSES}, ("a",))
    fake = FakeClock()
    pacer = DevicePacer(model, clock=fake.clock, sleep=fake.sleep)
    predicted = model.predict_ms(feats)
    assert pacer.paced(lambda: fake.call(2.0), path, 3) == "answer"  # three images: three batch-1 calls
    assert sum(fake.slept) == pytest.approx((3 * predicted - 2.0) / 1000)
    assert pacer.device_ms(path, 3) == pytest.approx(3 * predicted)
    fake.slept.clear()
    pacer.paced(lambda: fake.call(3 * predicted + 5), path, 3)  # the host slower than the device: no sleep
    assert fake.slept == []
    DevicePacer(None, clock=fake.clock, sleep=fake.sleep).paced(lambda: fake.call(1.0), path)
    assert fake.slept == []  # no device model: the call runs as it is
    assert NO_PACING.paced(lambda: fake.call(1.0), path, 3) == "answer" and fake.slept == []


def test_two_edges_in_one_process_are_paced_each_by_its_own_device(tiny_system):
    """No module state: two generalists of the same graph, each with its own pacer (device and clock), and a
    third unpaced, answer alike and each call sleeps only its own device's time."""
    graph = open_system(tiny_system["bundle"]).generalist_onnx
    slow, fast = (DeviceModel(name, {c: unit for c in OP_CLASSES}, ("a",)) for name, unit in (("slow", 4.0),
                                                                                                ("fast", 1.0)))
    clocks = {"slow": FakeClock(), "fast": FakeClock()}
    models = {name: OnnxGeneralist(graph, threads=1, pacer=DevicePacer(dm, clock=clocks[name].clock,
                                                                        sleep=clocks[name].sleep))
              for name, dm in (("slow", slow), ("fast", fast))}
    plain = OnnxGeneralist(graph, threads=1)
    images = np.random.default_rng(0).integers(0, 256, (2, plain.input.channels, plain.input.size,
                                                        plain.input.size), dtype=np.uint8)
    answers = {name: m.logits(images) for name, m in models.items()}
    np.testing.assert_array_equal(answers["slow"], plain.logits(images))
    np.testing.assert_array_equal(answers["fast"], answers["slow"])
    assert sum(clocks["slow"].slept) == pytest.approx(2 * slow.predict_ms(graph_features(graph)) / 1000)
    assert sum(clocks["fast"].slept) == pytest.approx(2 * fast.predict_ms(graph_features(graph)) / 1000)
    assert sum(clocks["slow"].slept) == pytest.approx(4 * sum(clocks["fast"].slept))


def test_other_work_is_dilated_by_its_cpu_time():
    slept = []
    pacer = DevicePacer(None, scalar_ratio=3.0, sleep=slept.append)
    c0 = time.process_time()
    pacer.dilated(lambda: sum(i * i for i in range(300_000)))
    used = time.process_time() - c0
    assert len(slept) == 1 and 0 < slept[0] <= 2.0 * used + 1e-9
    assert DevicePacer(None, sleep=slept.append).dilated(lambda: 7) == 7 and len(slept) == 1  # ratio 1: no sleep


def test_a_pacer_travels_to_the_edge_process_whole():
    """The bench sends the pacer with every call to the edge's process: it pickles with its model."""
    model = DeviceModel("hand", {c: 1.0 for c in OP_CLASSES}, ("a",))
    back = pickle.loads(pickle.dumps(DevicePacer(model, scalar_ratio=2.5)))
    assert back.model == model and back.scalar_ratio == 2.5
    assert pickle.loads(pickle.dumps(RatioPacer(3.0))) == RatioPacer(3.0)
    with pytest.raises(ValueError, match="slows the edge down"):
        RatioPacer(0.5)
    with pytest.raises(ValueError, match="slows the edge down"):
        DevicePacer(model, scalar_ratio=0.5)


def test_a_profile_without_published_figures_is_refused_with_its_fix():
    bare = SpeedProfile("bare", "no table", "resnet18", reference_ms=100.0, threads=1, source="a test")
    with pytest.raises(ConfigError, match="no published per-model figures") as err:
        bare.device_model()
    assert "published" in err.value.fix and "--edge-mode kernel" in err.value.fix
    with pytest.raises(ConfigError, match="at least two"):
        fit("one", {"a": GraphFeatures({"layers": 1.0})}, {"a": 5.0})


def test_every_shipped_table_fits_and_says_whether_it_holds_a_transformer():
    for name in edge_speed_names():
        p = edge_speed(name)
        assert p.published_ms and "http" in p.published["source"] and p.published["threads"] >= 1
        model = p.device_model()
        assert set(model.fitted_on) == set(p.published_ms)  # every published model has its graph's features
        assert (p.caveat is None) == p.transformer and (p.prior_model() is None) == p.transformer
    assert edge_speed("rpi4").transformer and "vision_transformer" in edge_speed("rpi4").published_ms


def test_a_chain_of_pointwise_ops_counts_once_however_it_was_exported(tmp_path):
    """GELU as one op (opset 20) and as erf, add and multiplies (what older exporters write): one pass over
    memory either way, so one price."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def save(nodes, inits, name, opset):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 64])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        path = tmp_path / name
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
        return graph_features(path).values

    w = numpy_helper.from_array(np.zeros((64, 64), np.float32), "w")
    one = save([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gelu", ["h"], ["g"]),
                helper.make_node("MatMul", ["g", "w"], ["y"])], [w], "one.onnx", 20)
    consts = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
              (("r2", 1.4142135), ("one", 1.0), ("half", 0.5))]
    chain = save([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Div", ["h", "r2"], ["a"]),
                  helper.make_node("Erf", ["a"], ["b"]), helper.make_node("Add", ["b", "one"], ["c"]),
                  helper.make_node("Mul", ["h", "c"], ["d"]), helper.make_node("Mul", ["d", "half"], ["g"]),
                  helper.make_node("MatMul", ["g", "w"], ["y"])], [w, *consts], "chain.onnx", 17)
    assert one == chain
    assert one["elementwise"] == pytest.approx(4 * 16 * 64 / 1e6) and one["layers"] == 3


def test_an_emulated_edge_without_sysbench_says_how_to_get_it(monkeypatch):
    """The scalar slowdown needs sysbench on the host: without it, an error naming the install (and the mode
    that does without), not a traceback."""
    import shutil

    from askexpert.errors import AskExpertError
    from askexpert_lab.testbed.placement import sysbench_events_per_s

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(AskExpertError, match="sysbench is not installed") as err:
        sysbench_events_per_s([0])
    assert "apt-get install sysbench" in err.value.fix and "--edge-mode paced" in err.value.fix
