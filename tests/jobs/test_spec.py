"""The job spec models (`ironsight.jobs.spec`): one model per kind, built the same from flags
(`spec_args`) and from YAML (`spec_file`), and turned into the run's config by name
(`run_spec.config_from_spec`)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ironsight.jobs.run_spec import config_from_spec
from ironsight.jobs.spec import SPEC_KINDS, AuditJob, ClassifyJob, CompareJob
from ironsight.jobs.spec_args import add_spec_arguments, spec_from_args
from ironsight.jobs.spec_file import load_spec


def _parser(model) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_spec_arguments(parser, model)
    return parser


def test_torch_compile_is_a_flag_and_a_spec_key():
    parser = _parser(ClassifyJob)
    assert "--torch-compile" in parser.format_help()
    spec = spec_from_args(ClassifyJob, parser.parse_args(["in", "out", "--model", "demo_cnn", "--random-weights",
                                                            "--torch-compile"]))
    assert spec.torch_compile is True
    base = {"input": "i", "output": "o", "model": "demo_cnn", "random_weights": True}
    assert ClassifyJob.model_validate(base).torch_compile is False
    assert ClassifyJob.model_validate({**base, "torch_compile": True}).torch_compile is True


def test_no_activation_maps_is_a_flag_and_a_spec_key():
    parser = _parser(AuditJob)
    base = {"model": "demo_cnn", "random_weights": True}
    off = AuditJob(**vars(parser.parse_args(["in", "out", "--no-activation-maps"])), **base)
    on = AuditJob(**vars(parser.parse_args(["in", "out"])), **base)
    assert (off.activation_maps, on.activation_maps) == (False, True)
    assert AuditJob(input="in", output="out", activation_maps=False, **base).activation_maps is False
    with pytest.raises(SystemExit):
        parser.parse_args(["in", "out", "--activation-maps"])  # on by default: only the --no- flag exists


def test_the_keep_columns_key_and_the_flag_split_commas():
    spec = ClassifyJob(input="in/", output="out/", model="demo_cnn", random_weights=True,
                       keep_columns="path, url")
    assert spec.keep_columns == ["path", "url"]
    assert "keep_columns" not in ClassifyJob(input="in/", output="out/", model="demo_cnn",
                                             random_weights=True).model_dump(mode="json")


# The same job of each kind, as flags and as a YAML spec: one model validates both.
SAME_JOB = {
    "classify": (["--model", "demo_cnn", "--random-weights", "--top-k", "3", "--keep-columns", "a,b",
                  "--allowed-roots", "s3://b/", "--batch-size", "8"],
                 "model: demo_cnn\nrandom_weights: true\ntop_k: 3\nkeep_columns: a,b\n"
                 "allowed_roots: s3://b/\nbatch_size: 8\n"),
    "audit": (["--model", "demo_cnn", "--random-weights", "--severities", "1,3", "--suite", "standard",
               "--no-activation-maps", "--seed", "7"],
              "model: demo_cnn\nrandom_weights: true\nseverities: 1,3\nsuite: standard\n"
              "activation_maps: false\nseed: 7\n"),
    "compare": (["--model", "resnet18", "--model", "squeezenet1_1", "--random-weights", "--no-profile",
                 "--objective", "max accuracy"],
                "model: [resnet18, squeezenet1_1]\nrandom_weights: true\nprofile: false\n"
                "objective: max accuracy\n"),
}


@pytest.mark.parametrize("kind", sorted(SAME_JOB))
def test_flags_and_a_yaml_spec_build_the_same_spec(kind, tmp_path):
    flags, yaml = SAME_JOB[kind]
    model = SPEC_KINDS[kind]
    from_flags = spec_from_args(model, _parser(model).parse_args(["s3://b/in", "s3://b/out", *flags]))
    path = tmp_path / "job.yaml"
    path.write_text(f"kind: {kind}\ninput: s3://b/in\noutput: s3://b/out\n{yaml}")
    from_yaml = load_spec(str(path))
    assert type(from_yaml) is type(from_flags) is model
    assert from_yaml.kind == kind
    assert from_yaml.model_dump() == from_flags.model_dump()
    # a field left out takes the model's default on both paths (no second default in the CLI)
    assert from_flags.name == model.model_fields["name"].default == kind


def _config_classes() -> dict[str, type]:
    from ironsight.cluster.pipeline import ClassifyConfig
    from ironsight.jobs.audit import AuditConfig

    # a compare's config holds the AuditConfig every model gets (CompareConfig.audit) plus its
    # model list: the run options a compare spec shares are declared there
    return {"classify": ClassifyConfig, "audit": AuditConfig, "compare": AuditConfig}


@pytest.mark.parametrize("kind", sorted(SPEC_KINDS))
def test_a_config_field_that_is_also_a_spec_key_has_the_spec_default(kind):
    """The config dataclasses still declare the spec's options (for the Python API and the
    demo, which build them directly); where they do, the defaults must be the spec's, so a
    config built by hand runs the job the CLI would."""
    model, config = SPEC_KINDS[kind], _config_classes()[kind]
    shared = [f for f in dataclasses.fields(config) if f.name in model.model_fields]
    assert len(shared) >= 10, [f.name for f in shared]
    derived = {"allowed_roots", "keep_columns"}  # a list in the spec, normalised to a tuple in the config
    differ = {f.name: (f.default, model.model_fields[f.name].default) for f in shared
              if f.name not in derived and f.default is not dataclasses.MISSING
              and f.default != model.model_fields[f.name].default}
    assert differ == {}


def test_a_compare_configs_own_fields_have_the_spec_defaults():
    from ironsight.jobs.compare import CompareConfig

    own = {f.name: f.default for f in dataclasses.fields(CompareConfig) if f.default is not dataclasses.MISSING}
    assert own and all(CompareJob.model_fields[k].default == v for k, v in own.items()), own


def test_config_from_spec_copies_every_shared_field_and_derives_the_rest():
    from ironsight.cluster.models import ModelSource
    from ironsight.cluster.pipeline import ClassifyConfig

    spec = ClassifyJob(input="s3://b/in", output="s3://b/out", model="demo_cnn", random_weights=True,
                       top_k=2, batch_size=3, actors=4, image_column="img", id_column="key",
                       max_rows_per_shard=5, skip_bad_files=True, overwrite=True, device="cpu",
                       torch_compile=True, allowed_roots=["s3://b/"], keep_columns=["x"])
    source = ModelSource(name="demo_cnn", random_weights=True)
    cfg = config_from_spec(ClassifyConfig, spec, source=source, progress=False,
                           keep_columns=tuple(spec.keep_columns))
    for name in ("input", "output", "top_k", "batch_size", "actors", "image_column", "id_column",
                 "max_rows_per_shard", "skip_bad_files", "overwrite", "device", "torch_compile"):
        assert getattr(cfg, name) == getattr(spec, name), name
    assert cfg.allowed_roots == ("s3://b",)  # effective_roots(), not the list as written
    assert (cfg.source, cfg.progress, cfg.keep_columns) == (source, False, ("x",))
    assert cfg.max_pixels == ClassifyConfig.max_pixels  # not a spec key: the config's default


def test_every_kind_is_one_model_named_by_its_kind():
    assert SPEC_KINDS == {"classify": ClassifyJob, "audit": AuditJob, "compare": CompareJob}
    for kind, model in SPEC_KINDS.items():
        assert model.model_fields["kind"].default == kind
