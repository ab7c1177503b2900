"""Reading and editing representations.

probes  linear probes (ridge, multinomial logistic) fitted for every layer / position
        in one vmapped call; control tasks and selectivity (Hewitt & Liang 2019)
leace   LEACE concept erasure (Belrose et al. 2023): streaming fit, the eraser as an
        edit inside the forward pass, the oracle variant
steering  steering vectors from contrast pairs (mean difference / ActAdd, the
        representation-engineering reading vector) and layer x coefficient sweeps
rome    rank-one model editing (Meng et al. 2022): the key, the optimised value,
        the closed-form update of an MLP's output matrix, efficacy scores

"""

from . import leace, probes, rome, steering
from .leace import LeaceEraser, LeaceFitter, erase_edit, fit_leace
from .probes import ProbeResult, control_labels, fit_logistic, fit_ridge, probe
from .steering import SteeringResult, contrast_vectors, steering_sweep

__all__ = [
    "LeaceEraser",
    "LeaceFitter",
    "ProbeResult",
    "SteeringResult",
    "contrast_vectors",
    "control_labels",
    "erase_edit",
    "fit_leace",
    "fit_logistic",
    "fit_ridge",
    "leace",
    "probe",
    "probes",
    "rome",
    "steering",
    "steering_sweep",
]
