"""status.outputs.uri: where rank 0 uploaded the result (output_uri), from its termination message; the
operator cleans what the pod wrote (no credentials, bounded) and leaves it out when there was no upload."""

import json

from kubetune_operator.policies.outcomes import uploaded_to

from tests.unit.operator.test_progress import add_pod, setup, status


def test_the_upload_in_the_summary_becomes_status_outputs_uri():
    kube, reconciler = setup()
    summary = {"status": "completed", "steps": 3, "output_uri": {"uri": "s3://models/run-1", "files": ["a"]}}
    add_pod(kube, 0, state={"terminated": {"exitCode": 0, "message": json.dumps(summary)}})
    assert reconciler.reconcile("default", "demo").phase == "Succeeded"
    st = status(kube)
    assert st["outputs"]["uri"] == "s3://models/run-1"
    assert "uploaded to s3://models/run-1" in st["message"]


def test_no_upload_no_uri():
    kube, reconciler = setup()
    add_pod(kube, 0, state={"terminated": {"exitCode": 0, "message": json.dumps({"steps": 3})}})
    assert reconciler.reconcile("default", "demo").phase == "Succeeded"
    assert "uri" not in status(kube)["outputs"]


def test_what_a_pod_wrote_is_cleaned():
    assert uploaded_to({"output_uri": {"uri": "s3://KEY:SECRET@bucket/x?token=t"}}) == "s3://bucket/x"
    assert uploaded_to({"output_uri": "s3://bucket/x"}) is None  # not the runtime's shape
    assert uploaded_to({"output_uri": {"uri": 7}}) is None
    assert uploaded_to(None) is None
    assert len(uploaded_to({"output_uri": {"uri": "s3://b/" + "k" * 5000}})) == 2048
