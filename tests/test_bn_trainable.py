"""``bn-trainable-in-base``: advice from the file, a warning only on an effect measured on the images (issue 22, 7).

A model trained end to end with its feature extractor as a nested model has trainable BatchNormalization by
design: nothing is wrong with it. The same model with moving statistics that disagree with its batches (gamma
and beta compensating, so inference is unchanged) loses accuracy as soon as `fit` normalizes with batch
statistics: that is a warning, with the numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from tlviz.diagnose import diagnose
from tlviz.imagesets import load_image_set
from tlviz.layers import freezing_findings
from tlviz.models import summarize
from tlviz.presets import apply_preset

CHECK = "bn-trainable-in-base"


def _bn_finding(report):
    found = [f for f in report.findings if f.id == CHECK]
    assert len(found) == 1, [f.id for f in report.findings]
    return found[0]


@pytest.fixture(scope="module")
def digits(digits_0_4):
    return load_image_set(digits_0_4, (32, 32), 3)


@pytest.fixture(scope="module")
def end_to_end(digits):
    """The sample's convolutional body as a nested model under a Dense head, trained end to end from scratch
    (BatchNormalization trainable throughout), with its held-out accuracy."""
    import keras

    from tlviz.samples import conv_body

    keras.utils.set_random_seed(0)
    inner = keras.Input((32, 32, 3))
    features = keras.Model(inner, conv_body(inner), name="features")
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Dropout(0.2, name="drop")(features(inp))
    model = keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="head")(x), name="nested_e2e")
    x_all, y_all = apply_preset(digits.images, "tf"), digits.labels
    order = np.random.default_rng(0).permutation(len(x_all))
    train, held_out = order[:700], order[700:]
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_all[train], y_all[train], epochs=10, batch_size=16, verbose=0)
    model.optimizer.learning_rate.assign(2e-4)
    model.fit(x_all[train], y_all[train], epochs=6, batch_size=16, verbose=0)
    accuracy = float(model.evaluate(x_all[held_out], y_all[held_out], verbose=0)[1])
    return model, accuracy


def test_from_the_file_alone_it_is_advice(end_to_end):
    model, _ = end_to_end
    found = [f for f in freezing_findings(model) if f.id == CHECK]
    assert len(found) == 1
    f = found[0]
    assert f.severity == "info" and f.evidence["measured_on_images"] is False
    assert f.evidence["trainable_bn_layers"] == 3
    assert "Advice for fine-tuning" in f.fix and "small batches" in f.fix and "training=False" in f.fix


def test_a_healthy_model_trained_end_to_end_gets_no_warning(end_to_end, digits):
    model, held_out = end_to_end
    assert held_out >= 0.95  # healthy: the model had 96 % on held-out images
    report = diagnose(summarize(model), digits, inference_preset="tf", checks=[CHECK])
    f = _bn_finding(report)
    assert f.severity == "info"
    ev = f.evidence
    assert ev["measured_on_images"] is True and ev["verdict"] is False
    assert ev["accuracy_inference_mode"] >= 0.95 and ev["n_images"] >= 100
    lo, hi = ev["drop_interval"]
    assert lo <= ev["drop"] <= hi < ev["threshold"]
    assert "nothing is wrong with this model as it is" in f.fix and f"on {ev['n_images']} images" in f.fix
    assert not [x for x in report.findings if x.severity in ("error", "warning")]


def _disagreeing_statistics(model):
    """A copy whose last BatchNormalization stores a moving mean 3 standard deviations above its batches' mean,
    its offset compensating (the same function in inference mode), and whose first convolution is frozen."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    features = copy.get_layer("features")
    bn = features.get_layer("block3_bn")
    mean, var = keras.ops.convert_to_numpy(bn.moving_mean), keras.ops.convert_to_numpy(bn.moving_variance)
    gamma, beta = keras.ops.convert_to_numpy(bn.gamma), keras.ops.convert_to_numpy(bn.beta)
    std = np.sqrt(var + bn.epsilon)
    bn.moving_mean.assign(mean - 3.0 * std)
    bn.beta.assign(beta - 3.0 * gamma)
    features.get_layer("block1_conv").trainable = False  # a base partly frozen, its BatchNormalization trainable
    return copy


def test_batch_statistics_that_hurt_are_a_warning_with_the_numbers(end_to_end, digits):
    model, _ = end_to_end
    planted = _disagreeing_statistics(model)
    x = apply_preset(digits.images[:64], "tf")
    assert np.allclose(model.predict(x, verbose=0), planted.predict(x, verbose=0), atol=1e-4)  # inference: same
    f = _bn_finding(diagnose(summarize(planted), digits, inference_preset="tf", checks=[CHECK]))
    assert f.severity == "warning"
    ev = f.evidence
    assert ev["verdict"] is True and ev["drop_interval"][0] >= ev["threshold"]
    assert ev["accuracy_inference_mode"] - ev["accuracy_batch_statistics"] == pytest.approx(ev["drop"], abs=1e-6)
    assert f"{ev['accuracy_inference_mode']:.1%}" in f.title and f"{ev['accuracy_batch_statistics']:.1%}" in f.title
    assert "Measured on your images" in f.fix and "training=False" in f.fix


def test_without_labels_it_stays_advice_and_says_why(end_to_end, digits):
    from dataclasses import replace

    model, _ = end_to_end
    unlabelled = replace(digits, labels=np.zeros(len(digits), dtype=np.int64), class_names=["unsorted"])
    f = _bn_finding(diagnose(summarize(_disagreeing_statistics(model)), unlabelled, inference_preset="tf",
                             checks=[CHECK]))
    assert f.severity == "info" and f.evidence["measured_on_images"] is False
    assert "single folder" in f.evidence["not_measured"] and f.fix.startswith("Not measured on your images:")


def test_a_measured_severity_is_declared_in_the_registry_and_only_raises():
    from tlviz.diagnose import Check
    from tlviz.diagnose.registry import CHECKS_BY_ID

    entry = CHECKS_BY_ID[CHECK]
    assert (entry.severity, entry.measured_severity) == ("info", "warning")
    advice = entry.finding("advice", {}, "fix")
    raised = entry.measured(advice, title="measured")
    assert (raised.severity, raised.area, raised.title) == ("warning", "finetuning", "measured")
    with pytest.raises(ValueError, match="more severe than 'warning'"):
        Check("x", "warning", "finetuning", "x", "x", run=len, measured_severity="info")
    with pytest.raises(ValueError, match="has no measured_severity"):
        CHECKS_BY_ID["head-frozen"].measured(CHECKS_BY_ID["head-frozen"].finding("t", {}, "f"))
