"""ironsight.cluster.yamlfile: the one bounded YAML loader (limits, messages, local and S3 reads)."""

from __future__ import annotations

import os
import threading
import time
import tracemalloc

import pytest
import yaml

from ironsight.cluster import yamlfile
from ironsight.cluster.errors import InvalidInput
from ironsight.cluster.yamlfile import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    YamlRefused,
    check_config_file,
    load_yaml,
    parse_yaml,
    short_repr,
)


def billion_laughs(levels: int = 10, width: int = 10, leaf: str = '"lol"') -> str:
    """The classic alias bomb: ``width ** levels`` leaves from a few hundred bytes."""
    lines = [f"a0: &a0 [{', '.join([leaf] * width)}]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def nested_flow(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_block(depth: int) -> str:
    return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)) + f"{'  ' * depth}leaf\n"


# --------------------------------------------------------------------------- plain YAML


@pytest.mark.parametrize(
    "text",
    [
        "name: x\nformat: torchscript\nweights: x.ts\nclass_names: [a, b]\nmean: [0.1, 0.2, 0.3]\n",
        "base: &b {x: 1, y: [1, 2]}\nderived:\n  <<: *b\n  x: 3\nagain: *b\n",  # merge + override
        "- 1\n- 2.5\n- true\n- null\n- 2024-01-31\n- '0x10'\n",
        "",
        "just a string\n",
    ],
)
def test_ordinary_documents_load_as_safe_load_does(text):
    assert parse_yaml(text, source="t") == yaml.safe_load(text)


def test_a_document_at_the_limits_loads():
    assert parse_yaml(nested_flow(MAX_DEPTH), source="t") is not None
    # aliases expanding to just under MAX_NODES values (99 + 990 * 100 nodes) are fine
    text = "a: &a [" + ", ".join(["1"] * 99) + "]\nb: [" + ", ".join(["*a"] * 990) + "]\n"
    data = parse_yaml(text, source="t")
    assert len(data["b"]) == 990 and data["b"][0] is data["b"][1]


# --------------------------------------------------------------------------- duplicate keys


def test_duplicate_key_names_key_and_both_lines():
    text = "name: a\nformat: torchscript\nname: b\n"
    with pytest.raises(InvalidInput) as err:
        parse_yaml(text, source="model card c.yaml")
    assert str(err.value) == (
        "model card c.yaml is not valid YAML: line 3, column 1: key 'name' appears twice "
        "(first on line 1); give each key once"
    )


def test_duplicate_key_inside_a_nested_mapping_and_a_flow_mapping():
    with pytest.raises(InvalidInput, match=r"line 4, column 3: key 'fog' appears twice \(first on line 2\)"):
        parse_yaml("condition_accuracy_min:\n  fog: 0.2\n  snow: 0.1\n  fog: 0.5\n", source="g")
    with pytest.raises(InvalidInput, match=r"line 1, column \d+: key 'eps' appears twice"):
        parse_yaml("- {attack: fgsm, eps: 0.1, eps: 0.2}\n", source="g")


def test_equal_keys_written_differently_are_duplicates():
    # 1 and 0x1 are the same int key: safe_load would keep the last silently
    with pytest.raises(InvalidInput, match="key 1 appears twice"):
        parse_yaml("1: a\n0x1: b\n", source="t")


def test_a_merged_key_may_be_overridden():
    data = parse_yaml("b: &b {x: 1}\nd:\n  <<: *b\n  x: 2\n", source="t")
    assert data["d"] == {"x": 2}


def test_a_long_duplicate_key_is_clipped_in_the_message():
    key = "k" * 50_000
    with pytest.raises(InvalidInput) as err:
        parse_yaml(f"? {key}\n: 1\n? {key}\n: 2\n", source="t")  # explicit keys: no 1024 limit
    assert len(str(err.value)) < 300 and "(49,920 more characters)" in str(err.value)


# --------------------------------------------------------------------------- nesting


@pytest.mark.parametrize(
    "text",
    [
        nested_flow(50_000),
        "{a: " * 50_000 + "1" + "}" * 50_000,
        "- " * 50_000 + "x\n",
        nested_block(1_000),  # indentation grows: 1,000 levels is already a 1 MB file
    ],
    ids=["flow-sequences", "flow-mappings", "block-sequences", "block-mappings"],
)
def test_deep_nesting_is_refused_without_recursing(text):
    start = time.monotonic()
    with pytest.raises(YamlRefused) as err:
        parse_yaml(text, source="suite file s.yaml")
    assert time.monotonic() - start < 5
    assert isinstance(err.value, InvalidInput)
    assert str(err.value).startswith("suite file s.yaml is refused: line ")
    assert f"nested more than {MAX_DEPTH} levels deep" in str(err.value)
    assert not isinstance(err.value.__context__, RecursionError)


def test_one_level_past_the_limit_is_refused():
    with pytest.raises(YamlRefused, match="nested more than 100 levels"):
        parse_yaml(nested_flow(MAX_DEPTH + 1), source="t")


def test_nesting_through_aliases_counts_the_expanded_depth():
    inner = nested_flow(60)
    text = f"a: &a {inner}\nb: {'[' * 60}*a{']' * 60}\n"  # each part is 61 deep, together 121
    with pytest.raises(YamlRefused, match=r"line 2, column 64: values are nested more than 100"):
        parse_yaml(text, source="t")


# --------------------------------------------------------------------------- aliases


def test_billion_laughs_is_refused_fast_in_little_memory():
    text = billion_laughs(levels=10)  # 10**10 values if expanded
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(YamlRefused) as err:
            parse_yaml(text, source="gate file g.yaml")
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 5 * 2**20, f"peak {peak:,} bytes"
    message = str(err.value)
    assert message.startswith("gate file g.yaml is refused: line ")
    assert f"aliases expand to more than {MAX_NODES:,} values" in message
    assert "\n" not in message and len(message) < 300


def test_merge_key_bomb_is_refused():
    lines = ["m0: &m0 {" + ", ".join(f"k{j}: {j}" for j in range(10)) + "}"]
    for i in range(1, 12):
        lines.append(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}")
    with pytest.raises(YamlRefused, match="aliases expand"):
        parse_yaml("\n".join(lines) + "\n", source="t")


def test_an_alias_inside_its_own_anchor_is_refused():
    with pytest.raises(YamlRefused, match=r"alias \*x is inside the value it names \(a cycle\)"):
        parse_yaml("a: &x [1, {b: *x}]\n", source="t")


def test_limits_hold_for_every_document_of_a_loader():
    # the counters start again for each parse: many small aliased files are fine
    text = "a: &a [" + ", ".join(["1"] * 99) + "]\nb: [" + ", ".join(["*a"] * 900) + "]\n"
    for _ in range(3):
        parse_yaml(text, source="t")


# --------------------------------------------------------------------------- other errors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1,\n", r"^t is not valid YAML: line 2, column 1: while parsing a flow node"),
        ("a: *nope\n", r"line 1, column 4: found undefined alias 'nope'"),
        ("a: 1\n---\nb: 2\n", r"line 2, column 1: expected a single document"),
        ("a: " + "1" * 5000 + "\n", r"line 1, column 4: cannot read this value: Exceeds the limit"),
        ("a: 2024-02-30\n", r"line 1, column 4: cannot read this value: day is out of range"),
        ("a: \x00\n", r"character 4: #x00 is not allowed in YAML"),
    ],
)
def test_yaml_errors_are_one_line_with_the_position(text, expected):
    with pytest.raises(InvalidInput, match=expected) as err:
        parse_yaml(text, source="t")
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    text = f'a: !!python/object/apply:os.system ["touch {marker}"]\n'
    with pytest.raises(InvalidInput, match="could not determine a constructor for the tag"):
        parse_yaml(text, source="t")
    assert not marker.exists()


def test_long_quoted_parts_of_yaml_errors_are_clipped():
    with pytest.raises(InvalidInput) as err:
        parse_yaml("a: *" + "n" * 100_000 + "\n", source="t")
    assert len(str(err.value)) < 300 and "more characters" in str(err.value)


def test_short_repr_never_expands_shared_containers():
    big = [[list(range(10))] * 10] * 10
    for _ in range(6):
        big = [big] * 10  # 10**9 leaves if printed
    start = time.monotonic()
    text = short_repr(big)
    assert time.monotonic() - start < 0.1
    assert len(text) <= yamlfile.SNIPPET_CHARS + 3


# --------------------------------------------------------------------------- files


def test_load_yaml_reads_a_local_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("clean_accuracy_min: 0.8\n")
    assert load_yaml(str(path), what="gate file") == {"clean_accuracy_min": 0.8}


def test_load_yaml_messages_start_with_what_and_the_name(tmp_path):
    with pytest.raises(InvalidInput, match=r"^gate file nope\.yaml does not exist$"):
        load_yaml("nope.yaml", what="gate file")
    (tmp_path / "d.yaml").write_text("a: 1\na: 2\n")
    with pytest.raises(InvalidInput, match=rf"^gate file {tmp_path}/d\.yaml is not valid YAML: line 2"):
        load_yaml(str(tmp_path / "d.yaml"), what="gate file")
    (tmp_path / "w.yaml").write_bytes(b"PK\x03\x04\xff\xfe")
    with pytest.raises(InvalidInput, match=r"is not UTF-8 text \(byte 4 is 0xff\)"):
        load_yaml(str(tmp_path / "w.yaml"), what="model card")


def test_load_yaml_refuses_a_file_over_the_cap_naming_it(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(InvalidInput, match=r"model card .*big\.yaml is larger than 1,048,576 bytes"):
        load_yaml(str(path), what="model card")
    assert load_yaml(str(path), what="model card", max_bytes=2 * MAX_CONFIG_BYTES)["a"][:3] == "xxx"


def _in_thread(fn, timeout: float):
    """Run ``fn`` in a daemon thread; (finished?, its exception)."""
    box: dict = {}

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive(), box.get("exc")


def test_load_yaml_refuses_a_fifo_without_opening_it(tmp_path):
    fifo = tmp_path / "card.yaml"
    os.mkfifo(fifo)
    finished, exc = _in_thread(lambda: load_yaml(str(fifo), what="model card"), timeout=10)
    if not finished:  # unblock the reader so the thread ends
        with open(fifo, "w"):
            pass
    assert finished, "reading a FIFO blocked"
    assert isinstance(exc, InvalidInput) and "is a named pipe (FIFO)" in str(exc)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/proc/self/environ"])
def test_load_yaml_refuses_devices_and_kernel_files(device):
    finished, exc = _in_thread(lambda: load_yaml(device, what="model card"), timeout=10)
    assert finished
    assert isinstance(exc, InvalidInput) and "not a regular file" in str(exc)


def test_load_yaml_on_s3(s3_bucket):
    from ironsight.cluster import storage

    storage.publish_bytes(storage.resolve(f"{s3_bucket}/g.yaml"), b"ece_max: 0.1\n")
    assert load_yaml(f"{s3_bucket}/g.yaml", what="gate file") == {"ece_max": 0.1}
    storage.publish_bytes(storage.resolve(f"{s3_bucket}/big.yaml"), b"#" * (MAX_CONFIG_BYTES + 10))
    with pytest.raises(InvalidInput, match="is larger than 1,048,576 bytes"):
        load_yaml(f"{s3_bucket}/big.yaml", what="gate file")
    with pytest.raises(InvalidInput, match="does not exist"):
        load_yaml(f"{s3_bucket}/absent.yaml", what="gate file")


def test_check_config_file(tmp_path):
    check_config_file(str(tmp_path / "absent.yaml"), what="gate file")  # may exist on the cluster
    check_config_file("s3://bucket/g.yaml", what="gate file")
    ok = tmp_path / "ok.yaml"
    ok.write_text("a: 1\n")
    check_config_file(str(ok), what="gate file")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(InvalidInput, match="named pipe"):
        check_config_file(str(tmp_path / "fifo"), what="gate file")
    with pytest.raises(InvalidInput, match="device or kernel file"):
        check_config_file("/dev/zero", what="gate file")
    with pytest.raises(InvalidInput, match="is a directory"):
        check_config_file(str(tmp_path), what="gate file")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(InvalidInput, match=r"gate file .*big\.yaml is larger than 1,048,576 bytes"):
        check_config_file(str(big), what="gate file")
