#!/usr/bin/env python
"""Compare OOD scores on a model's own pooled features, to choose the one edge-convert embeds.

    trust_study.py RUN_DIR [--tflite MODEL] [--external DIR ...] [--json OUT]

Features come from RUN_DIR/model.keras (layer "pool"), or, with --tflite, from a float .tflite
(its GlobalAveragePool tensor, read with preserve_all_tensors). Every score is fit on the TRAIN
split and thresholded on the VAL split at 99% retention (finite-sample quantile). The choice
uses only the training lab's data: held-in test images (should be kept) against a proxy of
"not like the training images" built from the same lab and from generated frames: the test
images' Segmented versions (background removed), and uniform, noise, gradient and blurred
frames. The --external folders are reported for information only, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from leukedge.convert.trust_fit import (
    brier,
    conformal_quantile,
    expected_calibration_error,
    fit_mahalanobis,
    fit_temperature,
    ledoit_wolf,
    nll,
    softmax,
)
from leukedge.edge_app.imaging import is_image_file, load_rgb, prepare
from leukedge.train import dataset


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score of an outside frame > score of an inside one), ties counted half."""
    scores = np.concatenate([inside, outside])
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="mergesort")
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def generated_frames(size: int, val_pixels: np.ndarray, seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    frames = [
        np.full((size, size, 3), c, np.uint8)
        for c in [
            (0, 0, 0),
            (255, 255, 255),
            (128, 128, 128),
            (200, 170, 190),
            (230, 200, 210),
            (90, 60, 120),
        ]
    ]
    frames += [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(6)]
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    frames += [np.stack([np.tile(ramp, (size, 1))] * 3, axis=2).astype(np.uint8)]
    frames += [cv2.GaussianBlur(p, (0, 0), 12) for p in val_pixels[::20]]  # far out of focus
    return np.stack(frames)


class Features:
    def __init__(self, run: Path, tflite: Path | None):
        if tflite is None:
            import keras

            from leukedge.convert.trust_graph import features_and_logits

            model = keras.models.load_model(run / "model.keras", compile=False)
            self.size = int(model.input_shape[1])
            self.compute = lambda pixels: features_and_logits(model, pixels)
        else:
            from ai_edge_litert.interpreter import Interpreter

            it = Interpreter(model_path=str(tflite), experimental_preserve_all_tensors=True)
            it.allocate_tensors()
            details = it.get_tensor_details()
            pool = next(d["index"] for d in details if d["name"].endswith("pool_1/Mean"))
            logits = next(d["index"] for d in details if d["name"].endswith("BiasAdd"))
            inp = it.get_input_details()[0]["index"]
            self.size = int(it.get_input_details()[0]["shape"][1])

            def compute(pixels):
                f, g = [], []
                for p in pixels:
                    it.set_tensor(inp, p[None].astype(np.float32))
                    it.invoke()
                    f.append(it.get_tensor(pool)[0].copy())
                    g.append(it.get_tensor(logits)[0].copy())
                return np.array(f), np.array(g).reshape(len(g), -1)

            self.compute = compute


def scorers(f_train, y_train, labels, logits_train, dims=(16, 64, 128, 256)):
    means = np.stack([f_train[y_train == c].mean(axis=0) for c in range(len(labels))])
    out = {}
    for k in dims:
        fit = fit_mahalanobis(f_train, y_train, labels, k)
        out[f"mahalanobis top-{k}"] = fit.scores
    covariance, _ = ledoit_wolf(f_train - means[y_train])
    precision = np.linalg.inv(covariance)
    out["mahalanobis full (1280, shrunk)"] = lambda f: np.min(
        [np.einsum("ij,jk,ik->i", f - m, precision, f - m) for m in means], axis=0
    )
    # Relative Mahalanobis (Ren et al., 2021): class distance minus distance to one background Gaussian.
    background, _ = ledoit_wolf(f_train - f_train.mean(axis=0))
    bprec, bmean = np.linalg.inv(background), f_train.mean(axis=0)
    out["relative mahalanobis (full)"] = lambda f: (
        out["mahalanobis full (1280, shrunk)"](f)
        - np.einsum("ij,jk,ik->i", f - bmean, bprec, f - bmean)
    )
    out["euclidean to nearest mean"] = lambda f: np.min(
        [((f - m) ** 2).sum(axis=1) for m in means], axis=0
    )
    normed = f_train / np.linalg.norm(f_train, axis=1, keepdims=True)
    out["kNN cosine (k=10)"] = lambda f: (
        -np.sort((f / np.linalg.norm(f, axis=1, keepdims=True)) @ normed.T, axis=1)[:, -10]
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--tflite", type=Path)
    parser.add_argument("--split", type=Path)
    parser.add_argument("--data", type=Path, default=dataset.default_data_dir())
    parser.add_argument("--external", type=Path, nargs="*", default=[])
    parser.add_argument("--retention", type=float, default=0.99)
    parser.add_argument("--coverage", type=float, default=0.99)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--dims", type=int, nargs="*", default=[16, 64, 128, 256])
    args = parser.parse_args()
    source = Features(args.run, args.tflite)
    samples = dataset.read_split(args.split or args.run / "split.csv", args.data)
    labels = dataset.ordered_labels({s.label for s in samples})
    parts = {}
    for split in ("train", "val", "test"):
        chosen = [s for s in samples if s.split == split]
        pixels = dataset.load_pixels(chosen, args.data, source.size)
        parts[split] = (
            *source.compute(pixels),
            np.array([labels.index(s.label) for s in chosen]),
            pixels,
        )
        print(f"{split}: {len(chosen)} images", file=sys.stderr)
    segmented = [
        dataset.Sample(s.path.replace("Original/", "Segmented/", 1), "", s.label, "test")
        for s in samples
        if s.split == "test"
    ]
    proxy_pixels = np.concatenate(
        [
            dataset.load_pixels(segmented, args.data, source.size),
            generated_frames(source.size, parts["val"][3]),
        ]
    )
    proxy = source.compute(proxy_pixels)
    external = {}
    for folder in args.external:
        files = [p for p in sorted(folder.rglob("*")) if is_image_file(p)]
        pixels = np.stack([prepare(load_rgb(p), source.size) for p in files])
        external[folder.name] = source.compute(pixels)
    f_train, l_train, y_train, _ = parts["train"]
    methods = scorers(f_train, y_train, labels, l_train, args.dims)
    temperature = 1.0
    methods["energy (-logsumexp logits)"] = None
    methods["max softmax probability"] = None
    rows = []
    for name, score in methods.items():

        def s(feat_logits, name=name, score=score):
            f, g = feat_logits[0], feat_logits[1]
            if name.startswith("energy"):
                z = g / temperature
                return -(
                    np.log(np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)) + z.max(axis=1)
                )
            if name.startswith("max softmax"):
                return -softmax(g).max(axis=1)
            return score(f)

        val, test = s(parts["val"]), s(parts["test"])
        threshold = conformal_quantile(val, args.retention)
        row = {
            "method": name,
            "test_kept": float((test <= threshold).mean()),
            "proxy_auroc": auroc(test, s(proxy)),
            "proxy_flagged": float((s(proxy) > threshold).mean()),
        }
        for folder, fl in external.items():
            row[f"{folder}_auroc"] = auroc(test, s(fl))
            row[f"{folder}_flagged"] = float((s(fl) > threshold).mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    decision = simulate(parts, external, labels, args.coverage, args.retention)
    print(json.dumps(decision), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"methods": rows, "decision_float": decision}, indent=2) + "\n"
        )


def simulate(parts, external, labels, coverage: float, retention: float) -> dict:
    """The whole decision rule in float (numpy) on these features and logits: temperature on val,
    Mahalanobis (default subspace) on train, LAC and OOD thresholds on val; figures on test and
    on the external folders."""
    f_train, _, y_train, _ = parts["train"]
    f_val, l_val, y_val, _ = parts["val"]
    f_test, l_test, y_test, _ = parts["test"]
    temperature = fit_temperature(l_val, y_val)
    fit = fit_mahalanobis(f_train, y_train, labels)
    p_val = softmax(l_val, temperature)
    q = conformal_quantile(1 - p_val[np.arange(len(y_val)), y_val], coverage)
    t = conformal_quantile(fit.scores(f_val), retention)

    def outcome(f, g):
        p = softmax(g, temperature)
        sets = p >= 1 - q
        unknown = fit.scores(f) > t
        return p, sets, unknown, (sets.sum(1) == 1) & ~unknown

    before = softmax(l_test)
    p, sets, unknown, answered = outcome(f_test, l_test)
    right = p.argmax(1) == y_test
    covered = sets[np.arange(len(y_test)), y_test]
    result = {
        "temperature": temperature,
        "dims": fit.dims,
        "conformal_threshold": q,
        "ood_threshold": t,
        "test": {
            "n": int(len(y_test)),
            "ece_before": expected_calibration_error(before, y_test),
            "ece_after": expected_calibration_error(p, y_test),
            "nll_before": nll(before, y_test),
            "nll_after": nll(p, y_test),
            "brier_before": brier(before, y_test),
            "brier_after": brier(p, y_test),
            "coverage": float(covered.mean()),
            "mean_set_size": float(sets.sum(1).mean()),
            "per_class": {
                label: {
                    "coverage": float(covered[y_test == c].mean()),
                    "mean_set_size": float(sets[y_test == c].sum(1).mean()),
                }
                for c, label in enumerate(labels)
            },
            "unknown": float(unknown.mean()),
            "answered": float(answered.mean()),
            "answered_right": float(right[answered].mean()),
            "answered_wrong_n": int((answered & ~right).sum()),
        },
    }
    for name, (f, g) in external.items():
        _, _, unknown_e, answered_e = outcome(f, g)
        result[name] = {
            "n": int(len(f)),
            "answered": float(answered_e.mean()),
            "unknown": float(unknown_e.mean()),
            "auroc": auroc(fit.scores(f_test), fit.scores(f)),
        }
    return result


if __name__ == "__main__":
    main()
