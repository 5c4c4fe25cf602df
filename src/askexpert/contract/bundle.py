"""Open a system from its bundle (a directory, or a ``.tar.gz`` of one), once, and verify it: torch-free.

A bundle is ``system.json`` plus the files it lists, each with its sha256. Opening one checks the
schema version, that every listed file exists and that its hash matches, so a half-copied or
tampered bundle is refused with the fix named, before any model is loaded.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from askexpert.contract.schema import READABLE_VERSIONS, SCHEMA_VERSION, SYSTEM_FILE, OperatingPoint, SystemManifest
from askexpert.errors import CheckpointError
from askexpert.security import check_system_id, confined

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class System:
    """A collaborative system, opened once from its bundle: the directory, the manifest (partition,
    routing, every model's entry) and the system id, read when it was opened. Every run-time consumer
    (the edge session, the server's pool, the Ray app, the testbed, the demo, the bench) takes this
    object; a model's weights are read where that model is loaded, from :meth:`path`."""

    root: Path
    manifest: SystemManifest
    system_id: str  # the sha256 of system.json: names this exact system (the server reports it)

    def path(self, relative: str) -> Path:
        return confined(self.root, relative, f"bundle {self.root / SYSTEM_FILE}")

    @property
    def generalist_onnx(self) -> Path:
        return self.path(self.manifest.generalist.onnx)

    def repoint(self, *, tau: float, k: int, point: OperatingPoint) -> System:
        """This system at another operating point of its curve: ``system.json``'s routing rewritten (its
        system id changes with it; every other file, and its hash, stays)."""
        m = self.manifest
        routing = m.routing.model_copy(update={"tau": tau, "k": k, "operating_point": point})
        manifest = SystemManifest.model_validate(m.model_copy(update={"routing": routing}).model_dump())
        (self.root / SYSTEM_FILE).write_text(manifest.model_dump_json(indent=1) + "\n")
        return System(self.root, manifest, sha256_file(self.root / SYSTEM_FILE))


def is_bundle(path: Path | System) -> bool:
    if isinstance(path, System):
        return True
    path = Path(path)
    return (path / SYSTEM_FILE).is_file() or (path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES))


def _check_members(tar: tarfile.TarFile, archive: Path) -> None:
    """Refuse what the ``data`` filter refuses: anything but files and folders, and any path that is
    absolute or climbs out of the target with ``..``."""
    for member in tar.getmembers():
        parts = Path(member.name).parts
        if not (member.isfile() or member.isdir()) or member.name.startswith("/") or ".." in parts:
            raise CheckpointError(f"bundle archive {archive} holds {member.name!r}, which would land outside the "
                                  "bundle or is not a plain file", fix="build it again with: askexpert build-system "
                                  "... --archive, and take archives from a source you trust")


def _extract(archive: Path) -> Path:
    """Unpack an archive into a fresh temporary directory, removed when the process exits."""
    target = Path(tempfile.mkdtemp(prefix="askexpert-bundle-"))
    atexit.register(shutil.rmtree, target, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the standard library's safe extraction
                tar.extractall(target, filter="data")
            else:  # older Pythons (Debian's 3.11.2): the same refusals, by hand
                _check_members(tar, archive)
                tar.extractall(target)
    except (tarfile.TarError, OSError) as err:
        raise CheckpointError(f"cannot unpack bundle archive {archive}: {err}",
                              fix="build it again with: askexpert build-system ... --archive") from err
    inner = [p for p in target.iterdir() if (p / SYSTEM_FILE).is_file()]
    if (target / SYSTEM_FILE).is_file():
        return target
    if len(inner) == 1:
        return inner[0]
    raise CheckpointError(f"{archive} holds no {SYSTEM_FILE}", fix="build it with: askexpert build-system")


def open_system(path: Path | System, *, verify: bool = True, expect_id: str | None = None) -> System:
    """The one door to a system: the bundle at ``path`` (directory or archive), every file's sha256 checked
    unless ``verify`` is off; with ``expect_id`` (a published system id), refused unless its ``system.json``
    has that sha256. A :class:`System` already open is returned as it is (its id checked)."""
    if isinstance(path, System):
        check_system_id(path.system_id, expect_id, f"bundle {path.root}")
        return path
    path = Path(path)
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        path = _extract(path)
    manifest_file = path / SYSTEM_FILE
    if not manifest_file.is_file():
        raise CheckpointError(f"{path} is not a system bundle (no {SYSTEM_FILE})",
                              fix="build one with: askexpert build-system GENERALIST_RUN EXPERTS_RUN --out DIR")
    try:
        raw = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{manifest_file} is not valid JSON ({err})", fix="build the bundle again") from err
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"{manifest_file} has schema version {version!r}; this askexpert reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))} (it writes {SCHEMA_VERSION})",
                              fix="build the bundle again with this version of askexpert, or "
                              "install the askexpert version that built it")
    try:
        manifest = SystemManifest.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(f"{manifest_file} is not a valid system description ({where}: {first['msg']})",
                              fix="build the bundle again with: askexpert build-system") from err
    system_id = sha256_file(manifest_file)
    check_system_id(system_id, expect_id, f"bundle {path}")
    if verify:
        for relative, digest in manifest.files.items():
            f = confined(path, relative, f"bundle {manifest_file}")
            if not f.is_file():
                raise CheckpointError(f"bundle {path} lacks {relative}", fix="copy the whole bundle directory again")
            if sha256_file(f) != digest:
                raise CheckpointError(f"bundle file {f} does not match its sha256 in {SYSTEM_FILE} (damaged or "
                                      "changed after the build)", fix="copy the bundle again, or rebuild it")
    return System(path, manifest, system_id)
