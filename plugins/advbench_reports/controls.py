"""Controls: detectors that are baselines rather than methods, and where the report puts them.

The label-only detector flags an input on the victim's predicted label alone, so a method whose AUROC is
close to label-only's has learned nothing beyond the label. Report sections list methods first and a
control last, mark its rows and draw it hollow. Another control is one more entry in ``CONTROLS``.
"""

from __future__ import annotations

from advbench.report.format import NA

# detector name -> what it does, as the page says it
CONTROLS = {"label-only": "it flags on the victim's label alone",
            "msp": "it scores the victim's own confidence alone"}


def is_control(detector: str) -> bool:
    return detector in CONTROLS


def rank(detector: str, interpreter: str) -> int:
    """Interpretation-based detectors (the contrastive detector) first, other methods next, controls last."""
    if is_control(detector):
        return 2
    return 0 if interpreter != NA else 1


def control_note(detectors: list[str]) -> str:
    """"; label-only is the control: it flags on the victim's label alone" for the controls among ``detectors``."""
    controls = [d for d in dict.fromkeys(detectors) if is_control(d)]
    if not controls:
        return ""
    names = " and ".join(controls)
    what = "; ".join(CONTROLS[d] for d in controls)
    return f"; {names} {'is the control' if len(controls) == 1 else 'are the controls'}: {what}"
