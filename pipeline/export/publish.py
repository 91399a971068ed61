"""Publishing an exported repository: the new one is built in a staging folder beside ``out`` and swapped with
``out`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``; two renames elsewhere), so a reader sees the old
repository or the new one, never a mix. What the export does not own in ``out`` is carried over by hard link."""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from pipeline.export.triton_extras import MULTILINGUAL_PREPROCESS, image_ensemble, multilingual_ensemble, text_ensemble
from pipeline.manifest import MANIFEST_FILE, Manifest
from pipeline.types import Precision

_STAGING_LEFTOVER = ".export-staging-"  # the in-``out`` staging folders of older versions: never carried over


def staging_folder(out: Path) -> Path:
    """A new empty folder beside ``out`` (or in its nearest existing ancestor), on the same filesystem so the
    final swap is a rename."""
    real = out.resolve()  # where a symlinked ``out`` points: the folder that is swapped
    anchor = real.parent if real.parent.exists() else next(p for p in real.parents if p.exists())
    staging = anchor / f".{real.name}.staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # the umask's mode, as a plain mkdir of ``out`` would get (mkdtemp's is 0700)
    return staging


def same_content(staging: Path, out: Path) -> bool:
    """Whether every file in ``staging`` is already in ``out`` with the same bytes."""
    for path in (p for p in staging.rglob("*") if p.is_file()):
        target = out / path.relative_to(staging)
        if not target.is_file() or not filecmp.cmp(path, target, shallow=False):
            return False
    return True


def _dropped(manifest: Manifest, existing: Manifest | None) -> set[Path]:
    """Paths in the old repository (relative) that the new one must not carry: the version folders of variants
    no longer exported (the whole model folder when the new repository has no variant in that Triton model, as
    for a format-1 INT8 version moving to its own model) and the ensembles of precisions no longer exported."""
    if existing is None:
        return set()

    def towers(m: Manifest) -> list[Any]:  # CLIP's and the multilingual text tower's
        return [*m.models.values(), *([m.multilingual.model] if m.multilingual else [])]

    new = [v for spec in towers(manifest) for v in spec.variants.values()]
    keep, models = {v.file for v in new}, {v.triton_model for v in new}
    dropped = {
        Path(variant.file).parent if variant.triton_model in models else Path(variant.triton_model)
        for spec in towers(existing)
        for variant in spec.variants.values()
        if variant.file not in keep
    }
    for precision in existing.precisions() - manifest.precisions():
        dropped |= {Path(image_ensemble(precision)), Path(text_ensemble(precision))}

    def strings(m: Manifest) -> set[Precision]:  # the multilingual tower's bytes-in ensembles
        tower = m.multilingual
        return set(tower.model.variants) if tower is not None and tower.strings_ensemble else set()

    dropped |= {Path(multilingual_ensemble(precision)) for precision in strings(existing) - strings(manifest)}
    if strings(existing) and not strings(manifest):
        dropped.add(Path(MULTILINGUAL_PREPROCESS))
    return dropped


def _carry_over(out: Path, staging: Path, dropped: set[Path]) -> None:
    """Link into ``staging`` everything in ``out`` the export neither wrote anew nor dropped: kept variant
    files and anything the export does not own. Hard links cost no copy, and the old names are only ever
    removed, never written through, so the new repository cannot change under the old one's readers."""
    for root, dirs, files in os.walk(out):
        here = Path(root)
        rel_root = here.relative_to(out)
        if rel_root == Path(".") and MANIFEST_FILE in files:
            files.remove(MANIFEST_FILE)  # staging has its own
        dirs[:] = [d for d in dirs if rel_root / d not in dropped and not d.startswith(_STAGING_LEFTOVER)]
        for name in [*dirs, *files]:
            source, target = here / name, staging / rel_root / name
            if source.is_symlink():
                if not target.exists() and not target.is_symlink():
                    target.symlink_to(os.readlink(source))
            elif name in dirs:
                target.mkdir(exist_ok=True)
            elif not target.exists():
                try:
                    os.link(source, target)
                except OSError:  # a filesystem without hard links
                    shutil.copy2(source, target)


def publish(staging: Path, out: Path, manifest: Manifest, existing: Manifest | None) -> None:
    """Make ``staging`` (a complete repository) the repository at ``out`` in one step; the old one ends up at
    ``staging`` for the caller to remove. A symlinked ``out`` keeps its link: the folder it names is swapped."""
    real = out.resolve()
    if not real.exists():
        real.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, real)
        return
    _carry_over(real, staging, _dropped(manifest, existing))
    shutil.copymode(real, staging)
    if _exchange(staging, real):
        return
    # No atomic exchange here (not Linux, or a filesystem without it): two renames. A reader between them
    # finds no repository for a moment, never a mix of two.
    old = staging.with_name(staging.name + ".old")
    os.rename(real, old)
    os.rename(staging, real)
    os.rename(old, staging)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:  # glibc < 2.28, or another C library
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
