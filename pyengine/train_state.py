"""What the training commands share to save and resume a run: the checkpoint error, numpy generator
states as JSON, and Ctrl-C as a request to stop at the next step boundary."""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["CheckpointError", "json_state", "from_json_state", "sigint_stops"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, foreign, or of another configuration."""


def json_state(state: dict) -> dict:
    """A generator's state with its big integers as strings (JSON keeps 64-bit at most)."""
    return {k: (json_state(v) if isinstance(v, dict) else str(v) if isinstance(v, int) else v)
            for k, v in state.items()}


def from_json_state(state: dict) -> dict:
    return {k: (from_json_state(v) if isinstance(v, dict) else int(v) if isinstance(v, str) and v.lstrip("-")
                .isdigit() else v) for k, v in state.items()}


@contextlib.contextmanager
def sigint_stops():
    """An event that SIGINT sets (instead of raising KeyboardInterrupt
    inside a kernel call), in the main thread; elsewhere signals are not ours."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_requested(stop: threading.Event, on_step, step: int, loss: float) -> bool:
    """Whether the loop stops after this step: Ctrl-C set `stop`, or `on_step(step, loss)` (a test's
    hook) raised KeyboardInterrupt."""
    try:
        if on_step is not None:
            on_step(step, loss)
    except KeyboardInterrupt:
        stop.set()
    return stop.is_set()


def progress_bar(total: int, initial: int, shown: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not shown, unit="step", desc=desc, dynamic_ncols=True)


def load_run(path: str, keys: tuple, kind: str) -> dict:
    """The dict pyengine.save wrote at `path`; CheckpointError (one line) for a missing file, one
    that is not intact, or one without the `keys` of a `kind` checkpoint."""
    import os

    import pyengine

    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        saved = pyengine.load(path)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    missing = [k for k in keys if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise CheckpointError(f"{path} is not a {kind} checkpoint (no {', '.join(missing)})")
    return saved
