"""The typed contract of a run's results.json, and its published JSON Schema.

``Results`` describes results.json as ``run_suite`` writes it (docs/DESIGN.md, "results.json"). Every model
allows extra fields: a plugin or a later advbench may add a column or a section, and a reader that does not
know it keeps it. Known fields are typed; ``Optional`` marks a field that may be null (a figure that does not
apply), a default marks one an older results.json may lack.

``schema_version`` is a semantic version, MAJOR.MINOR:

- MINOR goes up when results.json gains something a reader may ignore: a new field, row column or section.
  A reader written for 1.0 reads every 1.x file.
- MAJOR goes up when a reader written for the previous version could misread the file: a field removed,
  renamed or retyped, a field's meaning changed, a new value in a closed set (``subset``, ``population``),
  or a field becoming nullable.

A results.json written before the field existed carries none; it loads as ``schema_version == "0"``.

docs/results.schema.json is generated from these models, and a test checks it is up to date::

    python -m advbench.results > docs/results.schema.json
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = "1.5"  # 1.1: attack rows record their threat model; security, sanity_checks, comparisons
# 1.2: seeds, rows' seed, seed_summary; evaluation's split (n_validation, split_seed, indices); validation,
# sweep_choice; 1.3: unseen, rows' protocol and fit_attack, interpreters' accuracy_match, controls; 1.4: host's
# batch_size (the one the run used, batch_size: auto resolved) and batch_size_requested; 1.5: stage records' forwards
PRE_SCHEMA_VERSION = "0"  # what a results.json written before schema_version existed loads as

__all__ = ["SCHEMA_VERSION", "Results", "VictimRow", "InterpreterRow", "AttackRow", "DetectionRow", "WorstCaseRow",
           "SecurityRow", "SanityCheck", "Comparison", "SeedSummaryRow", "SweepChoice", "StageRecord", "PluginRow",
           "validate_results", "json_schema"]


class Row(BaseModel):
    """Base of every model here: unknown fields are kept, so plugins and later versions can add columns."""

    model_config = ConfigDict(extra="allow")


Sweep = dict[str, Any]  # a swept field's path -> its value at this point


class Host(Row):
    cpus: Optional[int] = None
    torch_threads: Optional[int] = None
    batch_size: Optional[int] = Field(None, description="the batch size the run used (batch_size: auto resolved)")
    batch_size_requested: Optional[str] = Field(None, description="'auto' where the suite asked for it; absent when "
                                                "it named the number")
    cuda_device: Optional[str] = Field(None, description="the GPU's name, or null on CPU")


class PluginRow(Row):
    """One registered component (results.json ``plugins``)."""

    kind: str
    name: str
    distribution: Optional[str] = None
    version: Optional[str] = None


class StageRecord(Row):
    """One stage the run went through (results.json ``stages``)."""

    stage: str
    label: str
    seconds: float
    cached: bool
    # images each model forwarded per image set in this stage, keyed "<model node key>|<image set>" (the set as
    # "<name>[<n images>]@<digest>"): f1, g and f2 passes the harness makes; empty for a cached stage
    forwards: dict[str, int] = Field(default_factory=dict)


class Dataset(Row):
    plugin: str
    classes: list[str]
    n_train: int
    n_test: int


class Evaluation(Row):
    n_eval: int
    n_fit: int
    n_calibration: Optional[int] = Field(None, description="benign images the thresholds are chosen on")
    benign: Optional[Literal["natural", "paired"]] = Field(
        None, description="the detection rows' negatives: every evaluation image, or the adversarial inputs' originals")
    benign_pairing: Optional[str] = None
    n_validation: Optional[int] = Field(None, description="images a sweep chooses its point on (0 without a sweep)")
    split_seed: Optional[int] = Field(None, description="the seed of the test images' order the splits are cut from")
    indices: Optional[dict[str, list[int]]] = Field(
        None, description="test set indices of each split: eval, fit, calibration, validation (disjoint)")


class VictimRow(Row):
    """One victim (results.json ``victims``, keyed by the victim's suite name)."""

    plugin: str
    clean_accuracy: Optional[float]


class AccuracyMatch(Row):
    """How an f2 trained to another f2's accuracy (``match_accuracy``) got there, on the calibration images."""

    to: str = Field(description="the interpreter whose f2 it was matched to")
    target_accuracy: float = Field(description="that f2's accuracy on the calibration images")
    accuracy: float = Field(description="this f2's accuracy on the same images, as trained")
    n_images: int
    epochs: Optional[int] = Field(description="the epoch training stopped after; null: trained in full without "
                                              "reaching the target")
    stopped: bool


class InterpreterRow(Row):
    """One (victim, interpreter): f2's accuracy on the victim's masks."""

    victim: str
    interpreter: str
    plugin: str
    mask_classifier: Optional[str] = None
    mask_classifier_accuracy: Optional[float] = Field(description="f2's accuracy on benign test masks")
    majority_class_share: Optional[float] = Field(None, description="share of benign masks f2 gives its most "
                                                                    "frequent label")
    n_accuracy_masks: Optional[int] = None
    n_train_masks: Optional[int] = None
    mask_channels: Optional[int] = None
    accuracy_match: Optional[AccuracyMatch] = Field(None, description="for an f2 trained to another's accuracy "
                                                    "(match_accuracy)")
    sweep: Optional[Sweep] = None
    seed: Optional[int] = Field(None, description="the training seed, in a suite with seeds")


class ThreatModelRow(Row):
    """The threat model an attack ran under (the suite's ``threat_model``, resolved for that attack)."""

    norm: str = Field(description="linf, l2 or l0")
    eps: Optional[float] = Field(description="the budget in that norm; null: unbounded")
    quantize: Optional[bool] = Field(None, description="outputs rounded onto the data's intensity grid")
    targeted: Optional[bool] = Field(None, description="success means reaching a harness-drawn target label")
    levels: Optional[int] = Field(None, description="the data's grid: intensities are multiples of 1/levels")


class AttackRow(Row):
    """One (attack, source victim) on the evaluation images."""

    attack: str
    plugin: str
    norm: Optional[str] = None
    source: str
    n: int
    n_correct: Optional[int] = None
    n_success: int
    success_rate: Optional[float]
    success_rate_correct: Optional[float] = Field(None, description="n_success / n_correct: of the inputs the "
                                                                    "victim classified correctly, the share fooled")
    transfer: Optional[dict[str, dict[str, Any]]] = Field(
        None, description="per other victim these inputs were evaluated against: n_target_correct, n_fools_target, "
                          "fools_target_rate and transfer_rate (of the inputs fooling the source, the share fooling "
                          "the target too)")
    threat_model: Optional[ThreatModelRow] = None
    eps: Optional[float] = Field(None, description="the threat model's budget (null: unbounded)")
    quantization_undone: Optional[int] = Field(None, description="inputs the attack's raw output fooled that the "
                                               "quantised (submitted) image does not: counted as failures")
    mean_linf: Optional[float]
    mean_l2: Optional[float]
    mean_l0: Optional[float]
    median_linf: Optional[float] = None
    median_l2: Optional[float] = None
    median_l0: Optional[float] = None
    l0_unit: Optional[str] = None
    sweep: Optional[Sweep] = None
    seed: Optional[int] = Field(None, description="the training seed, in a suite with seeds")


class Roc(Row):
    fpr: list[float]
    tpr: list[float]


class OperatingPoint(Row):
    fpr: Optional[float]
    tpr: Optional[float]


class Metrics(Row):
    """What advbench.metrics.detection_metrics returns; null where a figure does not apply."""

    n_adversarial: Optional[int] = None
    n_benign: Optional[int] = None
    auroc: Optional[float]
    tpr: Optional[float]
    tnr: Optional[float]
    tpr_at_fpr_1: Optional[float] = None
    tpr_at_fpr_5: Optional[float] = None
    tpr_at_fpr_10: Optional[float] = None
    tnr_at_tpr_90: Optional[float] = None
    tnr_at_tpr_95: Optional[float] = None
    roc: Optional[Roc] = None
    operating_point: Optional[OperatingPoint] = Field(None, description="{fpr, tpr} at the detector's own "
                                                                        "flags; null without flags")
    tpr_ci: Optional[list[float]] = Field(None, description="Wilson 95% interval of tpr")
    tnr_ci: Optional[list[float]] = Field(None, description="Wilson 95% interval of tnr")
    auroc_ci: Optional[list[float]] = Field(None, description="DeLong 95% interval of auroc")


class CalibratedPoint(Row):
    """A detector read at a threshold chosen on the calibration images for a target FPR."""

    target_fpr: float
    threshold: Optional[float] = Field(description="a score strictly above it is flagged; null when infinite")
    n_calibration: int
    calibration_fpr: Optional[float] = None
    tpr: Optional[float] = None
    tpr_ci: Optional[list[float]] = None
    fpr: Optional[float] = Field(None, description="on the evaluation's benign inputs")
    fpr_ci: Optional[list[float]] = None


class DetectionRow(Metrics):
    """One (detector, interpreter, attack, source, target, subset, population)."""

    detector: str
    interpreter: Optional[str] = Field(description="null for a detector that needs no interpreter")
    attack: str
    source: str
    target: str
    subset: Literal["all", "filtered"]
    population: Literal["successful", "attacked", "fools-target"] = Field(
        description="successful: fools the source victim; attacked: every attacked input; fools-target (transfer "
                    "rows): the target victim classifies the clean image right and the adversarial one wrong")
    n_adversarial: int
    n_benign: int
    knowledge: Literal["oblivious", "adaptive"] = Field(
        "oblivious", description="adaptive: the adversarial inputs were crafted against this detector")
    benign_population: Optional[Literal["natural", "paired"]] = None
    protocol: Optional[Literal["seen", "unseen"]] = Field(
        None, description="for a detector fitted on adversarial examples: seen = fitted on this row's attack, "
                          "unseen = fitted on fit_attack and tested on another; null for one fitted on benign data")
    fit_attack: Optional[str] = Field(None, description="the attack whose adversarial examples fitted the detector")
    mask_invariance: Optional[float] = None
    recovery_rate: Optional[float] = None
    score_definition: Optional[str] = None
    sweep: Optional[Sweep] = None
    seed: Optional[int] = Field(None, description="the training seed, in a suite with seeds")
    calibrated: Optional[dict[str, Optional[CalibratedPoint]]] = Field(
        None, description="fpr_1, fpr_5, fpr_10: TPR/FPR at thresholds chosen on held-out benign images")


class WorstCaseRow(Metrics):
    """One detector's worst case over the attacks (MEAD-style) on one (source, target)."""

    detector: str
    interpreter: Optional[str]
    source: str
    target: str
    subset: Literal["all", "filtered"]
    n_pairs: int
    fit_attack: Optional[str] = Field(None, description="for a detector fitted on adversarial examples: the attack "
                                      "its one model was fitted on (evaluation.unseen_fit)")
    sweep: Optional[Sweep] = None
    seed: Optional[int] = Field(None, description="the training seed, in a suite with seeds")


class SecurityRow(Row):
    """One (detector, attack, knowledge, eps) on one target victim: attack success with and without the detector.

    Rates are over the n_correct inputs the target victim classified correctly; an input is flagged when its
    score is strictly above ``threshold``. Intervals are Wilson 95%. Metrics are null where status is not "ok".
    """

    detector: str
    interpreter: Optional[str] = Field(description="null for a detector that needs no interpreter")
    target: str
    source: str = Field(description="the victim the attack was crafted on; = target for a white-box attack")
    attack: str
    attack_plugin: str
    knowledge: str = Field(description='"oblivious": crafted on the victim alone; "adaptive": against the detector '
                                       "too")
    norm: Optional[str]
    eps: Optional[float] = Field(description="null for an unbounded attack")
    threat_model: ThreatModelRow
    steps: Optional[int] = Field(description="the attack's iterations; null where it has none")
    gradient: Optional[str] = Field(description='how the attack differentiates the defence: "exact", "bpda", "eot"')
    fit_attack: Optional[str] = Field(description="the attack the detector was fitted on; null if none")
    threshold: Optional[float] = Field(description="chosen at fpr on held-out benign images; null when not "
                                                   "computed or infinite")
    fpr: Optional[float]
    status: str = Field(description='"ok", or why the cell has no numbers: "unsupported" (the defence lacks what '
                                    'the attack needs), "not-applicable" (no such cell by design), "failed"')
    reason: Optional[str] = Field(None, description="one sentence, where status is not ok")
    n: Optional[int]
    n_correct: Optional[int] = Field(description="inputs the target classifies correctly before the attack")
    n_misclassified: Optional[int] = Field(description="of those, misclassified after it")
    n_evaded: Optional[int] = Field(description="of those, not flagged by the detector")
    success_rate: Optional[float] = Field(description="n_misclassified / n_correct: success ignoring the detector")
    success_rate_ci: Optional[list[float]] = None
    success_under_detection: Optional[float] = Field(description="n_evaded / n_correct")
    success_under_detection_ci: Optional[list[float]] = None
    robust_accuracy_detection_aware: Optional[float] = Field(description="1 - success_under_detection: correct and "
                                                                         "either still correct or flagged")
    robust_accuracy_detection_aware_ci: Optional[list[float]] = None
    detected_share: Optional[float] = Field(description="flagged among the misclassified adversarial inputs")
    detected_share_ci: Optional[list[float]] = None
    sweep: Optional[Sweep] = None
    seed: Optional[int] = Field(None, description="the training seed, in a suite with seeds")


class SanityCheck(Row):
    """One sanity check of the security rows (advbench.security.sanity_checks)."""

    check: str = Field(description='"eps-growth", "more-steps" or "transfer-vs-whitebox"')
    outcome: Literal["pass", "fail", "not-applicable"]
    scope: dict[str, Any] = Field(description="the identifying fields the compared rows share")
    detail: str = Field(description="one sentence with the numbers")
    sweep: Optional[Sweep] = None
    seed: Optional[int] = Field(None, description="the training seed, in a suite with seeds")


class SameInputs(Row):
    """The set of inputs two detectors are read on, for a paired test: attack set, pair, subset, population."""

    attack: str
    source: str
    target: str
    subset: Literal["all", "filtered"]
    population: str


class Comparison(SameInputs):
    """The best detector by AUROC on one set of inputs against another detector read on the same inputs."""

    best: str = Field(description="detector[/interpreter] with the highest AUROC on these inputs")
    other: str
    auroc_best: Optional[float] = None
    auroc_other: Optional[float] = None
    delta: Optional[float] = Field(None, description="AUROC best - other")
    delta_ci: Optional[list[Optional[float]]] = Field(None, description="DeLong's paired 95% interval of delta")
    p_value: Optional[float] = None
    significant: bool = Field(description="the interval excludes 0: best beyond noise")
    sweep: Optional[Sweep] = None
    seed: Optional[int] = Field(None, description="the training seed, in a suite with seeds")


class ControlComparison(SameInputs):
    """An interpretation-based detector against a control (label-only, msp, the contrastive rule on raw pixels)
    read on the same inputs: DeLong's paired test of the AUROC difference."""

    detector: str = Field(description="detector/interpreter")
    control: str = Field(description="the control detector[/interpreter]")
    auroc: Optional[float] = None
    auroc_control: Optional[float] = None
    delta: Optional[float] = Field(None, description="AUROC detector - control")
    delta_ci: Optional[list[Optional[float]]] = Field(None, description="DeLong's paired 95% interval of delta")
    p_value: Optional[float] = None
    significant: bool
    verdict: Literal["beats", "within noise", "worse"]
    sweep: Optional[Sweep] = None
    seed: Optional[int] = Field(None, description="the training seed, in a suite with seeds")


class FailedCell(Row):
    """A node whose plugin broke its output contract or raised: the grid went on without it and its dependents."""

    stage: str
    label: str
    error: str = Field(description="one line: the plugin's kind, name, distribution and what was wrong")
    skipped: list[str] = Field(default_factory=list, description="labels of the stages that needed it")


class Point(Row):
    """One sweep point or seed: its values and its victims (a swept field or a seed changes a victim)."""

    sweep: Sweep = Field(description="{} for a seed of a suite without a sweep")
    seed: Optional[int] = Field(None, description="the training seed, in a suite with seeds")
    victims: dict[str, VictimRow] = Field(default_factory=dict)


class SeedSummaryRow(Row):
    """One figure of one row identity across the seeds (advbench.seeds). The identity fields are those of the
    section the figure comes from (victims: victim; interpreters: victim, interpreter; detection and security:
    detector, interpreter, attack, knowledge, source, target, and for detection subset and population)."""

    section: Literal["victims", "interpreters", "detection", "security"]
    metric: str = Field(description="clean_accuracy, mask_classifier_accuracy, auroc, tpr_cal_5, fpr_cal_5 or "
                                    "success_under_detection")
    n_seeds: int = Field(description="seeds where the figure was computed")
    mean: float
    std: Optional[float] = Field(description="sample standard deviation (n - 1); null for one seed")
    min: float
    max: float
    seeds: list[int]
    values: list[float] = Field(description="the figure at each of seeds, in that order")
    sweep: Optional[Sweep] = None


class SweepChoice(Row):
    """The sweep point one (detector, interpreter, attack, source, target) reports: the best by validation AUROC
    (advbench.selection), read on the evaluation images."""

    detector: str
    interpreter: Optional[str]
    attack: str
    source: str
    target: str
    subset: str
    population: str
    sweep: Sweep = Field(description="the chosen point")
    n_points: int = Field(description="points compared")
    tied: bool = Field(False, description="every compared point had the same validation AUROC: the first is "
                                          "recorded, but nothing was chosen")
    validation_auroc: float
    validation_n_adversarial: Optional[int] = None
    validation_n_benign: Optional[int] = None
    evaluation_auroc: Optional[float] = Field(description="the chosen point's AUROC on the evaluation images")
    evaluation_auroc_ci: Optional[list[float]] = Field(None, description="DeLong 95% interval of evaluation_auroc")


class Results(Row):
    """A run folder's results.json."""

    schema_version: str = Field(SCHEMA_VERSION, pattern=r"^\d+(\.\d+)*$",
                                description='MAJOR.MINOR (see advbench/results.py); "0" for a results.json '
                                            "written before the field existed")
    suite: str
    suite_file: Optional[str] = None
    description: Optional[str] = None
    command: Optional[str] = None
    advbench_version: str
    seed: int = Field(description="the run's seed; with seeds, the first of them, which also splits the images")
    seeds: Optional[list[int]] = Field(None, description="the training seeds the grid ran with (suite seeds)")
    device: str
    torch_version: Optional[str] = None
    python_version: Optional[str] = None
    started: str = Field(description="ISO 8601, UTC")
    finished: Optional[str] = Field(None, description="ISO 8601, UTC; absent while a sweep is still running")
    wall_seconds: Optional[float] = None
    git_commit: Optional[str] = Field(None, description="the checkout's commit, '+dirty' when it had uncommitted "
                                                        "changes; null outside git")
    host: Optional[Host] = None
    limit: Optional[int] = Field(None, description="--limit, or null")
    complete: bool
    missing: list[str] = Field(default_factory=list, description="stages that did not finish")
    failed: list[FailedCell] = Field(default_factory=list, description="cells whose plugin failed")
    plugins: list[PluginRow] = Field(default_factory=list)
    sweep_fields: list[str] = Field(default_factory=list)
    sweep_base: dict[str, Any] = Field(default_factory=dict, description="the suite's own value of each swept "
                                                                         "field")
    paper_reference: Optional[dict[str, Any]] = None
    dataset: Optional[Dataset] = None
    evaluation: Optional[Evaluation] = None
    victims: dict[str, VictimRow] = Field(default_factory=dict)
    interpreters: list[InterpreterRow] = Field(default_factory=list)
    attacks: list[AttackRow] = Field(default_factory=list)
    detection: list[DetectionRow] = Field(default_factory=list)
    unseen: Optional[list[DetectionRow]] = Field(
        None, description="detectors fitted on adversarial examples of one attack (fit_attack), tested on the "
                          "others; only where a suite has such a detector and two or more attacks")
    controls: Optional[list[ControlComparison]] = Field(
        None, description="every interpretation-based detector against every control on the same inputs; only "
                          "where a suite has both")
    worst_case: list[WorstCaseRow] = Field(default_factory=list)
    security: list[SecurityRow] = Field(default_factory=list, description="attack success under detection")
    comparisons: list[Comparison] = Field(default_factory=list, description="paired AUROC tests: best detector "
                                          "against each other one on the same inputs")
    sanity_checks: list[SanityCheck] = Field(default_factory=list, description="checks that catch a broken "
                                                                               "evaluation; failures are in warnings")
    warnings: list[str] = Field(default_factory=list)
    stages: list[StageRecord] = Field(default_factory=list)
    points: Optional[list[Point]] = Field(None, description="each sweep point's (and seed's) victims; only in a "
                                                            "sweep or with seeds")
    validation: Optional[list[DetectionRow]] = Field(
        None, description="detection rows on the validation images (subset all); only in a sweep")
    sweep_choice: Optional[list[SweepChoice]] = Field(None, description="per detection cell, the sweep point "
                                                      "chosen on validation AUROC; only in a sweep")
    seed_summary: Optional[list[SeedSummaryRow]] = Field(None, description="mean and spread across seeds; only "
                                                         "with seeds")

    @model_validator(mode="before")
    @classmethod
    def _pre_schema(cls, data: Any) -> Any:
        if isinstance(data, dict) and "schema_version" not in data:
            data = {"schema_version": PRE_SCHEMA_VERSION, **data}
        return data


def _in_order(dumped: Any, original: Any) -> Any:
    """``dumped`` with its dict keys in ``original``'s order (keys ``original`` lacks go last)."""
    if isinstance(dumped, dict) and isinstance(original, dict):
        ordered = {k: _in_order(dumped[k], original[k]) for k in original if k in dumped}
        ordered.update((k, v) for k, v in dumped.items() if k not in ordered)
        return ordered
    if isinstance(dumped, list) and isinstance(original, list) and len(dumped) == len(original):
        return [_in_order(d, o) for d, o in zip(dumped, original)]
    return dumped


def validate_results(d: dict[str, Any]) -> dict[str, Any]:
    """Validate a results dict about to be written and return the JSON-mode dump to write.

    ``d`` must be plain JSON data (what json.loads gives). A ``d`` without ``schema_version`` is this version's
    writer's output, so it gets ``SCHEMA_VERSION`` as its first key. The dump keeps ``d``'s keys and their order
    (a field ``d`` leaves out is not filled with its default) and every extra field. Raises
    pydantic.ValidationError when ``d`` breaks the contract.
    """
    if "schema_version" not in d:
        d = {"schema_version": SCHEMA_VERSION, **d}
    model = Results.model_validate(d)
    return _in_order(model.model_dump(mode="json", exclude_unset=True), d)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of results.json (draft 2020-12), as committed in docs/results.schema.json."""
    schema = Results.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def main() -> None:
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


if __name__ == "__main__":
    main()
