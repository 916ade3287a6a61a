"""Files that appear whole or not at all: a kill mid-write leaves the old version (or nothing), never half a file."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def write_atomically(path, data: str | bytes) -> None:
    """Writes `data` to `path` through a synced temporary file in the same folder, then renames it into place."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; the result should read like any other file
        with os.fdopen(handle, "wb" if isinstance(data, bytes) else "w", **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


@contextmanager
def atomic_folder(path):
    """Yields a temporary folder beside `path` that replaces `path` only once the block finished without error."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    yield temporary
    if path.exists():
        shutil.rmtree(path)
    os.replace(temporary, path)


def write_json_atomic(path, payload: dict) -> None:
    """`payload` as indented UTF-8 JSON at `path`, written atomically (`write_atomically`)."""
    write_atomically(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
