"""Classify images with MediaPipe Tasks' ImageClassifier; one JSON line per image.

Run by tests/test_convert_consumer.py with the interpreter of an isolated environment that has
`mediapipe` (it cannot share one with TensorFlow 2.21). Usage:
    python mediapipe_classify.py MODEL.tflite IMAGE...
"""

import json
import sys

import mediapipe as mp
from mediapipe.tasks import python as mp_python
from mediapipe.tasks.python import vision

model_path, *image_paths = sys.argv[1:]
options = vision.ImageClassifierOptions(
    base_options=mp_python.BaseOptions(model_asset_path=model_path), max_results=-1
)
with vision.ImageClassifier.create_from_options(options) as classifier:
    for path in image_paths:
        categories = (
            classifier.classify(mp.Image.create_from_file(path)).classifications[0].categories
        )
        print(
            json.dumps(
                {
                    "path": path,
                    "top": categories[0].category_name,
                    "scores": {c.category_name: c.score for c in categories},
                }
            )
        )
