"""The chart with several teacher replicas: students balance over the headless Service with a
dns:/// target, a PodDisruptionBudget keeps one serving through a drain, and readiness (gRPC
health, NOT_SERVING while loading) keeps a loading pod out of the Service's DNS."""

from __future__ import annotations

from deploy_support import find, objects, render_values


def test_replicas_get_a_dns_target_a_pdb_and_a_readiness_gate() -> None:
    objs = objects(render_values({"teacher": {"replicaCount": 3}}))
    deployment = find(objs, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 3
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert "grpc" in probe  # the teacher's gRPC health: NOT_SERVING until loaded and warm
    (pdb,) = find(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    grpc_service = next(s for s in find(objs, "Service") if s["spec"].get("clusterIP") == "None")
    assert not grpc_service["spec"].get("publishNotReadyAddresses", False)
    name = grpc_service["metadata"]["name"]
    jobs = find(objs, "Job")
    assert jobs  # the default values run the demo students
    for job in jobs:
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"teacher.target=dns:///{name}.tropd.svc.cluster.local:50051" in args


def test_one_replica_keeps_the_pdb_optional() -> None:
    assert not find(objects(render_values({"teacher": {"replicaCount": 1}})), "PodDisruptionBudget")
