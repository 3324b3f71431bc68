"""Labelled traffic simulator: baseline orders plus injected incidents and benign surprises.

from detector.simulate import ScenarioParams, generate
sc = generate(ScenarioParams.from_seed(7, hours=24))
for event in sc.events: ...      # CONTRACT §1 dicts in ts order
sc.truth                         # list[Incident]; sc.campaigns: declarations
"""

from detector.simulate.base import Incident
from detector.simulate.incidents import BENIGN_KINDS, INCIDENT_KINDS
from detector.simulate.scenario import (
    Scenario,
    ScenarioParams,
    campaigns_yaml,
    generate,
    write_jsonl,
    write_truth,
)

__all__ = [
    "BENIGN_KINDS",
    "INCIDENT_KINDS",
    "Incident",
    "Scenario",
    "ScenarioParams",
    "campaigns_yaml",
    "generate",
    "write_jsonl",
    "write_truth",
]
