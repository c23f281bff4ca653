"""A model's two outputs and its own decision rule, for evaluating many frames at once.

- `ModelOutputs`: the calibrated probabilities and, when the model computes one, its OOD score
  (the outputs named by the trust contract, `edge_app.trust`), from one invoke per frame.
- `trust_params`: the trust parameters a model carries (TFLite metadata file first, then its
  manifest entry), or None for an older model.
- `DecisionRule`: label / uncertain / unknown for each frame. With trust parameters it is the
  model's own rule (unknown above the OOD threshold, else label when the conformal set holds
  exactly one label, else uncertain); without, the app's legacy rule (top probability at least
  `min_confidence`, 0.80 by default). The rule's name says which, in every report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leukedge.edge_app import manifest as manifests
from leukedge.edge_app import metadata as tflite_metadata
from leukedge.edge_app.decision import LABEL, LEGACY_MIN_CONFIDENCE, UNCERTAIN, UNFIT
from leukedge.edge_app.runtime import Classifier
from leukedge.edge_app.trust import OOD_OUTPUT, PROBABILITIES_OUTPUT, TRUST_FILE, TrustParams

UNKNOWN = "unknown"  # out-of-distribution frames, as `edge_app.decision` names them
OUTCOMES = (LABEL, UNCERTAIN, UNKNOWN, UNFIT)
MAX_PROBABILITY_SCORE = "1 - max probability (the model has no OOD output)"


def trust_params(model: Path, classifier: Classifier | None = None) -> TrustParams | None:
    """The model's trust parameters: from the runtime if it exposes them, else the TRUST_FILE packed
    in the .tflite, else the `trust` entry of its variant in manifest.json; None when absent."""
    carried = getattr(classifier, "trust", None)
    if isinstance(carried, TrustParams):
        return carried
    packed = tflite_metadata.associated_files(Path(model).read_bytes()).get(TRUST_FILE)
    if packed is not None:
        return TrustParams.from_json(packed, f"{model} ({TRUST_FILE})")
    manifest = manifests.find(Path(model).parent)
    found = manifest.entry_for_file(Path(model).name) if manifest is not None else None
    if found is not None and isinstance(found[1].trust, dict):
        return TrustParams.from_dict(
            found[1].trust, f"{manifests.manifest_path(Path(model).parent)} ({found[0]})"
        )
    return None


def _dequantize(raw: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    if scale:
        return (raw.astype(np.float32) - zero_point) * scale
    return raw.astype(np.float32)


class ModelOutputs:
    """Probabilities and OOD score (None when the model has no such output) from one invoke."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        interpreter = classifier.interpreter
        details = interpreter.get_output_details()
        by_index = {d["index"]: d for d in details}
        named: dict[str, dict] = {}
        signatures = getattr(interpreter, "_get_full_signature_list", lambda: {})() or {}
        for signature in signatures.values():  # signature output names are the contract's names
            for name, index in (signature.get("outputs") or {}).items():
                if index in by_index:
                    named[name] = by_index[index]
        for detail in details:  # else the tensor names themselves
            for name in (PROBABILITIES_OUTPUT, OOD_OUTPUT):
                if name not in named and name in str(detail.get("name", "")):
                    named[name] = detail
        n_labels = len(classifier.labels)
        if (
            PROBABILITIES_OUTPUT not in named
        ):  # an older model: its one output (or the labels-wide one)
            wide = [d for d in details if int(d["shape"][-1]) == n_labels]
            named[PROBABILITIES_OUTPUT] = wide[0] if wide else details[0]
        if OOD_OUTPUT not in named:
            single = [
                d
                for d in details
                if d is not named[PROBABILITIES_OUTPUT] and int(np.prod(d["shape"])) == 1
            ]
            if single and len(details) == 2:
                named[OOD_OUTPUT] = single[0]
        self.probabilities_detail = named[PROBABILITIES_OUTPUT]
        self.ood_detail = named.get(OOD_OUTPUT)

    @property
    def has_ood(self) -> bool:
        return self.ood_detail is not None

    def run(self, prepared: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(probabilities, ood score or None) for one prepared uint8 RGB image (size x size x 3)."""
        classifier = self.classifier
        interpreter = classifier.interpreter
        interpreter.set_tensor(
            interpreter.get_input_details()[0]["index"], classifier.to_input(prepared)
        )
        interpreter.invoke()
        probabilities = _dequantize(
            interpreter.get_tensor(self.probabilities_detail["index"])[0], self.probabilities_detail
        )
        if self.ood_detail is None:
            return probabilities, None
        score = _dequantize(interpreter.get_tensor(self.ood_detail["index"]), self.ood_detail)
        return probabilities, float(np.ravel(score)[0])

    def run_all(self, prepared: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Stacked outputs for (n, size, size, 3) images: probabilities (n, classes), scores (n,) or None."""
        outputs = [self.run(image) for image in prepared]
        probabilities = (
            np.stack([p for p, _ in outputs])
            if outputs
            else np.zeros((0, len(self.classifier.labels)), np.float32)
        )
        if not self.has_ood:
            return probabilities, None
        return probabilities, np.array([s for _, s in outputs], dtype=np.float64)


def ood_scores(
    probabilities: np.ndarray, model_scores: np.ndarray | None
) -> tuple[np.ndarray, str]:
    """The OOD score used for AUROC: the model's own, else 1 - max probability (and which it is)."""
    if model_scores is not None:
        return np.asarray(model_scores, dtype=np.float64), "the model's ood_score output"
    return 1.0 - np.asarray(probabilities, dtype=np.float64).max(axis=1), MAX_PROBABILITY_SCORE


@dataclass(frozen=True)
class DecisionRule:
    """label / uncertain / unknown per frame, by the model's trust parameters or the legacy rule."""

    trust: TrustParams | None
    min_confidence: float = LEGACY_MIN_CONFIDENCE

    @property
    def name(self) -> str:
        if self.trust is None:
            return (
                f"legacy min-confidence {self.min_confidence:.2f} (model has no trust parameters)"
            )
        conformal, ood = self.trust.conformal, self.trust.ood
        return f"conformal-{conformal.method}@{conformal.target_coverage:g}+ood-{ood.method}"

    def decide(
        self, probabilities: np.ndarray, scores: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(kinds (n,) of LABEL/UNCERTAIN/UNKNOWN, answered label index (n,), -1 where not answered)."""
        p = np.asarray(probabilities, dtype=np.float64)
        n = len(p)
        kinds = np.full(n, UNCERTAIN, dtype=object)
        answer = np.full(n, -1, dtype=np.int64)
        if self.trust is None:
            top = p.argmax(axis=1) if n else np.zeros(0, np.int64)
            sure = p.max(axis=1) >= self.min_confidence if n else np.zeros(0, bool)
            kinds[sure] = LABEL
            answer[sure] = top[sure]
            return kinds, answer
        if scores is None:
            raise ValueError(
                "the model carries trust parameters but no ood_score output: "
                "re-convert it with edge-convert"
            )
        for i in range(n):
            if self.trust.ood.is_unknown(scores[i]):
                kinds[i] = UNKNOWN
                continue
            members = self.trust.conformal.prediction_set(p[i])
            if len(members) == 1:
                kinds[i], answer[i] = LABEL, members[0]
        return kinds, answer


def outcome_shares(kinds: np.ndarray) -> dict[str, float]:
    n = len(kinds)
    return {kind: (float(np.mean(kinds == kind)) if n else 0.0) for kind in OUTCOMES}
