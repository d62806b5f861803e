"""Output files: written atomically, and nothing that is not a regular file is ever replaced.

What happens to each kind of output path (docs/bad-input.md says the same):

* a new path, or an existing regular file: the content goes to a hidden temporary file
  beside it, renamed over the path when complete, so a crash, Ctrl-C or error never leaves
  a half-written file under the final name;
* a character device or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe): written
  into, as ``cp`` would, never replaced; a FIFO nobody reads is refused instead of blocking;
* a symlink is followed: the file it points to is replaced as above (the link stays a
  link); a link to a device or FIFO is written into; a dangling link creates its target;
* a directory, block device or socket: refused.

Errors name the path the caller gave, never the temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

FIFO_READER_WAIT_S = 2.0  # how long a FIFO without a reader is given to get one before we refuse


def output_kind(path: str | os.PathLike) -> str:
    """'new', 'file', 'device' (character device) or 'fifo' for an output path (symlinks
    followed); :class:`OutputError` for a directory, block device, socket or a parent that
    is not a folder."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "new"
    except NotADirectoryError:
        raise OutputError(f"{path}: a parent of this path is a file, not a folder") from None
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISCHR(mode):
        return "device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    what = "a folder" if stat.S_ISDIR(mode) else "a block device" if stat.S_ISBLK(mode) else "a socket"
    raise OutputError(f"{path}: is {what}; cminet writes regular files, character devices and FIFOs only")


def check_output(path: str | os.PathLike) -> Path:
    """Check an output path before any work is done: an acceptable kind (see the module
    doc), and for a file, a folder to create it in that is writable. Creates nothing."""
    if not isinstance(path, str | os.PathLike):
        raise OutputError(f"path: expected an output file path, got {type(path).__name__}")
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise OutputError(f"{str(path)!r}: not a file name")
    kind = output_kind(path)
    if kind in ("device", "fifo"):
        return path
    target = Path(os.path.realpath(path))
    if kind == "file" and not os.access(target, os.W_OK):
        raise OutputError(f"{path}: the file exists and is read-only")
    folder = target.parent
    while not folder.exists():  # the nearest existing ancestor decides
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the folder {folder} is not writable")
    return path


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_output("out.png") as tmp: write(tmp)`` — ``out.png`` appears (or the
    device / FIFO receives the bytes) only if the block finishes."""
    path = Path(path)
    kind = output_kind(path)
    if kind in ("device", "fifo"):
        with _through_temp_file(path, kind) as tmp:
            yield tmp
        return
    if kind == "file" and not os.access(path, os.W_OK):
        raise OutputError(f"{path}: the file exists and is read-only")
    target = Path(os.path.realpath(path))  # a symlink is followed: its target is replaced, the link stays
    created = [folder for folder in target.parents if not folder.exists()]  # removed again on failure
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        yield Path(tmp)
        # mkstemp makes 0600, and writers that recreate the file (safetensors) keep that:
        # give the finished file normal permissions just before it takes its name.
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException as exc:
        _blame_user_path(exc, tmp, path)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@contextmanager
def _through_temp_file(path: Path, kind: str) -> Iterator[Path]:
    """Writers want a file name; a device or FIFO gets the finished bytes copied into it."""
    fd, tmp = tempfile.mkstemp(prefix=".cminet-", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        out = _open_for_writing(path, kind)
        with os.fdopen(out, "wb") as sink, open(tmp, "rb") as source:
            shutil.copyfileobj(source, sink)
    except BaseException as exc:
        _blame_user_path(exc, tmp, path)
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def _open_for_writing(path: Path, kind: str) -> int:
    if kind == "device":
        return os.open(path, os.O_WRONLY)
    deadline = time.monotonic() + FIFO_READER_WAIT_S
    while True:  # O_NONBLOCK: opening a FIFO without a reader fails (ENXIO) instead of hanging
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            if time.monotonic() > deadline:
                raise OutputError(f"{path}: a FIFO that nobody reads; start its reader first") from None
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd


def _blame_user_path(exc: BaseException, tmp: str | None, path: Path) -> None:
    """Put the caller's path where an error names our temporary file."""
    if not tmp:
        return
    if isinstance(exc, OSError):
        if exc.filename is not None and str(exc.filename) == tmp:
            exc.filename = str(path)
        if exc.filename2 is not None and str(exc.filename2) == tmp:
            exc.filename2 = str(path)
    exc.args = tuple(a.replace(tmp, str(path)).replace(Path(tmp).name, path.name) if isinstance(a, str) else a
                     for a in exc.args)


@contextmanager
def staging_folder(out: str | os.PathLike) -> Iterator[Path]:
    """A hidden folder beside (or inside) the folder ``out`` for files that must appear
    together or not at all, such as an export and its verification: write them there, then
    move the good ones into ``out`` with :func:`publish`. The staging folder and whatever is
    left in it are removed when the block ends, so a failure leaves ``out`` as it was."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file, not a folder")
    anchor = out
    while not anchor.exists():
        anchor = anchor.parent
    check_output(anchor / ".cminet-staging")
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name or 'out'}.", suffix=".staging", dir=anchor))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, out: str | os.PathLike, names) -> list[Path]:
    """Move ``names`` from ``stage`` into the folder ``out`` (created if needed); each
    replaces a file of that name, never a folder or special file. Returns the new paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    moved = []
    for name in names:
        target = out / name
        if output_kind(target) not in ("new", "file"):
            raise OutputError(f"{target}: not a regular file; refusing to replace it")
        shutil.move(str(stage / name), str(target))  # a rename on one filesystem
        moved.append(target)
    return moved


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """UTF-8; names that came from undecodable file-system bytes are written back as those bytes."""
    write_bytes_atomic(path, text.encode("utf-8", "surrogateescape"))


class OutputSet:
    """Outputs of one command that appear together or not at all (a NIfTI, a DICOM series
    folder, a folder of PNGs). Each is written to a hidden staging path beside its
    destination (:meth:`file`, :meth:`folder`); :meth:`commit` renames them all into place
    once every one is complete. Leaving the ``with`` block without committing (an error,
    Ctrl-C, SIGTERM) removes whatever was staged, so no destination changes.

    Folders are committed only into a new or empty destination: a derived series or a slice
    set never mixes with an earlier run's files."""

    def __init__(self, inputs=()) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (staging path, destination)
        self._inputs = [Path(os.path.realpath(p)) for p in inputs]

    def _not_an_input(self, destination: Path) -> None:
        """An input is never an output: not the same file, nor inside an output folder."""
        check_not_an_input(destination, self._inputs)
        real = Path(os.path.realpath(destination))
        for _, other in self._staged:
            if Path(os.path.realpath(other)) == real:
                raise OutputError(f"{destination}: given for two outputs")

    def _stage_path(self, destination: Path) -> Path:
        destination.parent.mkdir(parents=True, exist_ok=True)
        token = os.urandom(4).hex()
        return destination.parent / f".cminet-{token}-{destination.name}"  # keeps .nii.gz as it is

    def file(self, destination: str | os.PathLike) -> Path:
        destination = check_output(destination)
        self._not_an_input(destination)
        staged = self._stage_path(destination)
        self._staged.append((staged, destination))
        return staged

    def folder(self, destination: str | os.PathLike) -> Path:
        destination = Path(destination)
        check_new_folder(destination)
        self._not_an_input(destination)
        staged = self._stage_path(destination)
        self._staged.append((staged, destination))
        return staged

    def commit(self) -> None:
        for _, destination in self._staged:  # checked again: the run may have taken minutes
            if destination.is_dir() and not os.path.islink(destination):
                check_new_folder(destination)
        for staged, destination in self._staged:
            if staged.is_dir():
                if destination.is_dir():
                    destination.rmdir()  # empty, checked above
                os.replace(staged, destination)
            elif output_kind(destination) in ("device", "fifo"):
                with open(staged, "rb") as source, open(destination, "wb") as sink:
                    shutil.copyfileobj(source, sink)
            else:
                os.replace(staged, os.path.realpath(destination))
        self._staged = []

    def discard(self) -> None:
        for staged, _ in self._staged:
            if staged.is_dir():
                shutil.rmtree(staged, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()
        self._staged = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # after commit() nothing is left to discard


def check_new_folder(folder: str | os.PathLike) -> Path:
    """An output folder that is absent or empty, with a writable parent."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputError(f"{folder}: exists and is not an empty folder; give a new folder")
    check_output(folder.parent / ".cminet-check")
    return folder


def check_not_an_input(output: str | os.PathLike, inputs) -> None:
    """Refuse an output that is (or links to) one of ``inputs``, or a folder holding one."""
    real = Path(os.path.realpath(output))
    for source in inputs:
        source = Path(os.path.realpath(source))
        if real == source or real in source.parents:
            raise OutputError(f"{output}: is an input of this command (or holds one); give another path")
