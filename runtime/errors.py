"""Errors the whole project raises for bad input. All are ``ValueError`` subclasses so a
device application can catch one type; the CLIs print them as one line without a
traceback (``--debug`` shows it)."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when the message is empty),
    cut to ``limit`` characters: what a one-line error keeps of a library's own error."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class CMINetError(ValueError):
    """Base class: a problem with what the user gave us (a file, an image, an option)."""


class ImageError(CMINetError):
    """An unreadable, truncated, wrongly shaped or otherwise unusable image."""


class ModelFileError(CMINetError):
    """A missing, corrupt or foreign weights / ONNX / engine file, or a version mismatch."""


class OutputError(CMINetError):
    """An output path cminet will not write: a folder, block device, socket, read-only file,
    unknown image extension, or a FIFO nobody reads."""


class SizeLimitError(CMINetError):
    """An input larger than this machine's memory (or the model's shape profile) can fuse;
    the message says what fits."""


class ServerError(CMINetError):
    """A Triton server that cannot be reached, lacks the model, or refused a request; or a
    ``cminet serve`` that could not start."""
