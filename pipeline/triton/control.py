"""Loading a model version into a running Triton server and unloading it (the model-control API, explicit mode).

A Triton server holds models by name. The repository the server was started with serves the base version under
the export's own names (``clip_visual``, ``clip_text_strings_fp16``, ...); every later version is served under
the same names with its version as a suffix (``clip_visual__v2``), so two generations answer side by side while a
switch drains.

A later version's models are written into a second model repository the server reads (``--model-repository``
given twice; ``PIPELINE__TRITON__VERSIONS_REPOSITORY`` is that folder as the service sees it: a volume both
mount), then loaded by name. Its files cannot travel in the load request instead (a config override with file
contents): Triton's ensembles do not see models loaded that way (triton-inference-server/server#4630), and the
server-side preprocessing runs through ensembles.

Only what one precision needs is written and loaded: its two tower models (at that precision's version only),
the two preprocessing models and its two ensembles (with a multilingual tower exported with its bytes-in ensemble,
that tower, its tokenizer model and its ensemble too), every config file of each (``config.pbtxt`` and
``configs/*.pbtxt``, so ``--model-config-name`` picks as for the base) renamed, with its fingerprint parameter
kept and the export's own name recorded as ``source_model``. The manifest and the tokenizer go into every model's
folder: the python-backend models read them from there (another version's sit beside them).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pipeline.errors import EncoderUnavailable, ModelError
from pipeline.export.triton_extras import (
    IMAGE_PREPROCESS,
    MULTILINGUAL_PREPROCESS,
    TEXT_PREPROCESS,
    image_ensemble,
    multilingual_ensemble,
    text_ensemble,
)
from pipeline.manifest import MANIFEST_FILE, Manifest
from pipeline.types import Modality, Precision

log = logging.getLogger(__name__)
SEPARATOR = "__"
SOURCE_PARAMETER = "source_model"


def served_name(name: str, tag: str | None) -> str:
    """The name a model of version ``tag`` has on the server (the export's own name for the base version)."""
    return f"{name}{SEPARATOR}{tag}" if tag else name


def tower_models(
    manifest: Manifest, precision: Precision, multilingual: tuple[str, int] | None = None
) -> dict[str, int]:
    """The export's tower models serving ``precision`` and the version of each: CLIP's two, and the
    multilingual text tower's model and version when the encoder serves it (``multilingual``)."""
    towers = dict(manifest.triton_model(modality, precision) for modality in Modality)
    if multilingual is not None:
        towers[multilingual[0]] = multilingual[1]
    return towers


def model_names(manifest: Manifest, precision: Precision, multilingual: tuple[str, int] | None = None) -> list[str]:
    """The export's names of the models serving ``precision``, in load order (an ensemble after its models)."""
    towers = list(tower_models(manifest, precision, multilingual))
    names = [*towers, IMAGE_PREPROCESS, TEXT_PREPROCESS, image_ensemble(precision), text_ensemble(precision)]
    if ensemble := multilingual_strings(manifest, multilingual):
        names += [MULTILINGUAL_PREPROCESS, ensemble]
    return names


def multilingual_strings(manifest: Manifest, multilingual: tuple[str, int] | None) -> str | None:
    """The export's name of the bytes-in ensemble of the multilingual variant ``multilingual`` (model, version),
    or None (no such tower served, or one exported before it had ensembles)."""
    tower = manifest.multilingual
    if multilingual is None or tower is None or not tower.strings_ensemble:
        return None
    for precision, variant in tower.model.variants.items():
        if (variant.triton_model, variant.triton_version) == multilingual:
            return multilingual_ensemble(precision)
    return None


def _renamed(path: Path, names: dict[str, str], versions: list[int], source: str) -> str:
    """The config at ``path`` under its served name, calling the served names, serving only ``versions``."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise ModelError(f"{path}: cannot read the Triton model config ({exc}); re-export the model") from exc
    config.name = names[source]
    if versions and config.HasField("version_policy"):
        config.version_policy.specific.ClearField("versions")
        config.version_policy.specific.versions.extend(versions)
    config.parameters[SOURCE_PARAMETER].string_value = source
    for step in config.ensemble_scheduling.step:
        step.model_name = names.get(step.model_name, step.model_name)
    return f"# {source} of model version served as {config.name}. Written by the service; do not edit.\n" + (
        text_format.MessageToString(config)
    )


def _place(source: Path, target: Path) -> None:
    """A hard link when both are on one file system (no copy of a large model), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_version(repository: Path, manifest: Manifest, precision: Precision, tag: str, root: Path,
                  multilingual: tuple[str, int] | None = None) -> list[str]:  # fmt: skip
    """Write what the server needs to serve ``precision`` of ``repository`` as version ``tag`` into ``root`` (a
    model repository the server reads); the served names, in load order. Each model's folder is written
    whole under a temporary name, then renamed into place."""
    repository, root = Path(repository), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    towers = tower_models(manifest, precision, multilingual)
    sources = model_names(manifest, precision, multilingual)
    names = {model: served_name(model, tag) for model in sources}
    for model in sources:
        folder, target = repository / model, root / names[model]
        if (target / MANIFEST_FILE).is_file():
            if (target / MANIFEST_FILE).read_bytes() == (repository / MANIFEST_FILE).read_bytes():
                continue  # written before (an activation tried again, a rollback)
            shutil.rmtree(target)  # another export under the same version (re-exported in place)
        versions = [towers[model]] if model in towers else [1]
        staging = root / f".{names[model]}.{uuid.uuid4().hex[:8]}"
        try:
            for config in [folder / "config.pbtxt", *sorted((folder / "configs").glob("*.pbtxt"))]:
                (staging / config.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
                (staging / config.relative_to(folder)).write_text(
                    _renamed(config, names, versions if model in towers else [], model)
                )
            for version in versions:
                (staging / str(version)).mkdir(parents=True, exist_ok=True)
                for path in sorted((folder / str(version)).iterdir()):
                    if path.is_file():
                        _place(path, staging / str(version) / path.name)
            # the python-backend models read these from their own folder (another version's may sit beside)
            _place(repository / MANIFEST_FILE, staging / MANIFEST_FILE)
            _place(repository / manifest.text.tokenizer_file, staging / manifest.text.tokenizer_file)
            if manifest.multilingual is not None:
                tokenizer = manifest.multilingual.text.tokenizer_file
                _place(repository / tokenizer, staging / tokenizer)
            staging.rename(target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelError(f"writing {names[model]} into {root}: {exc}") from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # never a half-written folder the server would try to load
            raise
    return [names[m] for m in sources]


def remove_version(root: Path, names: list[str]) -> None:
    """Delete the folders ``write_version`` wrote (after the server unloaded them)."""
    for name in names:
        shutil.rmtree(Path(root) / name, ignore_errors=True)


def _refusal(exc: Any, url: str | None, name: str) -> EncoderUnavailable | ModelError:
    message = (exc.message() or str(exc)).strip().split("\n")[0][:500]  # not a python backend's traceback
    status = exc.status() or ""
    if "not allowed" in message:  # "explicit model load / unload is not allowed if polling is enabled"
        return ModelError(f"Triton at {url} refused to load {name!r}: {message}; start it with "
                          "--model-control-mode=explicit --load-model=* to switch model versions")  # fmt: skip
    if "UNAVAILABLE" in status or "DEADLINE" in status:
        return EncoderUnavailable(f"Triton at {url}: loading {name!r}: {message}")
    return ModelError(f"Triton at {url} refused to load {name!r}: {message}")


async def ensure_loaded(client: Any, names: list[str], url: str | None, timeout_s: float) -> list[str]:
    """Load each of ``names`` that the server does not have ready, in order, from its model repositories; the
    names loaded.

    A model the server already serves is left as it is (never replaced under other clients: whether it is the
    right one is the caller's fingerprint check). Raises ModelError when the server refuses (not in explicit
    mode, a model it cannot find or load), EncoderUnavailable when it cannot be reached."""
    from tritonclient.utils import InferenceServerException

    loaded = []
    for name in names:
        try:
            if await client.is_model_ready(name, client_timeout=timeout_s):
                continue
            await client.load_model(name)  # loading a real model takes far longer than a request: no deadline
        except InferenceServerException as exc:
            raise _refusal(exc, url, name) from exc
        loaded.append(name)
    if loaded:
        log.info("Triton at %s: loaded %s", url, ", ".join(loaded))
    return loaded


async def unload(client: Any, names: list[str], url: str | None, timeout_s: float) -> None:
    """Unload ``names`` (ensembles first, so none calls a model that is gone); failures are logged, not
    raised: a model left loaded costs memory, never an answer."""
    from tritonclient.utils import InferenceServerException

    for name in reversed(names):
        try:
            await client.unload_model(name, client_timeout=timeout_s)
        except InferenceServerException as exc:
            log.warning("Triton at %s: unloading %s failed: %s", url, name, exc.message() or exc)
    log.info("Triton at %s: unloaded %s", url, ", ".join(names))
