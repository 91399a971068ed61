"""The Triton models one encoder needs, and the server's side of them: before first use (and after any failure)
each is checked against the manifest (tensor names, shapes and dtypes; the fingerprint its repository records),
models the server lacks are loaded through its model-control API (a later model version's are written into the
versions repository first), and a version switched away from is unloaded."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pipeline.config import Settings, TritonSettings
from pipeline.errors import EncoderUnavailable, ModelError, ModelMismatch
from pipeline.export.triton_extras import IMAGE_PREPROCESS, fingerprint_of
from pipeline.manifest import Manifest, ModelSpec
from pipeline.triton.control import ensure_loaded, model_names, remove_version, served_name, unload, write_version
from pipeline.types import Modality, Precision

_DTYPES = {"int64": "INT64", "float32": "FP32"}
# A model (or version) the server does not know: at start-up a deployment mistake, not an outage.
_NO_MODEL = {"StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT"}


def _expected(spec: ModelSpec) -> dict[str, list[tuple[str, str, list[int]]]]:
    return {
        "inputs": [(t.name, _DTYPES[t.dtype], t.shape) for t in spec.inputs],
        "outputs": [(t.name, _DTYPES[t.dtype], t.shape) for t in spec.outputs],
    }


def _actual(meta: dict[str, Any]) -> dict[str, list[tuple[str, str, list[int]]]]:
    return {
        kind: [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta.get(kind, [])]
        for kind in ("inputs", "outputs")
    }


@dataclass
class ServedModels:
    client: Any  # tritonclient.grpc.aio.InferenceServerClient
    manifest: Manifest
    precision: Precision
    settings: Settings
    tag: str | None  # the model version's suffix on the server (None: the base version, the export's names)
    towers: dict[Modality, tuple[str, str]]  # served name and version of each CLIP tower
    ensembles: dict[Modality, str]  # the bytes-in ensembles of CLIP's towers
    ml: tuple[str, str] | None  # served name and version of the multilingual text tower
    ml_export: tuple[str, int] | None  # its export name and version (what is loaded)
    ml_strings: str | None  # its bytes-in ensemble, when the client sends bytes

    @property
    def cfg(self) -> TritonSettings:
        return self.settings.triton

    async def check(self) -> dict[str, int]:
        """Check every model this encoder needs against the manifest (loading those missing first); the
        largest batch of each. Raises EncoderUnavailable or ModelMismatch."""
        from tritonclient.utils import InferenceServerException

        timeout = self.cfg.timeout_s
        max_batch: dict[str, int] = {}
        try:
            # Live, not ready: in explicit model-control mode a model unloaded after a switch keeps a strict server
            # "not ready" for good; whether the models this encoder needs are ready is checked one by one below.
            if not await self.client.is_server_live(client_timeout=timeout):
                raise EncoderUnavailable(f"Triton at {self.cfg.url} is not live")
            await self.load_missing()
            for modality in Modality:
                name, version = self.towers[modality]
                try:
                    meta = await self.client.get_model_metadata(name, version, as_json=True, client_timeout=timeout)
                except InferenceServerException as exc:
                    if exc.status() not in _NO_MODEL:
                        raise
                    raise ModelMismatch(
                        f"Triton at {self.cfg.url} does not serve model {name!r} version {version} "
                        f"({self.precision}): {exc.message()}"
                    ) from exc
                want, got = _expected(self.manifest.models[modality]), _actual(meta)
                if want != got:
                    raise ModelMismatch(
                        f"Triton model {name!r} v{version} differs from the manifest: server has {got}, "
                        f"the exported model has {want}; re-export or point the client at the right repository"
                    )
                config = await self.client.get_model_config(name, version, as_json=True, client_timeout=timeout)
                max_batch[name] = int(config["config"].get("max_batch_size", 0)) or 1
            if self.ml is not None and self.manifest.multilingual is not None:
                name, version = self.ml
                meta = await self.client.get_model_metadata(name, version, as_json=True, client_timeout=timeout)
                want = _expected(self.manifest.multilingual.model)
                if want != _actual(meta):
                    raise ModelMismatch(f"Triton model {name!r} v{version} differs from the manifest's multilingual "
                                        f"tower: server has {_actual(meta)}, the export {want}")  # fmt: skip
                config = await self.client.get_model_config(name, version, as_json=True, client_timeout=timeout)
                max_batch[name] = int(config["config"].get("max_batch_size", 0)) or 1
                if fingerprint_of(config["config"]) != self.manifest.multilingual.fingerprint:
                    raise ModelMismatch(f"Triton at {self.cfg.url} serves another multilingual text tower as "
                                        f"{name!r}; point the client at the server's model repository")  # fmt: skip
            if self.cfg.send == "bytes":
                for name in self.strings_ensembles():
                    if not await self.client.is_model_ready(name, client_timeout=timeout):
                        raise ModelMismatch(
                            f"Triton at {self.cfg.url} has no ready ensemble {name!r}; "
                            "re-export the repository or set PIPELINE__TRITON__SEND=tensors"
                        )
                    config = await self.client.get_model_config(name, as_json=True, client_timeout=timeout)
                    max_batch[name] = int(config["config"].get("max_batch_size", 0)) or 1
                    self._check_fingerprint(name, config["config"], self._fingerprint_of(name))
            elif await self.client.is_model_ready(preprocess := served_name(IMAGE_PREPROCESS, self.tag),
                                                   client_timeout=timeout):  # fmt: skip
                # The towers' own configs carry no fingerprint; the preprocessing model that the same export
                # wrote into the same repository does. (A hand-made repository without it gets the tensor check.)
                config = await self.client.get_model_config(preprocess, as_json=True, client_timeout=timeout)
                self._check_fingerprint(preprocess, config["config"], self.manifest.fingerprint)
        except InferenceServerException as exc:
            raise EncoderUnavailable(f"Triton at {self.cfg.url}: {exc.message()}") from exc
        return max_batch

    async def load_missing(self) -> None:
        """Load this version's models through the model-control API when the server lacks one it needs (the
        first use of a version, or a server restarted since). Raises ModelMismatch naming the model when the
        server cannot load it (not in explicit mode, a model the repository does not have)."""
        timeout = self.cfg.timeout_s
        needed = [name for name, _ in self.towers.values()] + ([self.ml[0]] if self.ml else [])
        if self.cfg.send == "bytes":
            needed += self.strings_ensembles()
        missing = [n for n in needed if not await self.client.is_model_ready(n, client_timeout=timeout)]
        if not missing:
            return
        names = self.names()
        try:
            if self.tag:
                root = self.cfg.versions_repository
                if root is None:
                    raise ModelError(
                        "set PIPELINE__TRITON__VERSIONS_REPOSITORY to a folder the server also serves as a model "
                        "repository (explicit model-control mode) to serve model versions activated later"
                    )
                repository = self.settings.encoder.model_repository
                names = await asyncio.to_thread(
                    write_version, repository, self.manifest, self.precision, self.tag, root, self.ml_export
                )
            await ensure_loaded(self.client, names, self.cfg.url, timeout)
        except ModelError as exc:
            if self.tag and self.cfg.versions_repository is not None:
                # nothing of a version the server refused stays loaded or on its disk (a restart would retry it)
                await unload(self.client, names, self.cfg.url, timeout)
                await asyncio.to_thread(remove_version, self.cfg.versions_repository, names)
            raise ModelMismatch(
                f"Triton at {self.cfg.url} does not serve {', '.join(repr(n) for n in missing)} "
                f"({self.precision}) and could not load them: {exc}"
            ) from exc

    async def unload(self) -> None:
        """Unload this version's models from the server (after a switch away from it, once drained)."""
        names = self.names()
        await unload(self.client, names, self.cfg.url, self.cfg.timeout_s)
        if self.tag and self.cfg.versions_repository is not None:
            await asyncio.to_thread(remove_version, self.cfg.versions_repository, names)

    def names(self) -> list[str]:
        """This version's models as the server names them."""
        return [served_name(n, self.tag) for n in model_names(self.manifest, self.precision, self.ml_export)]

    def strings_ensembles(self) -> list[str]:
        """The bytes-in ensembles this encoder sends to (PIPELINE__TRITON__SEND=bytes)."""
        return [*self.ensembles.values(), *([self.ml_strings] if self.ml_strings else [])]

    def _fingerprint_of(self, name: str) -> str:
        """The fingerprint the served model ``name`` must record: the multilingual tower's for its ensemble."""
        if name == self.ml_strings and self.manifest.multilingual is not None:
            return self.manifest.multilingual.fingerprint
        return self.manifest.fingerprint

    def _check_fingerprint(self, name: str, config: dict[str, Any], expected: str) -> None:
        served = fingerprint_of(config)
        if served != expected:
            raise ModelMismatch(
                f"Triton at {self.cfg.url} serves another model: {name!r} records fingerprint "
                f"{served[:12] if served else '(none: exported by an older version; re-run export)'}, the manifest "
                f"{expected[:12]}; point the client at the server's model repository"
            )
