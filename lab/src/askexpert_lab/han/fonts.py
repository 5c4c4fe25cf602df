"""The font catalogue of the Han character task: Debian font packages grouped into designs, each
design assigned wholly to one split.

A *design* is a set of faces that share glyph outlines: weights and regional variants of one family
(Noto Sans CJK JP/SC/TC/KR/HK, Regular and Bold), and families derived from one another (Takao from
IPA, WenQuanYi Micro Hei from Droid Sans Fallback, UmePlus and VL Gothic from the Sazanami outlines,
Aoyagi Kouzan T and the Kouzan brush fonts from one calligrapher's hand). A design never straddles
two splits, so the test split is drawn in designs the training split never saw, not merely in
another weight of a font it saw. The pretraining pool is drawn in the training designs only.

Each split mixes the styles of printed and written Han characters: sans (gothic / hei), serif (mincho
/ ming / song), kai (regular script), handwriting, brush and pixel or display faces. Where a design
comes from is recorded by its packages: :func:`package_record` reads each package's version and the
licence of its font files from the Debian copyright file, so the dataset's manifest names them.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from askexpert.errors import DatasetError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Design:
    """Faces that share glyph outlines (one design), the split they all belong to, and their packages."""

    name: str
    style: str  # sans | serif | kai | hand | brush | pixel | display | mixed
    split: str  # train | val | test
    packages: tuple[str, ...]
    faces: tuple[tuple[str, int], ...]  # (font file, face index in a collection)
    note: str = ""

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"design {self.name}: split {self.split!r} is not one of {SPLITS}")


_NOTO = "/usr/share/fonts/opentype/noto/"
_TT = "/usr/share/fonts/truetype/"
_OT = "/usr/share/fonts/opentype/"


def _ttc(path: str, n: int) -> tuple[tuple[str, int], ...]:
    return tuple((path, i) for i in range(n))


DESIGNS: tuple[Design, ...] = (
    # ---- training designs (also the pretraining pool's) ----
    Design("noto-sans-cjk", "sans", "train", ("fonts-noto-cjk",),
           _ttc(_NOTO + "NotoSansCJK-Regular.ttc", 5) + _ttc(_NOTO + "NotoSansCJK-Bold.ttc", 5),
           "Source Han Sans: JP, KR, SC, TC, HK glyph forms, Regular and Bold"),
    Design("noto-serif-cjk", "serif", "train", ("fonts-noto-cjk",),
           _ttc(_NOTO + "NotoSerifCJK-Regular.ttc", 5) + _ttc(_NOTO + "NotoSerifCJK-Bold.ttc", 5),
           "Source Han Serif: JP, KR, SC, TC, HK glyph forms, Regular and Bold"),
    Design("arphic-ming", "serif", "train", ("fonts-arphic-uming", "fonts-arphic-bsmi00lp", "fonts-arphic-gbsn00lp"),
           _ttc(_TT + "arphic/uming.ttc", 4) + ((_TT + "arphic-bsmi00lp/bsmi00lp.ttf", 0),
                                                (_TT + "arphic-gbsn00lp/gbsn00lp.ttf", 0)),
           "Arphic's Mingti and Sungti; UMing extends Mingti2L"),
    Design("arphic-kai", "kai", "train", ("fonts-arphic-ukai", "fonts-arphic-bkai00mp", "fonts-arphic-gkai00mp"),
           _ttc(_TT + "arphic/ukai.ttc", 4) + ((_TT + "arphic-bkai00mp/bkai00mp.ttf", 0),
                                               (_TT + "arphic-gkai00mp/gkai00mp.ttf", 0)),
           "Arphic's Kaiti; UKai extends KaitiM"),
    Design("cwtex", "mixed", "train",
           ("fonts-cwtex-ming", "fonts-cwtex-kai", "fonts-cwtex-fs", "fonts-cwtex-heib", "fonts-cwtex-yen"),
           tuple((_TT + f"cwtex/{n}.ttf", 0) for n in ("cwming", "cwkai", "cwfs", "cwheib", "cwyen")),
           "cwTeX Ming, Kai, FangSong, HeiBold and Yen (rounded): one foundry, kept together"),
    Design("ipa-mincho", "serif", "train", ("fonts-ipafont-mincho", "fonts-ipaexfont-mincho"),
           ((_OT + "ipafont-mincho/ipam.ttf", 0), (_OT + "ipafont-mincho/ipamp.ttf", 0),
            (_OT + "ipaexfont-mincho/ipaexm.ttf", 0)), "IPA and IPAex Mincho (Takao Mincho is a copy: not used)"),
    Design("ipa-gothic", "sans", "train", ("fonts-ipafont-gothic", "fonts-ipaexfont-gothic"),
           ((_OT + "ipafont-gothic/ipag.ttf", 0), (_OT + "ipafont-gothic/ipagp.ttf", 0),
            (_OT + "ipaexfont-gothic/ipaexg.ttf", 0)), "IPA and IPAex Gothic (Takao, MigMix, Migu copy it: not used)"),
    Design("sazanami-gothic", "sans", "train", ("fonts-umeplus", "fonts-vlgothic", "fonts-konatu"),
           ((_TT + "umeplus/umeplus-gothic.ttf", 0), (_TT + "umeplus/umeplus-p-gothic.ttf", 0),
            (_TT + "vlgothic/VL-Gothic-Regular.ttf", 0), (_TT + "vlgothic/VL-PGothic-Regular.ttf", 0),
            (_TT + "konatu/Konatu.ttf", 0), (_TT + "konatu/KonatuTohaba.ttf", 0)),
           "UmePlus (Ume Gothic), VL Gothic and Konatu: kanji descended from the Sazanami / M+ outlines"),
    Design("dejima-mincho", "serif", "train", ("fonts-dejima-mincho",),
           ((_TT + "dejima-mincho/dejima-mincho-r227.ttf", 0),), "an antique-looking Mincho"),
    Design("klee", "hand", "train", ("fonts-klee",),
           ((_TT + "klee/KleeOne-Regular.ttf", 0), (_TT + "klee/KleeOne-SemiBold.ttf", 0)),
           "written with a pencil (LXGW WenKai derives from it: not used)"),
    Design("kiloji", "hand", "train", ("fonts-kiloji",),
           tuple((_TT + f"kiloji/{n}.ttf", 0) for n in ("kiloji", "kiloji_b", "kiloji_d", "kiloji_p")),
           "a longhand font"),
    Design("kouzan", "brush", "train", ("fonts-kouzan-mouhitsu", "fonts-aoyagi-kouzan-t"),
           ((_TT + "kouzan-mouhitsu/kouzan-mouhitsu.ttf", 0), (_TT + "kouzan-mouhitsu/kouzan-mouhitsu-gyosho.ttf", 0),
            (_TT + "aoyagi-kouzan-t/AoyagiKouzanT.ttf", 0)),
           "one calligrapher's brush, regular and semi-cursive (the grass-script face is illegible: not used)"),
    Design("pixel", "pixel", "train", ("fonts-dotgothic16", "fonts-misaki"),
           ((_TT + "dotgothic16/DotGothic16-Regular.ttf", 0), (_TT + "misaki/misaki_gothic.ttf", 0),
            (_TT + "misaki/misaki_mincho.ttf", 0)), "16 px and 8 px bitmap designs"),
    # ---- validation designs ----
    Design("wqy-zenhei", "sans", "val", ("fonts-wqy-zenhei",), _ttc(_TT + "wqy/wqy-zenhei.ttc", 2),
           "WenQuanYi Zen Hei and its monospaced face"),
    Design("biz-ud", "mixed", "val", ("fonts-morisawa-bizud-gothic", "fonts-morisawa-bizud-mincho"),
           ((_TT + "bizud-gothic/BIZUDGothic-Regular.ttf", 0), (_TT + "bizud-gothic/BIZUDGothic-Bold.ttf", 0),
            (_TT + "bizud-mincho/BIZUDMincho-Regular.ttf", 0)), "Morisawa's BIZ UD Gothic and Mincho"),
    Design("yozfont", "hand", "val", ("fonts-yozvox-yozfont-standard-kana",),
           ((_TT + "yozvox-yozfont/YOzRS_.ttf", 0), (_TT + "yozvox-yozfont/YOzBS_.ttf", 0)), "a pen's handwriting"),
    Design("reggae-one", "display", "val", ("fonts-reggae",), ((_TT + "reggae/ReggaeOne-Regular.ttf", 0),),
           "a heavy display face"),
    # ---- test designs ----
    Design("droid-fallback", "sans", "test", ("fonts-droid-fallback", "fonts-wqy-microhei"),
           ((_TT + "droid/DroidSansFallbackFull.ttf", 0), (_TT + "wqy/wqy-microhei.ttc", 0)),
           "Droid Sans Fallback (WenQuanYi Micro Hei derives from it)"),
    Design("motoya", "sans", "test", ("fonts-motoya-l-cedar", "fonts-motoya-l-maruberi"),
           ((_TT + "motoya-l-cedar/MTLc3m.ttf", 0), (_TT + "motoya-l-maruberi/MTLmr3m.ttf", 0)),
           "Motoya L Cedar (gothic) and L Maruberi (rounded)"),
    Design("hanazono-mincho", "serif", "test", ("fonts-hanazono",), ((_TT + "hanazono/HanaMinA.ttf", 0),),
           "a Mincho drawn with the KAGE system"),
    Design("oradano-mincho", "serif", "test", ("fonts-oradano-mincho-gsrr",),
           ((_TT + "oradano-mincho/OradanoGSRR.ttf", 0),), "a Meiji-era printed Mincho"),
    Design("seto", "hand", "test", ("fonts-seto",), ((_TT + "seto/setofont.ttf", 0),), "a handwriting font"),
    Design("aoyagi-soseki", "brush", "test", ("fonts-aoyagi-soseki",),
           ((_TT + "aoyagi-soseki/aoyagi-soseki.ttf", 0),), "another calligrapher's brush"),
    Design("sawarabi-gothic", "sans", "test", ("fonts-sawarabi-gothic",),
           ((_TT + "sawarabi-gothic/sawarabi-gothic-medium.ttf", 0),), "Sawarabi Gothic"),
)


def designs(split: str | None = None, catalogue: tuple[Design, ...] = DESIGNS) -> list[Design]:
    """The designs of one split (all of them without ``split``)."""
    return [d for d in catalogue if split is None or d.split == split]


def packages(catalogue: tuple[Design, ...] = DESIGNS) -> list[str]:
    """Every Debian package the catalogue reads, once each, in order."""
    seen: dict[str, None] = {}
    for d in catalogue:
        for p in d.packages:
            seen.setdefault(p, None)
    return list(seen)


def install_hint(catalogue: tuple[Design, ...] = DESIGNS) -> str:
    return "sudo apt-get install " + " ".join(packages(catalogue))


def require_installed(catalogue: tuple[Design, ...] = DESIGNS) -> None:
    """Refuse, naming the packages to install, when a face of the catalogue is not on this machine."""
    missing = sorted({p for d in catalogue for path, _ in d.faces if not Path(path).is_file() for p in d.packages})
    if missing:
        files = [path for d in catalogue for path, _ in d.faces if not Path(path).is_file()]
        raise DatasetError(f"the Han character task needs fonts that are not installed here ({len(files)} files, "
                           f"e.g. {files[0]})",
                           fix=f"sudo apt-get install {' '.join(missing)} (scripts/bootstrap.sh does this where "
                           "apt-get is usable)")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_record(package: str) -> dict:
    """A package's version (dpkg) and the licence of its files (its Debian copyright file: the
    ``Files: *`` paragraph where the file is machine-readable, else the licence's title line, such as
    ``ARPHIC PUBLIC LICENSE``, else the file's path)."""
    try:
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                                 text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        version = None
    copyright_file = Path("/usr/share/doc") / package / "copyright"
    licence = None
    if copyright_file.is_file():
        text = copyright_file.read_text(errors="replace")
        for block in re.split(r"\n\s*\n", text):
            files = re.search(r"^Files:\s*(.+)$", block, re.M)
            found = re.search(r"^License:\s*(.+)$", block, re.M)
            if files and found and not files.group(1).strip().startswith("debian/"):
                licence = found.group(1).strip()
                break
        if licence is None:  # a copyright file in free form: the licence's title, written in capitals
            title = re.search(r"^\s*([A-Z][A-Z0-9 ,.()-]*\bLICEN[CS]E\b[A-Z0-9 ,.()-]*?)\s*$", text, re.M)
            licence = title.group(1) if title else None
    return {"package": package, "version": version, "licence": licence or f"see {copyright_file}",
            "copyright_file": str(copyright_file)}
