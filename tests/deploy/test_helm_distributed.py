"""A student across pods: an Indexed Job whose pods run torchrun and meet at pod 0 through a
headless Service (c10d rendezvous), GPUs requested per pod, a shared checkpoint volume; and a
student of several processes in one pod. Strict schema checks of these objects run with every
shipped values file in test_helm_chart.py (examples/student-2-nodes-fsdp.yaml among them)."""

from __future__ import annotations

import kubernetes_validate
from deploy_support import CHART, find, objects, render_file, render_values

EXAMPLE = CHART / "examples" / "student-2-nodes-fsdp.yaml"


def test_several_nodes_render_an_indexed_job_and_its_rendezvous_service() -> None:
    objs = render_file(EXAMPLE)
    (job,) = find(objs, "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    name = job["metadata"]["name"]
    assert pod["subdomain"] == f"{name}-rdzv"
    command = container["command"]
    assert command[0] == "torchrun" and command[-2:] == ["-m", "tropd.trainer.cli"]
    assert "--nnodes=2" in command and "--nproc-per-node=4" in command
    assert "--rdzv-backend=c10d" in command
    assert f"--rdzv-endpoint={name}-0.{name}-rdzv:29400" in command
    assert container["args"][:2] == ["run", "--config"]
    assert "train.parallel=fsdp" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "startupProbe" not in container  # only rank 0's pod serves status
    (service,) = [s for s in find(objs, "Service") if s["metadata"]["name"] == f"{name}-rdzv"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod_labels(job).items()
    (pvc,) = [p for p in find(objs, "PersistentVolumeClaim") if "qwen3-4b" in p["metadata"]["name"]]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    version = kubernetes_validate.utils.latest_version()
    for obj in (job, service, pvc):
        kubernetes_validate.validate(obj, version, strict=True)


def pod_labels(job: dict) -> dict:
    return job["spec"]["template"]["metadata"]["labels"]


def test_several_processes_in_one_pod_use_a_standalone_torchrun() -> None:
    student = {"name": "wide", "distributed": {"procsPerNode": 2, "parallel": "ddp"}}
    objs = objects(render_values({"students": [student]}))
    (job,) = find(objs, "Job")
    assert "completionMode" not in job["spec"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:4] == ["torchrun", "--nnodes=1", "--nproc-per-node=2",
                                        "--standalone"]  # fmt: skip
    assert "train.parallel=ddp" in container["args"]
    assert "startupProbe" in container  # rank 0 serves status in this very pod
    assert not [s for s in find(objs, "Service") if s["metadata"]["name"].endswith("-rdzv")]


def test_one_process_students_are_unchanged() -> None:
    for job in find(objects(render_values(None)), "Job"):
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["tropd-train"]
        assert not any(a.startswith("train.parallel=") for a in container["args"])
