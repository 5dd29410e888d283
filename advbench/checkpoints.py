"""Loading a user's checkpoint (a suite's ``checkpoint:`` field) as a state dict, or one clear error line.

``torch.load(..., weights_only=True)`` refuses anything that is not plain containers and tensors, which is what
keeps a planted file from running code; but its errors are torch's many lines, and they suggest
``weights_only=False``, which a user must never be told to do for a file they did not make. This module turns
every way a file can fail to be a state dict into one ``AdvbenchError`` naming the suite file, the field and the
path.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from advbench.errors import AdvbenchError

EXPECTED = "expected a file written by torch.save(model.state_dict()) (a mapping of parameter names to tensors)"


def load_state_dict(path: str | Path, field_path: str, source: str) -> dict[str, torch.Tensor]:
    """The state dict stored at ``path``: a mapping of names to tensors, on the CPU.

    A ``{"state_dict": {...}}`` wrapper (what many training scripts save) is unwrapped. ``field_path`` is where the
    suite names the file (``victims.cnn.checkpoint``) and ``source`` the suite file; both start the error line.
    Raises AdvbenchError for a missing or unreadable file, for one torch cannot load with ``weights_only=True``
    (text, random bytes, a pickle of an object), and for one that loads as something else than a mapping of
    strings to tensors.
    """
    shown = str(path)
    where = f"{source}: {field_path}: {shown!r}"
    path = Path(path).expanduser()
    if not path.is_file():
        raise AdvbenchError(f"{where}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": not the user's concern
            state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise AdvbenchError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as exc:
        # torch's text for these suggests weights_only=False: never pass it on
        why = "empty or truncated file" if isinstance(exc, EOFError) else "not a tensor file torch can load safely"
        raise AdvbenchError(f"{where}: {why}; {EXPECTED}") from None
    except Exception:  # noqa: BLE001 - text files end in KeyError, others in RuntimeError, ValueError, ...
        raise AdvbenchError(f"{where}: not a tensor file torch can load safely; {EXPECTED}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AdvbenchError(f"{where}: holds a {type(state).__name__}, not a state dict; {EXPECTED}")
    if not state:
        raise AdvbenchError(f"{where}: an empty mapping, not a state dict; {EXPECTED}")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise AdvbenchError(f"{where}: entry {_short(name)} is a {type(value).__name__}, not a tensor; "
                                f"{EXPECTED}")
    return state


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
