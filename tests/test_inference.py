"""Models that carry their preprocessing: image files or bytes in, class names out."""

from __future__ import annotations

import base64
import io

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from imgclf.common.errors import UserError
from imgclf.common.settings import load_settings
from imgclf.data.images import BadImage, png_bytes
from imgclf.inference.classifier import Classifier, InvalidInput, Preprocessing
from imgclf.tracking.models import load, log_classifier
from imgclf.tracking.runs import stage_run
from imgclf.training.checkpoint import Architecture, save_model

from .conftest import photo

ARCH = Architecture("cnn", 4, [1, 28, 28], ["coat", "dress", "shirt/top"], [0.3], [0.3],
                    resize="pad")


def logged(settings, tmp_path, arch: Architecture = ARCH) -> tuple[str, torch.nn.Module]:
    """A tiny model logged the way the train stage logs it; its URI and network."""
    torch.manual_seed(0)
    model = arch.build().eval()
    weights = tmp_path / "weights.pt"
    save_model(weights, model, arch, {"mlflow_run_id": "r"})
    examples = np.random.default_rng(0).integers(0, 256, (2, *arch.in_shape), dtype=np.uint8)
    with stage_run("train", settings):
        logged = log_classifier(model, arch.preprocessing(), weights, examples, {}, 1)
        return logged.model_uri, model


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return base64.b64encode(out.getvalue()).decode()


def test_preprocessing_round_trips_and_prepares_any_image_like_training():
    prep = ARCH.preprocessing()
    assert Preprocessing.from_config(prep.to_config()) == prep
    pixels = prep.pixels(png_bytes(np.full((3, 10, 40), 200, dtype=np.uint8)))
    assert pixels.shape == (1, 28, 28) and pixels.dtype == np.uint8
    assert pixels[0, 14, 14] == 200 and pixels[0, 0, 0] == 200  # letterboxed with its mean
    with pytest.raises(ValueError, match="no usable preprocessing"):
        Preprocessing.from_config({"classes": ["a", "b"]})
    with pytest.raises(BadImage, match="not in any image format"):
        prep.pixels(b"plain text")


def test_classifier_refuses_bad_batches_with_the_fix():
    classifier = Classifier(ARCH.build().eval(), ARCH.preprocessing())
    with pytest.raises(InvalidInput, match=r"N x 1 x 28 x 28 .* got 2 x 3 x 28 x 28"):
        classifier.probabilities(torch.rand(2, 3, 28, 28))
    with pytest.raises(InvalidInput, match="empty"):
        classifier.probabilities(torch.rand(0, 1, 28, 28))
    with pytest.raises(InvalidInput, match="look like 0-255 pixels: divide them by 255"):
        classifier.probabilities(torch.rand(1, 1, 28, 28) * 255)
    with pytest.raises(InvalidInput, match="finite"):
        classifier.probabilities(torch.full((1, 1, 28, 28), float("nan")))
    answers = classifier.answers(classifier.probabilities(torch.rand(3, 1, 28, 28)))
    assert len(answers) == 3 and set(answers[0]["probabilities"]) == set(ARCH.classes)
    assert answers[0]["probability"] == max(answers[0]["probabilities"].values())
    assert answers[0]["class"] in ARCH.classes


def test_a_logged_model_answers_images_in_every_request_form(project, client, tmp_path):
    uri, network = logged(load_settings(project / "params.yaml"), tmp_path)
    model = mlflow.pyfunc.load_model(uri)
    assert model.metadata.get_input_schema().input_names() == ["image"]
    grey, rgb = photo((90, 90, 90), (40, 30), 1).convert("L"), photo((200, 30, 30), (20, 50), 2)
    answers = model.predict(pd.DataFrame({"image": [b64(grey), b64(rgb, "JPEG")]}))
    prep = ARCH.preprocessing()
    pixels = np.stack([prep.pixels(base64.b64decode(b64(grey))),
                       prep.pixels(base64.b64decode(b64(rgb, "JPEG")))])
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(pixels).float() / 255), 1)
    assert [a["class"] for a in answers] == [ARCH.classes[i] for i in expected.argmax(1)]
    assert answers[1]["probabilities"]["shirt/top"] == pytest.approx(float(expected[1, 2]),
                                                                     abs=1e-5)
    tensors = model.predict(pd.DataFrame({"image": list(np.random.rand(2, 1, 28, 28))}))
    assert len(tensors) == 2
    assert "model" not in answers[0]  # loaded by hand: no served version to name


def test_a_served_model_names_its_version_on_every_answer(project, client, tmp_path,
                                                          monkeypatch):
    from imgclf.inference.classifier import SERVED_MODEL_ENV

    uri, _ = logged(load_settings(project / "params.yaml"), tmp_path)
    monkeypatch.setenv(SERVED_MODEL_ENV, "models:/clothes-classifier/4")  # as serve sets it
    model = mlflow.pyfunc.load_model(uri)
    answers = model.predict(pd.DataFrame({"image": list(np.random.rand(3, 1, 28, 28))}))
    assert [a["model"] for a in answers] == ["models:/clothes-classifier/4"] * 3


@pytest.mark.parametrize(("cells", "message"), [
    (["%%%"], "not valid base64"),
    ([base64.b64encode(b"hello").decode()], "not a readable image"),
    ([np.random.rand(3, 28, 28)], "must be 1 x 28 x 28"),
    ([np.random.rand(1, 28, 28) * 255], "divide them by 255"),
    ([], "empty"),
])
def test_a_logged_model_refuses_bad_requests_with_a_clear_message(project, client, tmp_path,
                                                                  cells, message):
    uri, _ = logged(load_settings(project / "params.yaml"), tmp_path)
    model = mlflow.pyfunc.load_model(uri)
    with pytest.raises(MlflowException, match=message) as raised:
        model.predict(pd.DataFrame({"image": pd.Series(cells, dtype=object)}))
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_decompression_bomb_is_refused(project, client, tmp_path, monkeypatch):
    uri, _ = logged(load_settings(project / "params.yaml"), tmp_path)
    model = mlflow.pyfunc.load_model(uri)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(MlflowException, match="decompression-bomb"):
        model.predict(pd.DataFrame({"image": [b64(photo((1, 2, 3), (40, 40), 0))]}))


def test_models_load_from_a_uri_or_a_file_and_carry_their_weights(project, client, tmp_path):
    uri, _ = logged(load_settings(project / "params.yaml"), tmp_path)
    from_uri = load(uri)
    assert from_uri.classifier.preprocessing == ARCH.preprocessing()
    assert from_uri.weights.is_file()
    local = load(str(from_uri.weights))
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(from_uri.classifier.probabilities(x), local.classifier.probabilities(x),
                          atol=1e-5)
    with pytest.raises(UserError, match="no such model file"):
        load(str(tmp_path / "missing.pt"))
    with pytest.raises(UserError, match="cannot load model models:/nope@champion"):
        load("models:/nope@champion")
