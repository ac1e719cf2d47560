"""Keep the converters' native chatter (MLIR, absl, XNNPACK banners) off the user's terminal.

litert-torch, TensorFlow's MLIR exporter and the runtimes print from C++ straight to file descriptors 1
and 2, which Python's redirect_stdout cannot catch. We point those descriptors at a temporary file while
a stage runs; if the stage fails, the captured tail is attached to the error so nothing is lost.
Set LWDEPLOY_VERBOSE=1 to see everything live.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


def verbose() -> bool:
    return os.environ.get("LWDEPLOY_VERBOSE", "") not in ("", "0")


@contextlib.contextmanager
def captured_native_output() -> Iterator[None]:
    if verbose():
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as tmp:
        for fd in (1, 2):
            os.dup2(tmp.fileno(), fd)
        try:
            _silence_litert_progress()  # importing litert-torch itself prints, so only now
            yield
        except BaseException as e:
            sys.stdout.flush()
            sys.stderr.flush()
            tmp.seek(0)
            tail = tmp.read()[-4000:].decode(errors="replace").strip()
            if tail and hasattr(e, "add_note"):
                e.add_note("converter output (last lines):\n" + tail)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)


def _silence_litert_progress() -> None:
    try:
        import litert_torch._config as litert_config  # its own rich progress lines

        litert_config.config.show_progress = False
    except Exception:
        pass


def terminal_stream():
    """A stream on the real stderr that keeps working while captured_native_output() is active."""
    return os.fdopen(os.dup(2), "w", buffering=1)
