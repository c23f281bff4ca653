"""Read and write TFLite Model Metadata (the format MediaPipe Tasks, the TFLite Task Library and
Android Studio ML Model Binding read), with the official generated FlatBuffers classes.

Layout, as tflite-support's MetadataPopulator writes it: a `ModelMetadata` flatbuffer (file
identifier "M001") stored in a model buffer named by the model's `metadata` entry
"TFLITE_METADATA"; associated files (labels.txt) appended to the .tflite as a zip archive, which
the TFLite runtimes ignore and the metadata extractors open.

Reading needs only `flatbuffers`, so the Pi uses this too. Writing (`with_metadata`) takes the
model re-serialised by the caller's own TFLite schema classes, so fields newer than the
vendored schema are never dropped; see convert/metadata.py.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import flatbuffers

from leukedge.edge_app._vendor import metadata_schema_py_generated as meta_fb
from leukedge.edge_app._vendor import schema_py_generated as model_fb

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
# Oldest metadata parser that understands every field written below (ImageProperties,
# NormalizationOptions, Stats, TENSOR_AXIS_LABELS files are all schema 1.0.0).
MIN_PARSER_VERSION = "1.0.0"


@dataclass
class ModelMetadata:
    """What a classifier's metadata says; the runtime's view of the contract."""

    name: str
    description: str = ""
    version: str = ""
    author: str = ""
    license: str = ""
    labels: list[str] = field(default_factory=list)
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    input_min: list[float] = field(default_factory=lambda: [0.0])
    input_max: list[float] = field(default_factory=lambda: [255.0])
    input_description: str = ""
    output_description: str = ""
    label_file: str = "labels.txt"
    # A second output (the OOD score) gets its own tensor metadata when this is set.
    score_output: str = ""
    score_description: str = ""
    # Model-level associated files other than the labels (e.g. the trust parameters): name -> description.
    model_files: dict[str, str] = field(default_factory=dict)


def is_tflite(data: bytes) -> bool:
    return len(data) >= 8 and data[4:8] == MODEL_IDENTIFIER


def associated_files(data: bytes) -> dict[str, bytes]:
    """The files packed after the model (name -> content); empty when there are none."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {name: archive.read(name) for name in archive.namelist()}
    except zipfile.BadZipFile:
        return {}


def metadata_buffer(data: bytes) -> bytes | None:
    """The raw ModelMetadata flatbuffer inside a .tflite, or None."""
    model = model_fb.Model.GetRootAsModel(data, 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name() and entry.Name().decode() == METADATA_NAME:
            buffer = model.Buffers(entry.Buffer())
            return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else None
    return None


def read_metadata(data: bytes) -> ModelMetadata | None:
    """Parse the metadata of a .tflite held in memory; None when it has none."""
    raw = metadata_buffer(data)
    if raw is None:
        return None
    root = meta_fb.ModelMetadata.GetRootAsModelMetadata(raw, 0)
    text = lambda value: value.decode() if value else ""  # noqa: E731
    result = ModelMetadata(
        name=text(root.Name()),
        description=text(root.Description()),
        version=text(root.Version()),
        author=text(root.Author()),
        license=text(root.License()),
    )
    for file_index in range(root.AssociatedFilesLength()):
        associated = root.AssociatedFiles(file_index)
        result.model_files[text(associated.Name())] = text(associated.Description())
    if not root.SubgraphMetadataLength():
        return result
    subgraph = root.SubgraphMetadata(0)
    if subgraph.InputTensorMetadataLength():
        tensor = subgraph.InputTensorMetadata(0)
        result.input_description = text(tensor.Description())
        for unit_index in range(tensor.ProcessUnitsLength()):
            unit = tensor.ProcessUnits(unit_index)
            if unit.OptionsType() == meta_fb.ProcessUnitOptions.NormalizationOptions:
                options = meta_fb.NormalizationOptions()
                options.Init(unit.Options().Bytes, unit.Options().Pos)
                result.mean = options.MeanAsNumpy().tolist()
                result.std = options.StdAsNumpy().tolist()
        stats = tensor.Stats()
        if stats is not None and stats.MinLength():
            result.input_min = stats.MinAsNumpy().tolist()
            result.input_max = stats.MaxAsNumpy().tolist()
    if subgraph.OutputTensorMetadataLength():
        tensor = subgraph.OutputTensorMetadata(0)
        result.output_description = text(tensor.Description())
        files = associated_files(data)
        for file_index in range(tensor.AssociatedFilesLength()):
            associated = tensor.AssociatedFiles(file_index)
            if associated.Type() == meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS:
                result.label_file = text(associated.Name())
                content = files.get(result.label_file, b"").decode()
                result.labels = [line.strip() for line in content.splitlines() if line.strip()]
    if subgraph.OutputTensorMetadataLength() > 1:
        score = subgraph.OutputTensorMetadata(1)
        result.score_output, result.score_description = (
            text(score.Name()),
            text(score.Description()),
        )
    return result


def metadata_flatbuffer(info: ModelMetadata) -> bytes:
    """Serialise `info` as an image classifier's ModelMetadata ("M001")."""
    image = meta_fb.ImagePropertiesT()
    image.colorSpace = meta_fb.ColorSpaceType.RGB
    normalization = meta_fb.NormalizationOptionsT()
    normalization.mean, normalization.std = list(info.mean), list(info.std)
    unit = meta_fb.ProcessUnitT()
    unit.optionsType = meta_fb.ProcessUnitOptions.NormalizationOptions
    unit.options = normalization
    input_stats = meta_fb.StatsT()
    input_stats.min, input_stats.max = list(info.input_min), list(info.input_max)

    input_meta = meta_fb.TensorMetadataT()
    input_meta.name = "image"
    input_meta.description = info.input_description
    input_meta.content = meta_fb.ContentT()
    input_meta.content.contentProperties = image
    input_meta.content.contentPropertiesType = meta_fb.ContentProperties.ImageProperties
    input_meta.processUnits = [unit]
    input_meta.stats = input_stats

    labels = meta_fb.AssociatedFileT()
    labels.name = info.label_file
    labels.description = "Class labels, one per line, in output order."
    labels.type = meta_fb.AssociatedFileType.TENSOR_AXIS_LABELS
    output_stats = meta_fb.StatsT()
    output_stats.min, output_stats.max = [0.0], [1.0]
    output_meta = meta_fb.TensorMetadataT()
    output_meta.name = "probability"
    output_meta.description = info.output_description
    output_meta.content = meta_fb.ContentT()
    output_meta.content.contentProperties = meta_fb.FeaturePropertiesT()
    output_meta.content.contentPropertiesType = meta_fb.ContentProperties.FeatureProperties
    output_meta.stats = output_stats
    output_meta.associatedFiles = [labels]

    outputs = [output_meta]
    if info.score_output:
        # MediaPipe reads one metadata entry per output tensor, in order: probabilities first.
        score_meta = meta_fb.TensorMetadataT()
        score_meta.name = info.score_output
        score_meta.description = info.score_description
        score_meta.content = meta_fb.ContentT()
        score_meta.content.contentProperties = meta_fb.FeaturePropertiesT()
        score_meta.content.contentPropertiesType = meta_fb.ContentProperties.FeatureProperties
        outputs.append(score_meta)

    subgraph = meta_fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [input_meta]
    subgraph.outputTensorMetadata = outputs
    model = meta_fb.ModelMetadataT()
    model.name, model.description, model.version = info.name, info.description, info.version
    model.author, model.license = info.author, info.license
    if info.model_files:
        model.associatedFiles = []
        for name, description in info.model_files.items():
            associated = meta_fb.AssociatedFileT()
            associated.name, associated.description = name, description
            associated.type = meta_fb.AssociatedFileType.DESCRIPTIONS
            model.associatedFiles.append(associated)
    model.subgraphMetadata = [subgraph]
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def append_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """The model with `files` appended as a zip archive (what the metadata extractors read)."""
    out = io.BytesIO(model)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as archive:
        for name, content in files.items():
            # A fixed timestamp keeps conversions byte-for-byte reproducible (same sha256).
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), content)
    return out.getvalue()
