"""infra/: the deployment files agree with the code and with each other, and each runs what it says.

The linters and schema checks (hadolint, cfn-lint, kubernetes-validate, the compose spec) run in
``make infra-check``; here: names, ports, limits and pins across files, which no linter sees, and
the TorchServe configs started for real on loopback.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import requests
import yaml

from devtools.process import REPO, TorchServe, free_ports
from gateway.config import Config
from tests.conftest import demo_image

INFRA = REPO / "infra"
#: Read outside Config: gunicorn's (gateway/__main__.py), boto3's, and TorchServe's thread share.
EXTRA_GATEWAY_ENV = {"GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_WORKERS", "GATEWAY_THREADS", "AWS_ACCESS_KEY_ID",
                     "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"}
MIB = 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # the gateway's own allowance over MAX_UPLOAD_MB (gateway/__init__.py)
SAGEMAKER_SERVERLESS_PAYLOAD = 4_000_000  # "4 MB", read as the smaller decimal value
LAMBDA_SYNC_PAYLOAD = 6 * MIB


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (!Ref, !Sub, ...) read as plain values."""


CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: (
    loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node)))


def cfn(name: str) -> dict:
    return yaml.load((INFRA / "aws" / name).read_text(), Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


def properties(name: str) -> dict[str, str]:
    lines = (INFRA / "torchserve" / name).read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def k8s() -> list[dict]:
    return [doc for f in sorted((INFRA / "k8s").glob("*.yaml")) if f.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(f.read_text()) if doc]


def k8s_env() -> dict[str, str]:
    """The gateway's settings in Kubernetes (infra/k8s/gateway.env, made into a ConfigMap by kustomize)."""
    lines = (INFRA / "k8s" / "gateway.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def gateway_envs() -> dict[str, dict[str, str]]:
    """Every deployment's gateway environment, by where it is set."""
    sam = cfn("template.yaml")["Resources"]["GatewayFunction"]["Properties"]["Environment"]["Variables"]
    ecs = cfn("ecs-fargate.yaml")["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    return {"compose": compose()["services"]["gateway"]["environment"], "sam": sam, "k8s": k8s_env(),
            "ecs": {e["Name"]: e["Value"] for e in next(c for c in ecs if c["Name"] == "gateway")["Environment"]}}


def upload_bytes(env: dict[str, str]) -> int:
    return int(float(env.get("MAX_UPLOAD_MB", Config.max_upload_mb)) * MIB)


def test_environment_names_are_the_gateways_own():
    known = {f.name.upper() for f in fields(Config)} | EXTRA_GATEWAY_ENV
    main = (REPO / "gateway" / "__main__.py").read_text()
    assert {n for n in EXTRA_GATEWAY_ENV if n.startswith("GATEWAY_")} <= set(re.findall(r'"(GATEWAY_\w+)"', main))
    for where, env in gateway_envs().items():
        unknown = {k for k in env if not k.startswith("<<")} - known
        assert not unknown, f"{where} sets variables the gateway never reads: {unknown}"


def test_every_multi_instance_deployment_shares_one_query_token_key():
    """Replicas that sign with different keys refuse each other's query tokens: each deployment with more
    than one gateway process tree takes the key from one secret."""
    sam = cfn("template.yaml")["Resources"]
    assert sam["GatewayFunction"]["Properties"]["Environment"]["Variables"]["QUERY_TOKEN_SECRET_ARN"] == "QueryTokenKey"
    assert sam["QueryTokenKey"]["Type"] == "AWS::SecretsManager::Secret"
    ecs = cfn("ecs-fargate.yaml")["Resources"]
    gateway = next(c for c in ecs["TaskDefinition"]["Properties"]["ContainerDefinitions"] if c["Name"] == "gateway")
    assert {s["Name"]: s["ValueFrom"] for s in gateway["Secrets"]} == {"QUERY_TOKEN_KEY": "QueryTokenKey"}
    allowed = ecs["ExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
    assert allowed["Action"] == "secretsmanager:GetSecretValue" and allowed["Resource"] == "QueryTokenKey"
    pod = next(d for d in k8s() if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    env = next(c for c in pod["containers"] if c["name"] == "gateway")["env"]
    key = next(e for e in env if e["name"] == "QUERY_TOKEN_KEY")["valueFrom"]["secretKeyRef"]
    assert key["name"] == "photo-query-token" and not key.get("optional", False)


@pytest.mark.parametrize("name", ["config.properties", "config.container.properties", "config.sagemaker.properties"])
def test_torchserve_loads_models_only_from_local_files(name):
    """A model archive carries code TorchServe runs: no config may let one be fetched from a URL."""
    props = dict(line.split("=", 1) for line in (INFRA / "torchserve" / name).read_text().splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["allowed_urls"].startswith("file:///") and "http" not in props["allowed_urls"]
    assert props.get("enable_model_api", "false") == "false"


@pytest.mark.parametrize("name", ["config.properties", "config.container.properties", "config.sagemaker.properties"])
def test_every_torchserve_config_waits_a_little_for_a_batch(name):
    """``maxBatchDelay`` 0 is not "no wait" in TorchServe 0.12: one client's p50 was 117 ms against 17 ms at 2 ms
    (docs/PERFORMANCE.md, session 20)."""
    models = json.loads(properties(name)["models"])
    delays = [version["maxBatchDelay"] for model in models.values() for version in model.values()]
    assert delays and all(delay >= 1 for delay in delays), delays


def test_upload_limits_fit_every_path():
    container = int(properties("config.container.properties")["max_request_size"])
    sagemaker = int(properties("config.sagemaker.properties")["max_request_size"])
    envs = gateway_envs()
    for where in ("compose", "k8s", "ecs"):
        assert upload_bytes(envs[where]) + MULTIPART_SLACK <= container, where
    sam = upload_bytes(envs["sam"])
    assert sam <= SAGEMAKER_SERVERLESS_PAYLOAD and sam <= sagemaker  # the image itself goes to SageMaker
    assert (sam + MULTIPART_SLACK) * 4 / 3 + 64 * 1024 <= LAMBDA_SYNC_PAYLOAD  # base64 in the Lambda event
    assert int(properties("config.properties")["max_request_size"]) >= upload_bytes({}) + MULTIPART_SLACK


def test_serverless_settings_are_within_aws_limits():
    params = cfn("template.yaml")["Parameters"]
    assert set(params["ServerlessMemoryMB"]["AllowedValues"]) <= set(range(1024, 6145, 1024))
    assert params["ServerlessMemoryMB"]["Default"] in params["ServerlessMemoryMB"]["AllowedValues"]
    concurrency = params["ServerlessMaxConcurrency"]
    assert 1 <= concurrency["MinValue"] <= concurrency["Default"] <= concurrency["MaxValue"] <= 200


def test_ports_and_exposure():
    container = properties("config.container.properties")
    assert container["inference_address"].endswith(":8080") and container["management_address"].startswith(
        "http://127.0.0.1:")
    assert "disable_token_authorization" not in container  # token auth on wherever TorchServe is exposed
    assert properties("config.sagemaker.properties")["management_address"].startswith("http://127.0.0.1:")
    ts_docker = (INFRA / "docker" / "torchserve.Dockerfile").read_text()
    gw_docker = (INFRA / "docker" / "gateway.Dockerfile").read_text()
    assert re.findall(r"^EXPOSE (.+)$", ts_docker, re.M) == ["8080"]
    assert re.findall(r"^EXPOSE (.+)$", gw_docker, re.M) == ["5000"] and "GATEWAY_PORT=5000" in gw_docker
    services = compose()["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published == {"gateway": ["127.0.0.1:5000:5000"]}  # nothing else leaves the compose network
    docs = k8s()
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "photo")
    metrics_service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] != "photo")
    assert metrics_service["spec"]["type"] == "ClusterIP" and [p["port"] for p in metrics_service["spec"]["ports"]] == [
        8082]
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"]
    container_ports = {p["containerPort"] for c in pod for p in c.get("ports", [])}
    assert 8081 not in container_ports and [p["port"] for p in service["spec"]["ports"]] == [80]
    gateway = next(c for c in pod if c["name"] == "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway_envs()["k8s"]["GATEWAY_PORT"] == str(gateway["ports"][0]["containerPort"])


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((INFRA / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(f.name for f in (INFRA / "k8s").glob("*.yaml") if f.name != "kustomization.yaml")


def pins(text: str) -> dict[str, str]:
    """Name → version of every ``name==version`` (extras such as ``ray[default]`` dropped from the name)."""
    return {m[0].lower(): m[1] for m in re.findall(r"([A-Za-z0-9_.-]+)(?:\[[A-Za-z0-9_,.-]+\])?==([0-9][^\s\\\"']*)",
                                                   text)}


def test_image_pins_equal_the_tested_ones():
    tested = pins((REPO / "requirements.txt").read_text())
    for f in [*sorted((INFRA / "docker").glob("requirements-*.txt")), *sorted((INFRA / "docker").glob("*.Dockerfile"))]:
        for name, version in pins(f.read_text()).items():
            assert tested.get(name) == version, f"{f.name}: {name}=={version}, requirements.txt has {tested.get(name)}"
    gateway_image = pins((INFRA / "docker" / "requirements-gateway.txt").read_text())
    assert not {"torch", "pandas", "torchvision", "timm"} & set(gateway_image)


def serve_with(model_store: Path, tmp_path: Path, config: str) -> TorchServe:
    """A TorchServe with one of infra/torchserve's configs, on free loopback ports and the test's store."""
    return TorchServe(model_store, tmp_path / "ts", template=INFRA / "torchserve" / config,
                      overrides={"model_store": str(model_store), "allowed_urls": f"file://{model_store}/.*"})


@pytest.mark.integration
def test_torchserve_sagemaker_contract(model_store, tmp_path):
    """The SageMaker container config: GET /ping and POST /invocations as SageMaker calls them."""
    ts = serve_with(model_store, tmp_path, "config.sagemaker.properties")
    ts.start()
    try:
        ts.wait_ready()
        assert requests.get(f"{ts.url}/ping", timeout=5).json() == {"status": "Healthy"}
        ok = requests.post(f"{ts.url}/invocations", data=demo_image("10109"), timeout=60,
                           headers={"Content-Type": "application/octet-stream"})
        assert ok.status_code == 200 and ok.json()["dim"] == 1280 and len(ok.json()["embedding"]) == 1280
        bad = requests.post(f"{ts.url}/invocations", data=b"not an image", timeout=60)
        assert bad.status_code == 400 and "not a supported image" in bad.json()["error"]
    finally:
        ts.stop()


@pytest.mark.integration
def test_token_auth_on_end_to_end(model_store, tmp_path, local_embedder):
    """The container config (token auth on): refused without the key, the gateway's client reads the key file,
    and infra/torchserve/ping.py (the images' health check) passes with it."""
    from modelserver.client import ModelServerError, TorchServeClient

    ts = serve_with(model_store, tmp_path, "config.container.properties")
    ts.start()
    try:
        ts.wait_ready()  # through the management API, with the management key TorchServe wrote
        key_file = ts.workdir / "key_file.json"
        with pytest.raises(ModelServerError, match="refused the token"):
            TorchServeClient(ts.url).embed(demo_image("10109"))
        vector, backbone_id = TorchServeClient(ts.url, key_file=key_file).embed(demo_image("10109"))
        assert backbone_id == local_embedder.backbone_id and float(vector @ local_embedder.embed_one(
            demo_image("10109"))) >= 0.999
        token = json.loads(key_file.read_text())["inference"]["key"]
        assert TorchServeClient(ts.url, token=token).probe() == backbone_id
        ping = [sys.executable, str(INFRA / "torchserve" / "ping.py"), str(key_file), f"{ts.url}/ping"]
        assert subprocess.run(ping).returncode == 0
        key_file.write_text(json.dumps({"inference": {"key": "wrong"}}))
        assert subprocess.run(ping).returncode == 1
    finally:
        ts.stop()


def dockerfile_list(name: str, instruction: str) -> list[str]:
    """An exec-form instruction of an image (CMD, ENTRYPOINT), read from its Dockerfile, so that these tests
    run what the image runs and break when the file changes."""
    text = (INFRA / "docker" / name).read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(f"{instruction} ")]
    return json.loads(lines[-1][len(instruction) + 1:])


class ImageRun:
    """The TorchServe image's ENTRYPOINT + CMD (+ ``args``, as ``docker run IMAGE args`` replaces CMD), run as a
    process with the image's layout under a temporary /home/model-server (and /opt/ml for SageMaker), on free
    loopback ports moved through TorchServe's TS_* variables."""

    def __init__(self, tmp_path: Path, model_store: Path, config: str, args: list[str] | None = None) -> None:
        import os

        self.home = tmp_path / "home" / "model-server"
        self.opt_ml = tmp_path / "opt" / "ml"
        for folder in ("model-store", "keys", "inference-key", "tmp", "logs"):
            (self.home / folder).mkdir(parents=True)
        (self.home / "model-store" / "embedding.mar").symlink_to(model_store / "embedding.mar")
        for name in ("ping.py", "publish_key.py", "start.py"):
            (self.home / name).write_text((INFRA / "torchserve" / name).read_text())
        text = (INFRA / "torchserve" / config).read_text()
        (self.home / "config.properties").write_text(text.replace("/home/model-server", str(self.home))
                                                     .replace("/opt/ml", str(self.opt_ml)))
        names = ("inference", "management", "metrics", "grpc_i", "grpc_m")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))  # distinct: held open until all chosen
        self.url = f"http://127.0.0.1:{self.ports['inference']}"
        venv_bin = Path(sys.executable).parent
        self.env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PHOTO_HOME": str(self.home),
                    "PHOTO_THREADS": "1", "TEMP": str(self.home / "tmp"), "TMPDIR": str(self.home / "tmp"),
                    "LOG_LOCATION": str(self.home / "logs"), "METRICS_LOCATION": str(self.home / "logs"),
                    "TS_INFERENCE_ADDRESS": self.url,
                    "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{self.ports['management']}",
                    "TS_METRICS_ADDRESS": f"http://127.0.0.1:{self.ports['metrics']}",
                    "TS_GRPC_INFERENCE_PORT": str(self.ports["grpc_i"]),
                    "TS_GRPC_MANAGEMENT_PORT": str(self.ports["grpc_m"]), "TS_DEFAULT_WORKERS_PER_MODEL": "1"}
        entry = dockerfile_list("torchserve.Dockerfile", "ENTRYPOINT")
        cmd = dockerfile_list("torchserve.Dockerfile", "CMD") if args is None else args
        self.command = [sys.executable if arg == "python" else arg.replace("/home/model-server", str(self.home))
                        for arg in entry + cmd]
        self.log_path = tmp_path / "torchserve.out"

    def start(self) -> ImageRun:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(self.command, cwd=self.home / "keys", env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def alive(self) -> None:
        assert self.process.poll() is None, self.log_path.read_text()[-3000:]

    def stop(self) -> None:
        import os
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the Java frontend or a worker left behind
        except ProcessLookupError:
            pass
        self._log.close()


@pytest.mark.integration
def test_the_torchserve_image_command_publishes_only_the_inference_key(model_store, tmp_path, local_embedder):
    """The TorchServe image as a container runs it: TorchServe starts with token auth on, the gateway's volume
    receives the inference key alone, that key embeds and passes ping.py, and it does not open the management
    API."""
    import time

    from modelserver.client import TorchServeClient

    run = ImageRun(tmp_path, model_store, "config.container.properties").start()
    published = run.home / "inference-key" / "key_file.json"
    try:
        deadline = time.monotonic() + 240
        vector = None
        while vector is None and time.monotonic() < deadline:
            run.alive()
            try:
                vector, backbone = TorchServeClient(run.url, key_file=published).embed(demo_image("10109"))
            except Exception:  # noqa: BLE001 - starting: no key yet, or no worker yet
                time.sleep(1)
        assert vector is not None and backbone == local_embedder.backbone_id
        assert set(json.loads(published.read_text())) == {"inference"}
        everything = json.loads((run.home / "keys" / "key_file.json").read_text())
        assert {"management", "inference"} <= set(everything)
        assert everything["management"]["key"] not in published.read_text()
        ping = [sys.executable, str(run.home / "ping.py"), str(published), f"{run.url}/ping"]
        assert subprocess.run(ping).returncode == 0
        inference_key = json.loads(published.read_text())["inference"]["key"]
        management = requests.get(f"http://127.0.0.1:{run.ports['management']}/models", timeout=10,
                                  headers={"Authorization": f"Bearer {inference_key}"})
        assert management.status_code in (400, 401, 403)  # the gateway's key cannot manage the model
    finally:
        run.stop()


@pytest.mark.integration
def test_the_sagemaker_image_answers_serve(model_store, tmp_path):
    """SageMaker's contract: ``docker run IMAGE serve`` (replacing CMD) with the model artifact unpacked into
    /opt/ml/model answers GET /ping and POST /invocations on 8080 (here a free port)."""
    import tarfile
    import time

    artifact = tmp_path / "model.tar.gz"  # as infra/README.md makes it
    with tarfile.open(artifact, "w:gz") as tar:
        tar.add(model_store / "embedding.mar", arcname="embedding.mar")
    run = ImageRun(tmp_path, model_store, "config.sagemaker.properties", args=["serve"])
    (run.opt_ml / "model").mkdir(parents=True)
    with tarfile.open(artifact) as tar:  # what SageMaker does with ModelDataUrl
        tar.extractall(run.opt_ml / "model", filter="data")
    (run.home / "model-store" / "embedding.mar").unlink()  # only /opt/ml/model may serve
    run.start()
    try:
        deadline = time.monotonic() + 240
        ok = None
        while time.monotonic() < deadline:
            run.alive()
            try:
                if requests.get(f"{run.url}/ping", timeout=5).json() == {"status": "Healthy"}:
                    ok = requests.post(f"{run.url}/invocations", data=demo_image("10109"), timeout=60,
                                       headers={"Content-Type": "application/octet-stream"})
                    if ok.status_code == 200:
                        break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1)
        assert ok is not None and ok.status_code == 200 and len(ok.json()["embedding"]) == ok.json()["dim"]
    finally:
        run.stop()


def lock_pins(text: str) -> dict[str, str]:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", text, re.M)}


def test_the_gateway_image_installs_every_package_by_hash():
    """The gateway and Lambda stages install the hashed lock with --require-hashes --no-deps; the lock pins
    what requirements-gateway.txt pins, every package (dependencies too) has a hash, and no local path leaks."""
    lock = (INFRA / "docker" / "requirements-gateway.lock").read_text()
    locked = lock_pins(lock)
    wanted = pins((INFRA / "docker" / "requirements-gateway.txt").read_text())
    assert {name.lower(): v for name, v in wanted.items()}.items() <= locked.items()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", lock.split("\n\n", 1)[1] if "\n\n" in lock else lock)
    for block in blocks:
        if "==" in block:
            assert "--hash=sha256:" in block, block.splitlines()[0]
    assert "--find-links" not in lock and "/opt/" not in lock and "--index-url" not in lock
    dockerfile = (INFRA / "docker" / "gateway.Dockerfile").read_text()
    installs = re.findall(r"^RUN pip install (.+)$", dockerfile, re.M)
    hashed = [line for line in installs if "requirements-gateway.lock" in line]
    assert len(hashed) == 2 and all("--require-hashes" in line and "--no-deps" in line for line in installs)
    assert len(installs) == 3 and "requirements-indexer.lock" in installs[1]  # every install of this Dockerfile
    assert not any(".txt" in line for line in installs)
    indexer = lock_pins((INFRA / "docker" / "requirements-indexer.lock").read_text())
    assert locked.items() <= indexer.items()  # the indexer stage adds to the gateway's, never changes a pin
    assert pins((INFRA / "docker" / "requirements-indexer.txt").read_text()).items() <= indexer.items()


#: What each base image runs the lock on: its Python and the manylinux tags its glibc accepts.
IMAGE_PLATFORMS = {
    "python:3.11.11-slim-bookworm": ("3.11", "cp311", ["manylinux_2_36_x86_64", "manylinux_2_28_x86_64",
                                                       "manylinux_2_17_x86_64", "manylinux2014_x86_64"]),
    "public.ecr.aws/lambda/python:3.12": ("3.12", "cp312", ["manylinux_2_34_x86_64", "manylinux_2_28_x86_64",
                                                            "manylinux_2_17_x86_64", "manylinux2014_x86_64"]),
    # Amazon Linux 2 (the python:3.11 Lambda base): glibc 2.26, so manylinux2014 wheels at most
    "public.ecr.aws/lambda/python:3.11": ("3.11", "cp311", ["manylinux2014_x86_64"]),
}


def resolve_lock(base: str, folder: Path,
                 requirements: str = "requirements-gateway.lock") -> subprocess.CompletedProcess:
    """pip itself resolving ``requirements`` as binary wheels for ``base``'s Python and glibc (and, for a lock,
    checking every hash), without dependencies: each file names all it installs."""
    python, abi, platforms = IMAGE_PLATFORMS[base]
    hashes = ["--require-hashes"] if requirements.endswith(".lock") else []
    command = [sys.executable, "-m", "pip", "download", "-q", *hashes, "--no-deps", "-r",
               str(INFRA / "docker" / requirements), "--only-binary=:all:", "--python-version",
               python, "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", "-d", str(folder)]
    for platform in platforms:
        command += ["--platform", platform]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["gateway", "lambda"])
def test_the_gateway_lock_resolves_as_binary_wheels_for_each_image(tmp_path, stage):
    """For the base image each stage names (read from the Dockerfile): every locked package a binary wheel for
    its Python and glibc (no source build), with its hash in the lock."""
    dockerfile = (INFRA / "docker" / "gateway.Dockerfile").read_text()
    base = re.search(rf"^FROM (\S+) AS {stage}$", dockerfile, re.M).group(1)
    run = resolve_lock(base, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list(tmp_path.iterdir())) == len(lock_pins((INFRA / "docker" / "requirements-gateway.lock")
                                                         .read_text()))


@pytest.mark.integration
def test_amazon_linux_2_cannot_install_the_lock(tmp_path):
    """The other side of the check, and why the Lambda base is Amazon Linux 2023: on the python:3.11 Lambda
    base (glibc 2.26) faiss-cpu 1.15, numpy 2.4 and pillow 13 have no wheel."""
    run = resolve_lock("public.ecr.aws/lambda/python:3.11", tmp_path)
    assert run.returncode != 0 and "No matching distribution" in run.stderr


def kustomized() -> list[dict]:
    """What ``kubectl kustomize infra/k8s`` makes: what a cluster would be given."""
    out = subprocess.run([str(Path(sys.executable).with_name("kubectl")), "kustomize", str(INFRA / "k8s")],
                         capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_kubernetes_rolls_pods_on_config_changes_and_lets_the_hpa_own_the_count():
    docs = kustomized()
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    assert re.fullmatch(r"photo-gateway-[a-z0-9]{10}", configmap["metadata"]["name"])  # named by its content
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    refs = [e["configMapRef"]["name"] for c in deployment["spec"]["template"]["spec"]["containers"]
            for e in c.get("envFrom", [])]
    assert refs == [configmap["metadata"]["name"]]  # a changed setting is a new pod template: a rollout
    assert "replicas" not in deployment["spec"]
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"] and hpa["spec"]["minReplicas"] >= 2


def test_kubernetes_survives_large_indexes_drains_and_node_loss():
    docs = kustomized()
    pod = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    startup, liveness = gateway["startupProbe"], gateway["livenessProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # minutes to copy a large index
    assert liveness["periodSeconds"] * liveness["failureThreshold"] < 120  # liveness stays quick after start
    assert all("sizeLimit" in v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v)
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_ingress_admits_every_upload_the_gateway_accepts():
    ingress = next(d for d in kustomized() if d["kind"] == "Ingress")
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m") and int(size[:-1]) * MIB >= upload_bytes(k8s_env()) + MULTIPART_SLACK
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "photo", "port": {"name": "http"}}


def test_the_index_is_built_by_a_job_and_a_cronjob_with_their_own_torchserve():
    docs = kustomized()
    job = next(d for d in docs if d["kind"] == "Job")
    cron = next(d for d in docs if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"] == job["spec"]["template"]["spec"]
    pod = job["spec"]["template"]["spec"]
    sidecar = pod["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always" and sidecar["image"].endswith("photo-torchserve:0.1.0")
    build = pod["containers"][0]
    assert build["image"].endswith("photo-indexer:0.1.0") and "--output" in build["args"]
    assert {e["name"]: e["value"] for e in build["env"]}["TORCHSERVE_KEY_FILE"] == "/keys/key_file.json"
    assert {m["name"] for m in build["volumeMounts"]} >= {"inference-key"} and "torchserve-keys" not in {
        m["name"] for m in build["volumeMounts"]}


def test_the_gateway_mounts_only_the_published_inference_key():
    """Kubernetes, ECS and compose: TorchServe's key file (management key included) stays in TorchServe's own
    volume; the gateway's only key volume is the one publish_key.py writes the inference key to."""
    pod = next(d for d in k8s() if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    ts_mounts = {m["mountPath"]: m["name"] for m in by_name["torchserve"]["volumeMounts"]}
    gw_mounts = {m["name"] for m in by_name["gateway"]["volumeMounts"]}
    assert ts_mounts["/home/model-server/inference-key"] == "inference-key" in gw_mounts
    assert ts_mounts["/home/model-server/keys"] not in gw_mounts
    task = cfn("ecs-fargate.yaml")["Resources"]["TaskDefinition"]["Properties"]
    ecs = {c["Name"]: {m["ContainerPath"]: m["SourceVolume"] for m in c["MountPoints"]}
           for c in task["ContainerDefinitions"]}
    assert ecs["torchserve"] == {"/home/model-server/inference-key": "inference-key"}  # keys/ stays in the container
    assert ecs["gateway"] == {"/keys": "inference-key"}
    services = compose()["services"]
    ts_volumes = services["torchserve"]["volumes"]
    assert ts_volumes == ["inference-key:/home/model-server/inference-key"]
    for name in ("gateway", "indexer"):
        keys = [v for v in services[name]["volumes"] if v.endswith(":/keys:ro")]
        assert keys == ["inference-key:/keys:ro"]


def test_metrics_and_readiness_details_are_off_every_public_route():
    """The admin listener (9090) is set in every long-running deployment and reached by no public route."""
    envs = gateway_envs()
    for where in ("compose", "k8s", "ecs"):
        assert envs[where]["GATEWAY_ADMIN_PORT"] == "9090", where
    assert "GATEWAY_ADMIN_PORT" not in envs["sam"]  # Lambda: no admin listener, so /metrics is 404 there
    docs = k8s()
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "photo")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    open_to_all = [r for r in policy["spec"]["ingress"] if "from" not in r]
    assert [p["port"] for r in open_to_all for p in r["ports"]] == [5000]
    assert compose()["services"]["gateway"]["ports"] == ["127.0.0.1:5000:5000"]
    resources = cfn("ecs-fargate.yaml")["Resources"]
    assert resources["TargetGroup"]["Properties"]["Port"] == 5000
    task_sg = resources["TaskSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert [(r["FromPort"], r["ToPort"]) for r in task_sg] == [(5000, 5000)]


def test_torchserve_as_a_sidecar_listens_on_loopback_with_a_read_only_root():
    pod = next(d for d in k8s() if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    ts = next(c for c in pod["containers"] if c["name"] == "torchserve")
    env = {e["name"]: e["value"] for e in ts["env"]}
    assert env["TS_INFERENCE_ADDRESS"] == "http://127.0.0.1:8080"
    assert ts["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in ts["volumeMounts"]}
    assert {"/home/model-server/keys", "/home/model-server/tmp", "/home/model-server/logs", "/tmp"} <= writable
    assert 8080 not in {p["containerPort"] for p in ts.get("ports", [])}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in ts["volumeMounts"]:
        assert "sizeLimit" in volumes[mount["name"]]["emptyDir"], mount["name"]
    assert properties("config.container.properties")["enable_envvars_config"] == "true"  # TS_* is read
    task = cfn("ecs-fargate.yaml")["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    ecs_ts = next(c for c in task if c["Name"] == "torchserve")
    assert {e["Name"]: e["Value"] for e in ecs_ts["Environment"]}["TS_INFERENCE_ADDRESS"] == "http://127.0.0.1:8080"


def test_egress_reaches_dns_and_public_addresses_only():
    import ipaddress

    policy = next(d for d in k8s() if d["kind"] == "NetworkPolicy")
    assert "Egress" in policy["spec"]["policyTypes"]
    rules = policy["spec"]["egress"]
    blocks = [to["ipBlock"] for rule in rules for to in rule.get("to", []) if "ipBlock" in to]
    assert blocks and all(rule.get("to") for rule in rules)  # no rule open to every destination
    for block in blocks:
        excluded = [ipaddress.ip_network(n) for n in block.get("except", [])]
        for private in ("10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "127.0.0.1", "100.64.0.1"):
            address = ipaddress.ip_address(private)
            assert address not in ipaddress.ip_network(block["cidr"]) or any(address in n for n in excluded), private
    dns = [r for r in rules if any("podSelector" in to for to in r["to"])]
    assert {p["port"] for r in dns for p in r["ports"]} == {53}


def test_the_model_role_pulls_only_its_own_image_and_the_bucket_is_tls_only():
    resources = cfn("template.yaml")["Resources"]
    statements = resources["ModelRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    pull = next(s for s in statements if "ecr:BatchGetImage" in s["Action"])
    arn, names = pull["Resource"]
    assert arn.endswith(":repository/${Repository}") and "*" not in arn
    pattern = cfn("template.yaml")["Parameters"]["TorchServeImageUri"]["AllowedPattern"]
    assert re.match(pattern, "123456789012.dkr.ecr.eu-west-1.amazonaws.com/photo-torchserve:1.0")
    assert not re.match(pattern, "docker.io/library/photo:latest")
    policy = resources["IndexBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    deny = next(s for s in policy if s["Effect"] == "Deny")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} and deny["Principal"] == "*"
    assert deny["Action"] == "s3:*" and len(deny["Resource"]) == 2  # the bucket and every object


def test_the_sam_template_details():
    """ARN by reference, /tmp sized from the catalog, stage throttling, the token key read at run time with the
    least grant, old object versions expired, and a real-time variant that autoscales."""
    template = cfn("template.yaml")
    resources = template["Resources"]
    function = resources["GatewayFunction"]["Properties"]
    statements = function["Policies"][0]["Statement"]
    invoke = next(s for s in statements if s["Action"] == "sagemaker:InvokeEndpoint")
    assert invoke["Resource"] == "EmbeddingEndpoint"  # !Ref: the ARN SageMaker writes, lower case
    secret = next(s for s in statements if s["Action"] == "secretsmanager:GetSecretValue")
    assert secret["Resource"] == "QueryTokenKey"
    env = function["Environment"]["Variables"]
    assert "QUERY_TOKEN_KEY" not in env and env["QUERY_TOKEN_SECRET_ARN"] == "QueryTokenKey"
    assert "resolve:secretsmanager" not in (INFRA / "aws" / "template.yaml").read_text()
    storage = function["EphemeralStorage"]["Size"]
    assert storage == ["EphemeralStorage", "CatalogSize", "MB"]
    sizes = template["Mappings"]["EphemeralStorage"]
    assert set(sizes) == set(template["Parameters"]["CatalogSize"]["AllowedValues"])
    for tier, mb in (("up-to-30k", 2048), ("up-to-100k", 4096), ("up-to-300k", 10240)):
        products = int(tier.split("-")[-1][:-1]) * 1000
        two_versions = 2 * products * (1280 * 4 + 2048) / 1e6  # vectors + products, served and incoming
        assert 512 <= sizes[tier]["MB"] == mb and sizes[tier]["MB"] >= two_versions, tier
    stage = resources["SearchApi"]["Properties"]["MethodSettings"][0]
    assert stage["ResourcePath"] == "/*" and stage["ThrottlingRateLimit"] and stage["ThrottlingBurstLimit"]
    rules = resources["IndexBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert rules[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] > 0
    scaling = resources["RealtimeScaling"]
    assert scaling["Condition"] == "Realtime" and resources["RealtimeScalableTarget"]["Condition"] == "Realtime"
    metric = scaling["Properties"]["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"]
    assert metric["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"


@pytest.mark.integration
@pytest.mark.parametrize("requirements", ["requirements-torchserve.txt", "requirements-indexer.txt"])
def test_the_other_images_requirements_are_binary_wheels_for_their_base(tmp_path, requirements):
    """The TorchServe and indexer images (python:3.11 slim, glibc 2.36): every requirement they name resolves as
    a binary wheel, no source build (torch itself comes from PyTorch's CPU index, unreachable from here)."""
    run = resolve_lock("python:3.11.11-slim-bookworm", tmp_path, requirements)
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(list(tmp_path.iterdir())) == len(pins((INFRA / "docker" / requirements).read_text()))


def dockerfile_stage(name: str, stage: str) -> str:
    """One stage of a multi-stage Dockerfile (line continuations joined)."""
    text = (INFRA / "docker" / name).read_text().replace("\\\n", " ")
    parts = re.split(r"^FROM ", text, flags=re.M)
    return next(p for p in parts if re.match(rf"\S+ AS {stage}\b", p))


def exec_form(stage_text: str, instruction: str) -> list[str]:
    lines = [line for line in stage_text.splitlines() if line.startswith(f"{instruction} ")]
    return json.loads(lines[-1][len(instruction) + 1:])


@pytest.mark.integration
def test_the_gateway_image_command_serves_and_passes_its_health_check(demo_index, tmp_path):
    """The gateway stage's CMD with its ENV (the bind moved to loopback and a free port), and its HEALTHCHECK
    command, as Docker would run them."""
    import os
    import time

    stage = dockerfile_stage("gateway.Dockerfile", "gateway")
    env = dict(re.findall(r"(\w+)=(\S+)", next(line for line in stage.splitlines() if line.startswith("ENV "))))
    port, nothing_there = free_ports(2)
    env |= {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "PYTHONPATH": str(REPO),
            "XDG_CACHE_HOME": str(tmp_path / "cache"), "INDEX_URI": str(demo_index),
            "TORCHSERVE_URL": f"http://127.0.0.1:{nothing_there}"}
    command = [sys.executable if a == "python" else a for a in exec_form(stage, "CMD")]
    assert command[1:] == ["-m", "gateway"]
    log = open(tmp_path / "gateway.out", "wb")  # noqa: SIM115
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        check = next(line for line in stage.splitlines() if line.startswith("HEALTHCHECK") and " CMD [" in line)
        health = json.loads(check.split(" CMD ", 1)[1])
        health = [sys.executable if a == "python" else a.replace(":5000/", f":{port}/") for a in health]
        deadline = time.monotonic() + 60
        while subprocess.run(health, capture_output=True).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "gateway.out").read_text()
            time.sleep(0.5)
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.mark.integration
def test_the_indexer_image_entrypoint_builds_the_sample_catalog(torchserve, tmp_path):
    """The indexer stage's ENTRYPOINT on the sample catalog against a real TorchServe: a published version."""
    import os

    stage = dockerfile_stage("gateway.Dockerfile", "indexer")
    entry = [sys.executable if a == "python" else a for a in exec_form(stage, "ENTRYPOINT")]
    assert entry[1:] == ["scripts/build_index.py"]
    out = tmp_path / "index"
    run = subprocess.run([*entry, "--catalog", str(REPO / "data" / "demo" / "products.csv"), "--output", str(out),
                          "--torchserve-url", torchserve.url, "--no-progress", "--cache-dir", str(tmp_path / "c")],
                         cwd=REPO, env={**os.environ, "LOG_FORMAT": "json"}, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "CURRENT").is_file()
    logged = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert logged and all(e["level"] in ("INFO", "WARNING") for e in logged)


def ray_job() -> dict:
    """What ``kubectl kustomize infra/k8s/ray`` makes: the RayJob of the build over a Ray cluster."""
    out = subprocess.run([str(Path(sys.executable).with_name("kubectl")), "kustomize", str(INFRA / "k8s" / "ray")],
                         capture_output=True, text=True, check=True).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    assert [d["kind"] for d in docs] == ["RayJob"]
    return docs[0]


def ray_pods(job: dict) -> dict[str, dict]:
    spec = job["spec"]["rayClusterSpec"]
    return {"head": spec["headGroupSpec"]["template"]["spec"],
            **{g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]}}


def test_the_ray_jobs_pods_are_valid_kubernetes_pods():
    """kubernetes-validate knows no RayJob (a custom resource): each pod template it carries is checked as the
    Pod KubeRay makes of it, strictly, against the same Kubernetes version as infra/k8s."""
    import kubernetes_validate

    for group, pod_spec in ray_pods(ray_job()).items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"photo-ray-{group}"}, "spec": pod_spec}
        kubernetes_validate.validate(pod, "1.37", strict=True)
    broken = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
              "spec": {**ray_pods(ray_job())["head"], "containerz": []}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37", strict=True)


def test_the_ray_job_runs_the_ray_build_on_the_pinned_ray_with_a_torchserve_beside_each_worker():
    job = ray_job()
    pinned = pins((INFRA / "docker" / "requirements-indexer.lock").read_text())
    tested = pins((REPO / "requirements.txt").read_text())["ray"]
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == pinned["ray"] == tested
    assert "aiohttp" in pinned  # ray[default]: the dashboard's job server, which `ray job submit` talks to
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["python", "scripts/build_index.py"] and words[words.index("--engine") + 1] == "ray"
    helped = subprocess.run([sys.executable, "scripts/build_index.py", "--help"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    assert all(f" {w}" in helped for w in words if w.startswith("--"))  # every flag is one the script has
    pods = ray_pods(job)
    head = pods.pop("head")
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    key_file = next(e["value"] for e in head["containers"][0]["env"] if e["name"] == "TORCHSERVE_KEY_FILE")
    url = words[words.index("--torchserve-url") + 1]
    for pod in pods.values():
        sidecar = next(c for c in pod["initContainers"] if c["name"] == "torchserve")
        assert sidecar["restartPolicy"] == "Always" and sidecar["image"].endswith("photo-torchserve:0.1.0")
        assert {e["name"]: e["value"] for e in sidecar["env"]}["TS_INFERENCE_ADDRESS"] == url
        worker = pod["containers"][0]
        mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
        assert str(Path(key_file).parent) == mounts["inference-key"]  # where this pod's TorchServe puts its key
        assert worker["image"] == head["containers"][0]["image"] and worker["image"].endswith("photo-indexer:0.1.0")


@pytest.mark.parametrize("stage", ["gateway", "lambda"])
def test_each_gateway_image_copies_every_package_the_gateway_and_the_build_import(stage):
    """A package the gateway or the build imports (even lazily, inside a function) that an image leaves out
    fails only when that code runs there (e.g. localfeatures/, when an index with keypoints is served)."""
    from tests.test_layout import imports_of, modules

    known = modules()
    served = [name for name in known if name.split(".")[0] in {"gateway", "catalog"}]
    needed = {dep.split(".")[0] for name in served for dep in imports_of(known[name], known)} | {"gateway", "catalog"}
    copied = set(re.findall(r"^COPY (\w+)/", dockerfile_stage("gateway.Dockerfile", stage), re.M))
    # handlers/: only `build_index.py --embedder local` imports it (the model in-process needs torch, which these
    # images leave out on purpose; the indexer embeds through TorchServe)
    assert needed - {"handlers"} <= copied, needed - copied
    assert "localfeatures" in needed  # the check sees lazy imports
