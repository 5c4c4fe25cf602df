"""Which Han characters the task and its pretraining pool hold, from the Unicode Han database.

The database is Debian's ``unicode-data`` package (``/usr/share/unicode/Unihan_*.txt.bz2``): for each
character its radical and stroke count (``kRSUnicode``, ``kTotalStrokes``), its reading and gloss
(``kMandarin``, ``kDefinition``) and the national standards it belongs to. A *candidate* is a common
character written the same way in Japan, mainland China and Taiwan: a Jōyō kanji (``kJoyoKanji``) that is
also in GB 2312 (``kGB0``) and Big5 (``kBigFive``) and has no simplified or traditional variant at
another code point, so every Chinese and Japanese face of the catalogue draws the same character
(1,241 of them in Unicode 15).

The task's classes are CIFAR-100's shape: 20 radicals (its 20 coarse classes) of 5 characters each,
so characters that share a radical, and are easily confused, form a superclass. The pool's classes
are other candidates, none of them a class of the task.
"""

from __future__ import annotations

import bz2
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from askexpert.errors import DatasetError

UNIHAN_DIR = Path("/usr/share/unicode")
_FILES = ("Unihan_OtherMappings.txt.bz2", "Unihan_IRGSources.txt.bz2", "Unihan_Variants.txt.bz2",
          "Unihan_Readings.txt.bz2")
_KEYS = {"kJoyoKanji", "kGB0", "kBigFive", "kSimplifiedVariant", "kTraditionalVariant", "kRSUnicode",
         "kTotalStrokes", "kMandarin", "kDefinition"}


@dataclass(frozen=True)
class Character:
    codepoint: int
    radical: int  # Kangxi radical number (1-214)
    strokes: int
    pinyin: str
    gloss: str

    @property
    def char(self) -> str:
        return chr(self.codepoint)

    @property
    def name(self) -> str:
        """The class name: the character and its code point (``森 U+68EE``)."""
        return f"{self.char} U+{self.codepoint:04X}"

    def to_json(self) -> dict:
        return {"char": self.char, "name": self.name, **asdict(self)}


def read_unihan(directory: Path = UNIHAN_DIR) -> dict[int, dict[str, str]]:
    """The fields this module reads, per code point, from the Unihan files in ``directory``."""
    missing = [name for name in _FILES if not (directory / name).is_file()]
    if missing:
        raise DatasetError(f"the Unicode Han database is not in {directory} ({', '.join(missing)} missing)",
                           fix="sudo apt-get install unicode-data (scripts/bootstrap.sh does this where apt-get is "
                           "usable)")
    table: dict[int, dict[str, str]] = {}
    for name in _FILES:
        with bz2.open(directory / name, "rt", encoding="utf-8") as f:
            for line in f:
                if line.startswith("#") or not line.strip():
                    continue
                cp, key, value = line.rstrip("\n").split("\t", 2)
                if key in _KEYS:
                    table.setdefault(int(cp[2:], 16), {})[key] = value
    return table


def radical_chars(directory: Path = UNIHAN_DIR) -> dict[int, str]:
    """Kangxi radical number -> the unified ideograph of the radical (``CJKRadicals.txt``)."""
    out: dict[int, str] = {}
    path = directory / "CJKRadicals.txt"
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = [p.strip() for p in line.split(";")]
        if len(parts) == 3 and not line.startswith("#") and parts[0].isdigit():
            out.setdefault(int(parts[0]), chr(int(parts[2], 16)))
    return out


def _one_form(cp: int, fields: dict[str, str]) -> bool:
    for key in ("kSimplifiedVariant", "kTraditionalVariant"):
        if any(int(v[2:], 16) != cp for v in fields.get(key, "").split()):
            return False
    return True


def candidates(table: dict[int, dict[str, str]]) -> list[Character]:
    """Common characters written alike in Japan, mainland China and Taiwan, in code point order."""
    out = []
    for cp in sorted(table):
        f = table[cp]
        if not (0x4E00 <= cp <= 0x9FFF and {"kJoyoKanji", "kGB0", "kBigFive", "kRSUnicode"} <= f.keys()):
            continue
        if not _one_form(cp, f):
            continue
        radical = int(f["kRSUnicode"].split()[0].split(".")[0].rstrip("'"))
        strokes = int(f.get("kTotalStrokes", "0").split()[0])
        out.append(Character(cp, radical, strokes, f.get("kMandarin", "").split()[0] if f.get("kMandarin") else "",
                             f.get("kDefinition", "")[:60]))
    return out


@dataclass(frozen=True)
class Choice:
    """The task's classes (grouped by radical: ``coarse[i]`` is class i's radical group), the pool's
    classes and the fillers (characters of neither, drawn as neighbours at an image's edge)."""

    task: list[Character]
    coarse: list[int]
    radicals: list[int]  # the coarse classes' radical numbers
    pool: list[Character]
    fillers: list[Character]


def choose(cands: list[Character], *, radicals: int, per_radical: int, pool: int, fillers: int,
           covered_everywhere, covered_in_training, rng: np.random.Generator, min_pool: int = 0) -> Choice:
    """Draw the classes: ``radicals`` radicals with at least ``per_radical`` characters that every face
    draws (``covered_everywhere(char)``), ``per_radical`` of each; then ``pool`` further characters that
    every training face draws (``covered_in_training``); then ``fillers`` more."""
    by_radical: dict[int, list[Character]] = {}
    for c in cands:
        by_radical.setdefault(c.radical, []).append(c)
    eligible = [r for r in sorted(by_radical) if len(by_radical[r]) >= per_radical]
    task: list[Character] = []
    coarse: list[int] = []
    chosen_radicals: list[int] = []
    for r in rng.permutation(eligible):
        if len(chosen_radicals) == radicals:
            break
        members = by_radical[int(r)]
        picked = [c for c in (members[i] for i in rng.permutation(len(members))) if covered_everywhere(c.char)]
        picked = picked[:per_radical]
        if len(picked) < per_radical:
            continue
        picked.sort(key=lambda c: c.codepoint)
        coarse += [len(chosen_radicals)] * per_radical
        chosen_radicals.append(int(r))
        task += picked
    if len(chosen_radicals) < radicals:
        raise DatasetError(f"only {len(chosen_radicals)} radicals have {per_radical} characters every face draws "
                           f"({radicals} needed)", fix="install the font packages the manifest names, or build "
                           "with fewer classes")
    used = {c.codepoint for c in task}
    rest = [cands[i] for i in rng.permutation(len(cands)) if cands[i].codepoint not in used]
    pool_chars: list[Character] = []
    others: list[Character] = []
    for c in rest:
        if len(pool_chars) < pool and covered_in_training(c.char):
            pool_chars.append(c)
        elif len(others) < fillers and covered_everywhere(c.char):
            others.append(c)
        if len(pool_chars) == pool and len(others) == fillers:
            break
    if len(pool_chars) < max(min_pool, 1):
        raise DatasetError(f"only {len(pool_chars)} characters outside the task are drawn by every training face "
                           f"({max(min_pool, 1)} needed for the pretraining pool)",
                           fix="install the font packages the manifest names")
    return Choice(task, coarse, chosen_radicals, sorted(pool_chars, key=lambda c: c.codepoint),
                  sorted(others, key=lambda c: c.codepoint))
