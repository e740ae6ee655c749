"""The demo's manifests as it applies them (the demo itself runs with `make demo`)."""

from __future__ import annotations

from pathlib import Path

import demo
import yaml


def test_the_demo_drops_only_the_local_node_placement_on_a_real_cluster() -> None:
    """Against an existing cluster the demo applies the same manifests, not pinned to node `local`."""
    examples = Path(demo.__file__).resolve().parents[1] / "examples" / "demo"
    for name in ("finetunejob.yaml", "modeldeployment.yaml"):
        manifest = yaml.safe_load((examples / name).read_text())
        assert demo.for_cluster(manifest, existing=False) == manifest
        real = demo.for_cluster(manifest, existing=True)
        resources = real["spec"]["resources"]
        assert "nodeSelector" not in resources and "tolerations" not in resources, resources
        assert resources["gpus" if "gpus" in resources else "gpusPerNode"] == 1
        # The original is untouched, and everything else is kept.
        assert manifest["spec"]["resources"]["nodeSelector"] == {"loraforge.io/local-node": "true"}
        assert {k: v for k, v in real["spec"].items() if k != "resources"} == {
            k: v for k, v in manifest["spec"].items() if k != "resources"
        }


def test_the_demo_serves_with_vllm_and_with_tgi_when_asked() -> None:
    """`make demo` serves with vLLM; LORAFORGE_DEMO_RUNTIME=tgi keeps the TGI path (the stand-in here)."""
    from loraforge_operator.modeldeployment.model import ModelDeploymentSpec

    examples = Path(demo.__file__).resolve().parents[1] / "examples" / "demo"
    manifest = yaml.safe_load((examples / "modeldeployment.yaml").read_text())
    vllm = ModelDeploymentSpec.model_validate(demo.for_runtime(manifest, "vllm")["spec"])
    tgi = ModelDeploymentSpec.model_validate(demo.for_runtime(manifest, "tgi")["spec"])
    assert (vllm.runtime.name, tgi.runtime.name) == ("vllm", "tgi")
    assert "runtime" in manifest["spec"]  # the original is untouched
    ftj = yaml.safe_load((examples / "finetunejob.yaml").read_text())
    assert demo.for_runtime(ftj, "tgi") == ftj
    try:
        demo.for_runtime(manifest, "triton")
    except demo.DemoError as e:
        assert "LORAFORGE_DEMO_RUNTIME='triton'" in str(e)
    else:
        raise AssertionError("an unknown runtime was accepted")
