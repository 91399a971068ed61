"""The file a running service writes beside its data, so that clients on the same machine find it.

Like Jupyter's runtime file: the URL, the pid and a random local token (admin scope), readable only by the
user who started the service (mode 0600). Written atomically at start-up, removed at shutdown; a file whose
pid is gone is stale and ignored.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceFile:
    url: str
    pid: int
    token: str

    @classmethod
    def new(cls, url: str) -> ServiceFile:
        return cls(url, os.getpid(), secrets.token_urlsafe(32))

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600, exclusively
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(self), fh)
        os.replace(tmp, path)

    @staticmethod
    def read(path: Path) -> ServiceFile | None:
        """The running service's file, or None when there is none, it is unreadable, or its process is gone."""
        try:
            raw = json.loads(path.read_text())
            found = ServiceFile(str(raw["url"]), int(raw["pid"]), str(raw["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            os.kill(found.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's: its token is not ours to read anyway
            pass
        return found

    def remove(self, path: Path) -> None:
        """Remove the file if it is still this process's (a newer service may have replaced it)."""
        current = ServiceFile.read(path)
        if current is not None and current.pid == self.pid and current.token == self.token:
            path.unlink(missing_ok=True)
