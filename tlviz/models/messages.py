"""The wording shared by the model checks: names quoted safely, sizes, and the answers for other formats.

- `clean(text, limit)` — a file name or an error made safe to quote in a message.
- `mb(n)` — bytes as MB for a message.
- The messages for files that are not Keras models (a SavedModel, TensorFlow.js, TensorFlow
  Lite, ONNX, pickles) and for damaged archives: what the file is, and how to convert it where
  that can be done.
"""

from __future__ import annotations


def clean(text, limit: int = 80) -> str:
    """A name or an error made safe to quote in a message.

    Args:
        text: anything; it is turned into text.
        limit: the most characters kept (the last one then becomes ``…``). Defaults to `80`.

    Returns:
        The text with control and other unprintable characters replaced by ``?``.
    """
    text = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mb(n: float) -> str:
    """Bytes as MB (2**20) for a message: 0.01, 1.5, 42.3, 500, 2000.

    Args:
        n: a number of bytes.

    Returns:
        Three significant digits below 100 MB, whole megabytes above.
    """
    value = n / 2**20
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def tfjs_message(filename: str) -> str:
    """The refusal of a TensorFlow.js model, with the command that converts it."""
    return (
        f"{filename} is a TensorFlow.js model (model.json + weights .bin files). Convert it to a Keras `.h5` "
        "with the tensorflowjs package: `pip install tensorflowjs`, then `tensorflowjs_converter "
        "--input_format=tfjs_layers_model --output_format=keras model.json model.h5`, and upload model.h5 "
        "(tlviz converts Keras 2 `.h5` files). From Teachable Machine, choose Export Model -> Tensorflow -> "
        "Keras instead and upload that zip. A TF.js *graph* model cannot be turned back into Keras."
    )


def tflite_message(filename: str) -> str:
    """The refusal of a TensorFlow Lite model (it cannot become a Keras model again)."""
    return (
        f"{filename} is a TensorFlow Lite model (`.tflite`): it holds a compiled graph without Keras layers, "
        "so it cannot be turned back into a Keras model. Upload the Keras model it was converted from "
        "(`model.save('model.keras')`); from Teachable Machine, choose Export Model -> Tensorflow -> Keras."
    )


def onnx_message(filename: str) -> str:
    """The refusal of an ONNX model."""
    return (
        f"{filename} is an ONNX model. tlviz reads Keras models; ONNX has no converter that gives back plain Keras "
        "layers reliably (`onnx2tf -i model.onnx -okv3` writes a `.keras` file, but usually with TensorFlow "
        "operations tlviz cannot load safely). If the model was made in Keras, upload the original "
        "`model.keras` / `.h5`."
    )


def pickle_message(filename: str, what: str) -> str:
    """The refusal of a pickle (`what` says which kind): tlviz never opens one."""
    return (
        f"{filename} is not a Keras model: it is {what}. Opening a pickle runs code stored in it, so "
        "tlviz never opens one. Save the Keras model itself with `model.save('model.keras')` and "
        "upload that file."
    )


def damaged_message(filename: str, exc: BaseException) -> str:
    """The refusal of a `.keras` archive that is damaged or cut short (`exc`: what reading it raised)."""
    return (
        f"{filename} looks like a `.keras` archive but is damaged or cut short ({clean(exc, 120)}). "
        "Save the model again with `model.save('model.keras')` and upload the new file."
    )


def savedmodel_message(filename: str) -> str:
    """The refusal of a TensorFlow SavedModel, with the lines that re-save it as `.keras`."""
    return (
        f"{filename} is a TensorFlow SavedModel, which Keras 3 cannot load as a model. "
        "Re-save it in the Keras format: in the environment that made it, run "
        "`model = tf.keras.models.load_model('path/to/savedmodel')` (or rebuild the model and load its "
        "weights) and then `model.save('model.keras')`, and upload the `.keras` file. With TensorFlow 2.16 or "
        "later, `pip install tf_keras` and run `python -c \"import tf_keras; "
        "tf_keras.models.load_model('path/to/savedmodel').save('model.h5')\"`, then upload model.h5 (tlviz "
        "converts Keras 2 `.h5` files). From Teachable Machine, export as Tensorflow -> Keras instead."
    )
