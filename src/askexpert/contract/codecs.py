"""Images on the wire in a compressed form: PNG (lossless), JPEG and WebP (lossy, quality chosen by the
edge), with Pillow at both ends.

A request of ``N`` images ``[N, C, H, W]`` travels as one picture of ``N * H`` rows (the images stacked
top to bottom), ``L`` for one channel and ``RGB`` for three, with ``X-Shape: N,C,H,W`` (optional for
``N = 1``). JPEG and WebP code in 8x8 / 16x16 blocks: where ``H`` is not a multiple of 16, a block may
straddle two stacked images, so a batch's lossy answer can differ slightly from one-at-a-time's (the
edge sends one image a request). WebP has no grey mode: one-channel images travel as RGB and come
back as their luma.

Decoding is guarded before any pixel is decompressed: the format must be the one the content type
names, and the picture's declared size (read from its header, a few bytes) must be exactly what the
request declares and the expert takes. A small file that declares a huge picture (a decompression
bomb) is refused by its header alone, so it costs the server no memory. A PNG whose compressed stream
is complete but holds fewer rows than its header declares (which Pillow would fill with zeros) is
refused too: a truncated picture is a ``400``, never a guess.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np

DEFAULT_QUALITY = 85


@dataclass(frozen=True)
class Codec:
    """One way images travel: its name on the command line, its content type, and (for a picture format)
    Pillow's format name and save arguments. A new form is one entry of :data:`CODECS`."""

    name: str
    content_type: str | None  # None: raw and npy, which the protocol writes itself
    pillow: str | None = None  # Pillow's format name (compressed forms)
    lossy: bool = False  # takes a quality, 1..100
    save: tuple[tuple[str, object], ...] = ()  # Pillow's save arguments besides the quality
    grey: bool = True  # has a one-channel mode (WebP has none: grey travels as RGB)


CODECS = {c.name: c for c in (
    Codec("raw", None),
    Codec("npy", None),
    Codec("png", "image/png", "PNG", save=(("compress_level", 6),)),
    Codec("jpeg", "image/jpeg", "JPEG", lossy=True),
    Codec("webp", "image/webp", "WEBP", lossy=True, save=(("method", 4),), grey=False),
)}
FORMATS = {c.content_type: c for c in CODECS.values() if c.pillow}  # a compressed form's content type -> its codec


def spellings() -> str:
    """Every form as the command line takes it: ``raw, npy, png, jpeg:Q or webp:Q``."""
    names = [f"{c.name}:Q" if c.lossy else c.name for c in CODECS.values()]
    return ", ".join(names[:-1]) + " or " + names[-1]


def pillow():
    """Pillow's ``Image`` with the three formats' plugins loaded. Imported on first use, not with the
    protocol (a raw-bytes edge or server never pays for it); an edge that sends compressed images calls
    it when its client is made, so its first offload does not pay the import either."""
    from PIL import Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # noqa: F401 (the plugins register)

    return Image


class CodecError(ValueError):
    """A compressed body that cannot be (or must not be) decoded; the message says why."""


@dataclass(frozen=True)
class Encoding:
    """How the edge sends its images: ``raw`` (uint8 bytes), ``npy``, ``png``, or ``jpeg`` / ``webp`` at a
    ``quality`` of 1..100."""

    form: str = "raw"
    quality: int | None = None

    @classmethod
    def parse(cls, text: str) -> Encoding:
        """``raw``, ``npy``, ``png``, ``jpeg[:Q]`` or ``webp[:Q]`` (Q 1..100, default 85)."""
        m = re.match(rf"^({'|'.join(map(re.escape, CODECS))})(?::(\d{{1,3}}))?$", text.strip().lower())
        if not m:
            raise ValueError(f"unknown image encoding {text!r}: use {spellings()} (Q 1..100)")
        form, q = m.group(1), m.group(2)
        lossy = CODECS[form].lossy
        if q is not None and not lossy:
            takes = " and ".join(f"{c.name}:Q" for c in CODECS.values() if c.lossy)
            raise ValueError(f"{form} takes no quality (only {takes} do), got {text!r}")
        quality = int(q) if q is not None else (DEFAULT_QUALITY if lossy else None)
        if quality is not None and not 1 <= quality <= 100:
            raise ValueError(f"quality must be 1..100, got {quality} in {text!r}")
        return cls(form, quality)

    @property
    def codec(self) -> Codec:
        return CODECS[self.form]

    @property
    def content_type(self) -> str | None:
        """The content type of a compressed form (None for raw and npy, which the protocol writes itself)."""
        return self.codec.content_type

    @property
    def lossless(self) -> bool:
        return not self.codec.lossy

    def __str__(self) -> str:
        return f"{self.form}:{self.quality}" if self.quality is not None else self.form


def compress(images: np.ndarray, encoding: Encoding) -> bytes:
    """The picture of a ``uint8 [N, C, H, W]`` batch (C 1 or 3) in ``encoding``'s compressed form."""
    codec = encoding.codec
    if codec.pillow is None:
        raise CodecError(f"{encoding} is not a compressed form")
    Image = pillow()  # noqa: N806 (Pillow's module)
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise CodecError(f"compressed forms carry 1 or 3 channels, got {c}: send raw or npy")
    tall = np.ascontiguousarray(images.transpose(0, 2, 3, 1).reshape(n * h, w, c))
    picture = Image.fromarray(tall[..., 0] if c == 1 else tall, "L" if c == 1 else "RGB")
    if c == 1 and not codec.grey:
        picture = picture.convert("RGB")
    out = io.BytesIO()
    picture.save(out, codec.pillow, **dict(codec.save), **({"quality": encoding.quality} if codec.lossy else {}))
    return out.getvalue()


_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples a pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _png_rows_missing(body: bytes) -> str | None:
    """Why a PNG's image data holds fewer bytes than its header's rows need, or None when it holds them all.
    Pillow fills the rows of a complete compressed stream that ends early with zeros; this reads the IDAT
    chunks' stream itself (at most one byte past what the rows need, so it costs no more than the picture)."""
    pos, data, header = 8, [], None
    while pos + 8 <= len(body):
        length, kind = struct.unpack(">I4s", body[pos:pos + 8])
        chunk = body[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk[:13])
        elif kind == b"IDAT":
            data.append(chunk)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        return "it has no IHDR header"
    width, height, depth, colour, _, _, interlace = header
    bits = depth * _PNG_SAMPLES.get(colour, 1)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    need = 0
    for x0, y0, dx, dy in passes:
        cols, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if cols > 0 and rows > 0:
            need += rows * (1 + -(-cols * bits // 8))  # a filter byte a row, then its pixels
    inflate = zlib.decompressobj()
    try:
        got = len(inflate.decompress(b"".join(data), need + 1))
    except zlib.error as err:
        return f"its image data is corrupt ({err})"
    if got < need:
        return f"its image data ends after {got} of the {need} bytes its {height} rows need (truncated)"
    return None


def decompress(body: bytes, content_type: str, shape: tuple[int, int, int, int]) -> np.ndarray:
    """The ``uint8 [N, C, H, W]`` batch of a compressed ``body`` that must hold ``shape`` (checked in the
    picture's header before it is decoded: a decompression bomb is refused without its pixels)."""
    Image = pillow()  # noqa: N806 (Pillow's module)
    n, c, h, w = shape
    codec = FORMATS[content_type]
    fmt = codec.pillow
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(body), formats=[fmt])  # reads the header only
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds on a bad file
        raise CodecError(f"body is not a valid {fmt} file ({type(err).__name__}: {err})") from err
    if picture.size != (w, n * h):
        raise CodecError(f"the {fmt} picture declares {picture.size[0]}x{picture.size[1]} pixels but the request "
                         f"needs {w}x{n * h} ({n} image(s) of {h}x{w}); it is not decoded")
    modes = {"L": 1, "RGB": 3}
    if picture.mode not in modes and not (fmt == "PNG" and picture.mode == "P"):
        raise CodecError(f"the {fmt} picture is in mode {picture.mode}; send L (1 channel) or RGB (3 channels)")
    try:
        picture.load()
    except Exception as err:  # noqa: BLE001 - a truncated or corrupt stream
        raise CodecError(f"the {fmt} picture could not be decoded ({type(err).__name__}: {err})") from err
    if fmt == "PNG" and (why := _png_rows_missing(body)):
        raise CodecError(f"the PNG picture could not be decoded: {why}")
    if picture.mode == "P":
        picture = picture.convert("RGB")
    if modes[picture.mode] != c:
        if not codec.lossy:
            raise CodecError(f"the {fmt} picture has {modes[picture.mode]} channel(s) but the request declares {c}")
        picture = picture.convert("L" if c == 1 else "RGB")  # lossy forms: WebP has no grey mode
    arr = np.asarray(picture, dtype=np.uint8).reshape(n * h, w, c)
    return np.ascontiguousarray(arr.reshape(n, h, w, c).transpose(0, 3, 1, 2))
