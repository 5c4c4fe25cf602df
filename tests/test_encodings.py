"""Compressed images on the wire (PNG lossless; JPEG and WebP lossy at the edge's quality): round trips,
hostile pictures refused before they are decoded, and the edge CLI with each encoding against a real
server over the tiny system's bundle."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from askexpert.cli import main
from askexpert.contract.codecs import CODECS, Encoding, spellings
from askexpert.contract.protocol import ProtocolError, decode_images, encode_images
from askexpert.data.fashion_mnist import read_idx
from askexpert.runtime.clients import HttpExpertClient
from askexpert.runtime.settings import Connection

pytestmark = pytest.mark.timeout(300)
FORMS = ("raw", "npy", "png", "jpeg:95", "jpeg:75", "webp:85")


@pytest.fixture(scope="module")
def test_images(fmnist_dir) -> np.ndarray:
    return read_idx(fmnist_dir / "t10k-images-idx3-ubyte.gz")[:64, None]


@pytest.mark.parametrize("shape", [(1, 1, 28, 28), (5, 1, 28, 28), (2, 3, 224, 224)])
@pytest.mark.parametrize("form", ["npy", "png"])
def test_lossless_forms_round_trip_equal_to_raw(shape, form):
    images = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    body, headers = encode_images(images, Encoding.parse(form))
    raw_body, raw_headers = encode_images(images)
    decoded = decode_images(body, headers["Content-Type"], headers.get("X-Shape"), expect=list(shape[1:]))
    assert np.array_equal(decoded, images)
    assert np.array_equal(decoded, decode_images(raw_body, raw_headers["Content-Type"], raw_headers["X-Shape"]))


def test_lossy_forms_keep_the_shape_and_stay_close(test_images):
    for form in ("jpeg:95", "webp:85", "jpeg:40"):
        body, headers = encode_images(test_images[:1], Encoding.parse(form))
        out = decode_images(body, headers["Content-Type"], None, expect=[1, 28, 28])  # one image: no X-Shape needed
        assert out.shape == (1, 1, 28, 28) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - test_images[:1]).mean() < 20  # a lossy copy, not noise


@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_registered_codec_parses_travels_and_is_named_in_the_refusals(name, test_images):
    """A form is one entry of ``CODECS``: it parses (with a quality where it takes one), its body carries its
    content type and decodes to the images (equal where lossless), and the refusal's list of forms names it."""
    codec = CODECS[name]
    encoding = Encoding.parse(f"{name}:70" if codec.lossy else name)
    assert encoding.codec is codec and encoding.lossless is not codec.lossy
    for images in (test_images[:3], np.repeat(test_images[:2], 3, axis=1)):  # grey and three-channel
        body, headers = encode_images(images, encoding)
        assert codec.content_type is None or headers["Content-Type"] == codec.content_type
        out = decode_images(body, headers["Content-Type"], headers.get("X-Shape"), expect=list(images.shape[1:]))
        assert out.shape == images.shape
        if not codec.lossy:
            assert np.array_equal(out, images)
    with pytest.raises(ValueError) as err:
        Encoding.parse("gif")
    assert (f"{name}:Q" if codec.lossy else name) in str(err.value) and spellings() in str(err.value)


def test_encoding_specs_parse_and_refuse_clearly():
    assert Encoding.parse("jpeg:75") == Encoding("jpeg", 75) and Encoding.parse("webp").quality == 85
    assert str(Encoding.parse("PNG")) == "png" and Encoding.parse("png").lossless
    for bad in ("gif", "png:50", "jpeg:0", "jpeg:101", "jpeg:x"):
        with pytest.raises(ValueError, match="encoding|quality|takes no quality"):
            Encoding.parse(bad)


def test_the_edge_cli_refuses_an_unknown_encoding_naming_the_forms(tiny_system, capsys):
    assert main(["edge", str(tiny_system["bundle"]), "--encode", "jpeg:0"]) == 2  # before anything is sent
    err = capsys.readouterr().err
    assert "quality must be 1..100" in err and "raw, npy, png, jpeg:Q or webp:Q" in err


def _png(size: tuple[int, int], mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size).save(out, "PNG")
    return out.getvalue()


def _raw_png(width: int, height: int, idat: bytes) -> bytes:
    """A grey 8-bit PNG written chunk by chunk around the compressed stream ``idat``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pictures_that_do_not_match_the_request_are_refused_before_decoding():
    with pytest.raises(ProtocolError, match="declares 8000x8000 pixels"):
        decode_images(_png((8000, 8000)), "image/png", None, expect=[1, 28, 28])
    with pytest.raises(ProtocolError, match="not a valid JPEG"):  # a PNG sent as a JPEG
        decode_images(_png((28, 28)), "image/jpeg", None, expect=[1, 28, 28])
    with pytest.raises(ProtocolError, match="3 channel"):  # RGB where the expert takes grey
        decode_images(_png((28, 28), "RGB"), "image/png", None, expect=[1, 28, 28])
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(noisy, "PNG")
    with pytest.raises(ProtocolError, match="could not be decoded"):  # cut short
        decode_images(noisy.getvalue()[:400], "image/png", None, expect=[1, 28, 28])
    # a complete compressed stream that holds 5 of the 28 rows: Pillow would fill the rest with zeros
    rows = b"".join(b"\x00" + bytes([9 * i] * 28) for i in range(5))
    short = _raw_png(28, 28, zlib.compress(rows))
    with pytest.raises(ProtocolError, match="ends after 145 of the 812 bytes its 28 rows need"):
        decode_images(short, "image/png", None, expect=[1, 28, 28])
    whole = b"".join(b"\x00" + bytes([i] * 28) for i in range(28))
    assert decode_images(_raw_png(28, 28, zlib.compress(whole)), "image/png", None,
                         expect=[1, 28, 28])[0, 0, :, 0].tolist() == list(range(28))
    with pytest.raises(ProtocolError, match="takes images of shape"):
        decode_images(_png((28, 56)), "image/png", "2,1,28,28", expect=[3, 28, 28])
    with pytest.raises(ProtocolError, match="needs the expert's input shape"):
        decode_images(_png((28, 28)), "image/png", None)


def _peak_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def test_a_decompression_bomb_is_refused_with_a_4xx_and_costs_no_memory(bundle_server_process, test_images):
    """An 8000x8000 RGB PNG (192 MB decoded) in a body of a few hundred KB: refused by its header, the
    server's peak memory unchanged; the same server then answers a real PNG request."""
    out = io.BytesIO()
    Image.new("RGB", (8000, 8000)).save(out, "PNG")
    bomb = out.getvalue()
    assert len(bomb) < 1_000_000
    server = bundle_server_process
    with httpx.Client(base_url=server.url) as http:
        good, headers = encode_images(test_images[:1], Encoding.parse("png"))
        assert http.post("/v1/experts/0/infer", content=good, headers=headers).status_code == 200
        before = _peak_mb(server.proc.pid)
        for shape in (None, "1,1,28,28", "1,3,8000,8000"):
            resp = http.post("/v1/experts/0/infer", content=bomb,
                             headers={"Content-Type": "image/png", **({"X-Shape": shape} if shape else {})})
            assert 400 <= resp.status_code < 500, resp.text
            assert "detail" in resp.json()
        assert _peak_mb(server.proc.pid) - before < 40  # decoding it would have taken 192 MB
        assert http.post("/v1/experts/0/infer", content=good, headers=headers).status_code == 200


def test_lossless_answers_equal_raw_answers_from_a_real_server(tiny_system, bundle_server, test_images):
    replies = {}
    for form in ("raw", "npy", "png"):
        with HttpExpertClient(bundle_server, Connection(encoding=Encoding.parse(form))) as client:
            replies[form] = [client.infer(e, test_images[i:i + 1]) for e in ("0", "1") for i in range(8)]
    for form in ("npy", "png"):
        for a, b in zip(replies["raw"], replies[form], strict=True):
            assert np.array_equal(a.pred, b.pred) and np.array_equal(a.confidence, b.confidence)


@pytest.mark.timeout(300)
def test_the_edge_cli_with_each_encoding_against_a_real_server(tiny_system, bundle_server, tmp_path, capsys):
    summaries, predictions = {}, {}
    for form in FORMS:
        name = form.replace(":", "-")
        code = main(["edge", str(tiny_system["bundle"]), "--server", bundle_server, "--limit", "60", "--threads", "1",
                     "--encode", form, "--link", "lte", "--summary", str(tmp_path / f"{name}.json"),
                     "--predictions", str(tmp_path / f"{name}.csv")])
        assert code == 0
        assert f"bytes an offload: up / down ({Encoding.parse(form)})" in capsys.readouterr().out
        summaries[form] = json.loads((tmp_path / f"{name}.json").read_text())
        predictions[form] = (tmp_path / f"{name}.csv").read_text()
    for form, s in summaries.items():
        assert s["degraded"] == 0 and s["encoding"] == str(Encoding.parse(form)) and s["up_bytes_per_offload"] > 0
    assert summaries["raw"]["up_bytes_per_offload"] == 784  # one 28x28 grey image
    assert predictions["png"] == predictions["raw"] == predictions["npy"]  # lossless: the same answers
    assert summaries["png"]["up_bytes_per_offload"] < summaries["raw"]["up_bytes_per_offload"]  # mostly black
    raw, jpeg = summaries["raw"], summaries["jpeg:75"]
    # the link's time follows the bytes (lte: 10 Mbit/s), the same images offloaded by every form
    assert raw["offload_rate"] == jpeg["offload_rate"]
    sent = {f: s["up_bytes_per_offload"] + s["down_bytes_per_offload"] for f, s in (("raw", raw), ("jpeg", jpeg))}
    bytes_ms = 8 * (sent["raw"] - sent["jpeg"]) / 10e6 * 1000
    assert raw["breakdown_ms_offloaded"]["link_ms"] - jpeg["breakdown_ms_offloaded"]["link_ms"] == \
        pytest.approx(bytes_ms, abs=1e-6)
