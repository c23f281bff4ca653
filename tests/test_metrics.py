"""classification_metrics, behind every accuracy figure (training, conversion, edge-bench), pinned
by a confusion matrix worked out by hand rather than checked against itself."""

from __future__ import annotations

from fractions import Fraction as F

import pytest

from leukedge.train.metrics import classification_metrics, confusion_matrix

LABELS = ["A", "B", "C", "D"]
# Ten frames. Rows of the confusion matrix are true classes, columns predicted ones:
#            pred A  B  C  D    support
#   true A      3   1  0  0       4
#   true B      1   2  0  1       4
#   true C      0   0  2  0       2
#   true D      0   0  0  0       0   (never true, predicted once)
#   predicted   4   3  2  1
PAIRS = [(0, 0)] * 3 + [(0, 1)] + [(1, 0)] + [(1, 1)] * 2 + [(1, 3)] + [(2, 2)] * 2
Y_TRUE = [t for t, _ in PAIRS]
Y_PRED = [p for _, p in PAIRS]


def test_confusion_matrix_by_hand():
    assert confusion_matrix(Y_TRUE, Y_PRED, 4).tolist() == [
        [3, 1, 0, 0],
        [1, 2, 0, 1],
        [0, 0, 2, 0],
        [0, 0, 0, 0],
    ]


def test_metrics_by_hand():
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    assert m["n"] == 10 and m["labels"] == LABELS
    # accuracy: diagonal 3 + 2 + 2 = 7 of 10
    assert m["accuracy"] == pytest.approx(0.7)
    # precision = diagonal / column sum: A 3/4, B 2/3, C 2/2, D 0/1
    # recall = diagonal / row sum:       A 3/4, B 2/4, C 2/2, D 0 (no support)
    # F1 = 2PR / (P + R): A 3/4; B 2(2/3)(1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7; C 1; D 0
    expected = {
        "A": (F(3, 4), F(3, 4), F(3, 4), 4),
        "B": (F(2, 3), F(1, 2), F(4, 7), 4),
        "C": (F(1), F(1), F(1), 2),
        "D": (F(0), F(0), F(0), 0),
    }
    for label, (precision, recall, f1, support) in expected.items():
        got = m["per_class"][label]
        assert got["precision"] == pytest.approx(float(precision)), label
        assert got["recall"] == pytest.approx(float(recall)), label
        assert got["f1"] == pytest.approx(float(f1)), label
        assert got["support"] == support
    # macro: mean over the classes that occur in the truth (A, B, C; D has no support)
    #   precision (3/4 + 2/3 + 1) / 3 = 29/36;  recall (3/4 + 1/2 + 1) / 3 = 3/4
    #   F1 (3/4 + 4/7 + 1) / 3 = (21/28 + 16/28 + 28/28) / 3 = 65/84
    assert m["macro"]["precision"] == pytest.approx(29 / 36)
    assert m["macro"]["recall"] == pytest.approx(0.75)
    assert m["macro"]["f1"] == pytest.approx(65 / 84)
    # weighted by support 4, 4, 2, 0 of 10:
    #   precision 0.4(3/4) + 0.4(2/3) + 0.2(1) = 23/30;  recall 0.4(3/4) + 0.4(1/2) + 0.2 = 7/10
    #   F1 0.4(3/4) + 0.4(4/7) + 0.2 = 51/70
    assert m["weighted"]["precision"] == pytest.approx(23 / 30)
    assert m["weighted"]["recall"] == pytest.approx(0.7)
    assert m["weighted"]["f1"] == pytest.approx(51 / 70)
    assert m["confusion_matrix"][1] == [1, 2, 0, 1]


def test_perfect_and_empty_inputs():
    perfect = classification_metrics([0, 1, 2], [0, 1, 2], LABELS[:3])
    assert perfect["accuracy"] == 1.0 and perfect["macro"]["f1"] == 1.0
    empty = classification_metrics([], [], LABELS)
    assert empty["n"] == 0 and empty["accuracy"] == 0.0 and empty["macro"]["f1"] == 0.0
