"""Reading and editing representations.

    probes  linear probes (ridge, multinomial logistic) fitted for every layer / position
            in one vmapped call; control tasks and selectivity (Hewitt & Liang 2019)
    leace   LEACE concept erasure (Belrose et al. 2023): streaming fit, the eraser as an
            edit inside the forward pass, the oracle variant

Steering vectors and ROME are still to come (see the open issue).
"""

from . import leace, probes
from .leace import LeaceEraser, LeaceFitter, erase_edit, fit_leace
from .probes import ProbeResult, control_labels, fit_logistic, fit_ridge, probe

__all__ = [
    "LeaceEraser",
    "LeaceFitter",
    "ProbeResult",
    "control_labels",
    "erase_edit",
    "fit_leace",
    "fit_logistic",
    "fit_ridge",
    "leace",
    "probe",
    "probes",
]
