"""Checks of the `ray up` cluster config (deploy/vm) and its security group template."""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.security import security_findings

REPO = Path(__file__).resolve().parents[2]
VM = REPO / "deploy" / "vm"
CONFIG = yaml.safe_load((VM / "cluster-aws.yaml").read_text())
SG = yaml.safe_load((VM / "security-group.yaml").read_text())


def _ray_schema() -> dict:
    # Located without importing ray: the schema `ray up` itself validates configs with.
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def _start_commands() -> dict[str, str]:
    return {
        "head": " ".join(CONFIG["head_start_ray_commands"]),
        "worker": " ".join(CONFIG["worker_start_ray_commands"]),
    }


def test_config_is_valid_for_ray_up() -> None:
    jsonschema.validate(CONFIG, _ray_schema())


def test_ray_up_schema_rejects_a_misspelt_key() -> None:
    bad = copy.deepcopy(CONFIG)
    bad["max_worker"] = bad.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        jsonschema.validate(bad, _ray_schema())


def test_cpu_head_and_gpu_worker_node_types() -> None:
    types = CONFIG["available_node_types"]
    head = types[CONFIG["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    (worker_name,) = [n for n in types if n != CONFIG["head_node_type"]]
    worker = types[worker_name]
    # g*/p* are the AWS GPU instance families.
    assert re.match(r"[gp]\d", worker["node_config"]["InstanceType"])
    assert 0 <= worker["min_workers"] <= worker["max_workers"] <= CONFIG["max_workers"]


@pytest.mark.parametrize("node", ["head", "worker"])
def test_token_auth_on_every_node(node: str) -> None:
    command = _start_commands()[node]
    assert re.search(r"RAY_AUTH_MODE=token ray start", command)
    assert "--env RAY_AUTH_MODE=token" in CONFIG["docker"]["run_options"]


def test_token_comes_from_a_file_never_inline() -> None:
    text = (VM / "cluster-aws.yaml").read_text()
    assert "RAY_AUTH_TOKEN=" not in text
    assert CONFIG["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert security_findings(CONFIG) == []


def test_dashboard_bound_to_loopback() -> None:
    head = _start_commands()["head"]
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in yaml.safe_dump(CONFIG)


@pytest.mark.parametrize("node_type", sorted(CONFIG["available_node_types"]))
def test_every_node_uses_the_prepared_security_group(node_type: str) -> None:
    # Without SecurityGroupIds `ray up` creates a group that admits SSH from 0.0.0.0/0.
    node_config = CONFIG["available_node_types"][node_type]["node_config"]
    assert node_config["SecurityGroupIds"]
    assert "security_group" not in CONFIG["provider"]


def test_security_group_admits_only_ssh_from_the_chosen_cidr() -> None:
    (ingress,) = SG["Resources"]["NodeSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert (ingress["IpProtocol"], ingress["FromPort"], ingress["ToPort"]) == ("tcp", 22, 22)
    assert ingress["CidrIp"] == {"Ref": "SshCidr"}
    intra = SG["Resources"]["IntraClusterIngress"]["Properties"]
    assert intra["SourceSecurityGroupId"] == intra["GroupId"] == {"Ref": "NodeSecurityGroup"}
    assert "Default" not in SG["Parameters"]["SshCidr"]
    kinds = {r["Type"] for r in SG["Resources"].values()}
    assert kinds == {"AWS::EC2::SecurityGroup", "AWS::EC2::SecurityGroupIngress"}


@pytest.mark.parametrize(
    ("cidr", "allowed"),
    [
        ("198.51.100.7/32", True),
        ("10.0.0.0/8", True),
        ("0.0.0.0/0", False),
        ("0.0.0.0/1", False),
        ("10.0.0.0", False),
    ],
)
def test_ssh_cidr_pattern(cidr: str, allowed: bool) -> None:
    pattern = SG["Parameters"]["SshCidr"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, cidr)) is allowed
    if allowed:
        assert ipaddress.ip_network(cidr).prefixlen >= 8
