# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Writing the files of a folder hfddpm updates (a saved pipeline, an evaluation's output): atomically, and never
through a symbolic link.
"""

import os
import secrets
import stat
from pathlib import Path


def write_file(path, data: str | bytes) -> Path:
    """Write ``data`` (a str is written as UTF-8, newlines as they are) to ``path``: into a new file beside it, then
    renamed over it (``os.replace``). A symbolic link at ``path`` is replaced by the file, never written through (its
    target is left as it was), and no reader sees half a file. The file keeps the permissions of the one it replaces.

    hfddpm writes every file of a pipeline folder it updates this way: ``README.md`` (``write_model_card``,
    ``update_card_metrics``, ``push_to_hub``), ``metrics.json`` (``hfddpm evaluate``) and the memorisation check's
    picture.

    Example:
        >>> import os, tempfile
        >>> folder, elsewhere = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> os.symlink(f"{elsewhere}/notes.txt", f"{folder}/metrics.json")  # a link out of the folder
        >>> write_file(f"{folder}/metrics.json", "{}").is_symlink(), os.path.exists(f"{elsewhere}/notes.txt")
        (False, False)
    """
    path = Path(path)
    data = data.encode("utf-8") if isinstance(data, str) else data
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    file = open(temporary, "xb")  # a new file (never a link), with the permissions the umask gives
    try:
        with file:
            file.write(data)
        if path.is_file() and not path.is_symlink():
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
