"""Every configuration file kind (model card, job spec, gate, suite) goes through the one loader
of ironsight.cluster.yamlfile: read locally and from S3 alike, one error class
(ConfigInvalid, an InvalidInput), and one message shape for a bad field:
``{file}: {field}: {message}``."""

from __future__ import annotations

import re

import pytest

from ironsight.cluster import storage
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.models.card import load_card
from ironsight.cluster.yamlfile import ConfigInvalid
from ironsight.jobs.spec_file import load_spec
from ironsight.robustness.gate import load_gate
from ironsight.robustness.suites import load_suite

# kind: (loader, a valid document, what the loaded value says, how messages name the file)
KINDS = {
    "card": (load_card,
             "name: tiny\nformat: torchscript\nweights: tiny.ts\nclass_names: [a, b]\n"
             "input_size: 32\nnormalization_inside: true\n",
             lambda card: card.name == "tiny", "model card "),
    "spec": (load_spec,
             "kind: classify\ninput: /data/in\noutput: /data/out\nmodel: demo_cnn\n"
             "random_weights: true\n",
             lambda spec: spec.kind == "classify" and spec.output == "/data/out", ""),
    "gate": (load_gate, "clean_accuracy_min: 0.8\n",
             lambda gate: gate.clean_accuracy_min == 0.8, "gate file "),
    "suite": (load_suite, "name: mini\nconditions: [contrast]\nseverities: [2]\n",
              lambda suite: suite.name == "mini" and suite.conditions == ("contrast",), "suite file "),
}


def _put(where: str, name: str, text: str) -> str:
    uri = f"{where}/{name}"
    storage.publish_bytes(storage.resolve(uri), text.encode())
    return uri


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    """Where the files are written: a local folder or a moto S3 bucket."""
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("s3_bucket")


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_from_a_local_path_and_from_s3(kind, place):
    loader, text, check, _ = KINDS[kind]
    assert check(loader(_put(place, f"{kind}.yaml", text)))


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_field_has_the_same_error_class_and_shape_in_every_kind(kind, place):
    loader, text, _, what = KINDS[kind]
    uri = _put(place, f"{kind}.yaml", text + "colour: red\n")
    with pytest.raises(ConfigInvalid) as err:
        loader(uri)
    assert isinstance(err.value, InvalidInput) and err.value.exit_code == 2
    assert re.fullmatch(rf"{re.escape(what + uri)}: colour: unknown key; .*valid keys: .+",
                        str(err.value)), str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_file_level_problems_are_the_same_class_in_every_kind(kind, place):
    loader, _, _, what = KINDS[kind]
    missing = f"{place}/absent-{kind}.yaml"
    with pytest.raises(ConfigInvalid, match=re.escape(f"{missing} does not exist")):
        loader(missing)
    bomb = _put(place, f"bomb-{kind}.yaml", "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
                          for p, c in zip("abcdef", "bcdefg", strict=True)))
    with pytest.raises(ConfigInvalid, match=re.escape(f"{bomb} is refused: ")):
        loader(bomb)
    listed = _put(place, f"list-{kind}.yaml", "- a\n- b\n")
    with pytest.raises(ConfigInvalid, match=re.escape(what + listed) + ": "):
        loader(listed)
