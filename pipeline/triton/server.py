"""Run the ``tritonserver`` binary bundled in PyPI ``nvidia-pytriton`` on this machine (python backend only).

For development (`make triton`) and the tests. It serves an exported repository with the ``cpu_test`` configs
(``--model-config-name=cpu_test``): the python backend runs the same ONNX files with onnxruntime. The python
backend stub is taken for the running Python and placed beside ``libtriton_python.so`` in a private backend
folder; the venv's ``bin`` goes first on PATH because the stub ignores PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import EncoderUnavailable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable("tritonserver not found: install nvidia-pytriton (make install)")
    return Path(next(iter(spec.submodule_search_locations)))


def unsupported_reason() -> str | None:
    """Why the bundled binary cannot run here, or None when it can."""
    if platform.machine() != "x86_64":
        return f"the bundled tritonserver is x86_64 only (this is {platform.machine()})"
    libc, version = platform.libc_ver()
    if libc == "glibc" and tuple(int(x) for x in version.split(".")[:2]) < (2, 35):
        return f"the bundled tritonserver needs glibc >= 2.35 (this is {version})"
    try:
        root = pytriton_root()
    except EncoderUnavailable as exc:
        return str(exc)
    if not (root / "tritonserver" / "bin" / "tritonserver").is_file():
        return "nvidia-pytriton has no tritonserver binary"
    return None


class LocalTriton:
    """A tritonserver process on loopback with free ports; ``grpc_url`` / ``http_url`` after :meth:`start`.

    The server inherits this process's environment plus ``env``: the preprocessing models read their input
    limits from ``PIPELINE__LIMITS__*`` there, as the service does. ``explicit``: model control in explicit mode
    (every model of the repository loaded at start; other model versions loaded and unloaded by the service
    through the model-control API), as production runs it; ``versions_repository``: the second repository the
    service writes those versions into (``PIPELINE__TRITON__VERSIONS_REPOSITORY``).
    """

    def __init__(
        self,
        model_repository: Path,
        config_name: str = "cpu_test",
        log_file: Path | None = None,
        grpc_port: int | None = None,
        http_port: int | None = None,
        env: Mapping[str, str] | None = None,
        explicit: bool = False,
        versions_repository: Path | None = None,
    ) -> None:
        self.explicit = explicit
        self.versions_repository = Path(versions_repository).resolve() if versions_repository else None
        self.model_repository = Path(model_repository).resolve()
        self.config_name = config_name
        self.grpc_port = grpc_port or _free_port()
        self.http_port = http_port or _free_port()
        self.metrics_port = _free_port()
        self.log_file = log_file
        self.env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._backends: tempfile.TemporaryDirectory[str] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _backend_dir(self) -> Path:
        root = pytriton_root() / "tritonserver"
        self._backends = tempfile.TemporaryDirectory(prefix="triton-backends-")
        python_dir = Path(self._backends.name) / "python"
        python_dir.mkdir()
        for item in (root / "backends" / "python").iterdir():
            (python_dir / item.name).symlink_to(item)
        stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(stub / "triton_python_backend_stub", python_dir / "triton_python_backend_stub")
        return Path(self._backends.name)

    def _env(self) -> dict[str, str]:
        root = pytriton_root()
        libs = [str(root.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join([*(p for p in libs if p), env.get("LD_LIBRARY_PATH", "")])
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env | self.env

    def start(self, timeout_s: float = 120.0) -> LocalTriton:
        reason = unsupported_reason()
        if reason:
            raise EncoderUnavailable(reason)
        binary = pytriton_root() / "tritonserver" / "bin" / "tritonserver"
        cmd = [
            str(binary),
            f"--model-repository={self.model_repository}",
            f"--model-config-name={self.config_name}",
            f"--backend-directory={self._backend_dir()}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            "--exit-timeout-secs=5",
            # explicit mode: a model unloaded after a switch would keep a strict server "not ready" for good
            f"--strict-readiness={'false' if self.explicit else 'true'}",
            "--log-verbose=0",
        ]
        if self.explicit:
            # a model version folder the server cannot load must not keep it from starting
            cmd += ["--model-control-mode=explicit", "--load-model=*", "--exit-on-error=false"]
        if self.versions_repository is not None:
            self.versions_repository.mkdir(parents=True, exist_ok=True)
            cmd.append(f"--model-repository={self.versions_repository}")
        self._log = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115  (closed in stop)
        log = self._log or subprocess.DEVNULL
        self._proc = subprocess.Popen(
            cmd, env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EncoderUnavailable(f"tritonserver exited with code {self._proc.returncode}; see {self.log_file}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as resp,
            ):
                if resp.status == 200:
                    return self
            time.sleep(0.25)
        self.stop()
        raise EncoderUnavailable(f"tritonserver not ready within {timeout_s:.0f} s; see {self.log_file}")

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._backends is not None:
            self._backends.cleanup()
            self._backends = None

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
