"""A request parameter is declared once, in the wire contract: the server's record of an edit, its
validation and defaults, the SDK's options, the CLI's flags, the gateway's fields and OpenAPI document
and ``server_info`` all follow from the declaration (the editor's panel too: tests/test_editor.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

# A parameter the code has never heard of, declared at the end of a copy of the contract's module.
DECLARATION = textwrap.dedent('''

    SHARPNESS = WireTensor("sharpness", "FP32", False, "how sharp; default 1", minimum=0.0, maximum=2.0, default=1.0)
    INPUTS += (SHARPNESS,)
    PARAMETERS += (SHARPNESS,)
''')

# Asks each place that must follow the declaration what it now offers.
PROBE = textwrap.dedent('''
    import json

    import dataclasses
    from smartedit.edit.parameters import EditParameters, resolve_parameters
    from smartedit.errors import RequestError
    from smartedit.diffusion.prompts import SD_PROMPTS
    from smartedit.serving.ensembles import ONLY_PIPELINE, inpaint_ensemble_config
    from smartedit.serving.pipelines import PipelineNames
    from smartedit.serving.server_info import describe_pipeline
    from smartedit.serving.settings import PreprocessSettings
    from smartedit.diffusion.spec import PipelineInfo
    from smartedit.edit.provenance import Provenance
    from smartedit_client._options import EditOptions, checked_options
    from smartedit_client.cli import parser
    from smartedit_gateway.forms import openapi_schema

    sent = {"prompt": b"x", "sharpness": 1.5}
    record = resolve_parameters(lambda name: sent.get(name), PreprocessSettings())
    try:
        resolve_parameters(lambda name: {"prompt": b"x", "sharpness": 3.0}.get(name), PreprocessSettings())
        refused = None
    except RequestError as error:
        refused = str(error)
    info = PipelineInfo(vae_scale_factor=8, latent_channels=4, unet_in_channels=9, text_length=77,
                        text_hidden_size=32, vae_scaling_factor=0.18215, unet_sample_size=32, working_resolution=256)
    described = describe_pipeline(PipelineNames("p", first=True), info, PreprocessSettings(),
                                  Provenance(model="m", weights_sha256="0"))
    print(json.dumps({
        "record_field": [f.name for f in dataclasses.fields(EditParameters)][-1],
        "record_value": record.sharpness,
        "record_default": resolve_parameters(lambda name: {"prompt": b"x"}.get(name), PreprocessSettings()).sharpness,
        "refused": refused,
        "sdk_option": EditOptions.__annotations__.get("sharpness").__name__,
        "sdk_accepts": checked_options("inpaint", {"sharpness": 1.2}),
        "cli": parser().parse_args(["--sharpness", "0.5"]).sharpness,
        "gateway": openapi_schema()["content"]["application/json"]["schema"]["properties"]["sharpness"],
        "server_info": described["parameters"]["sharpness"],
        "ensemble_input": [t.name for t in inpaint_ensemble_config("inpaint", ONLY_PIPELINE, SD_PROMPTS).input][-1],
    }))
''')


def test_a_parameter_declared_in_the_contract_reaches_every_layer(tmp_path):
    import smartedit_client

    copy = tmp_path / "smartedit_client"
    shutil.copytree(Path(smartedit_client.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "_contract.py", "a") as contract:
        contract.write(DECLARATION)
    path = os.pathsep.join([str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=path))
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["record_field"] == "sharpness" and found["record_value"] == 1.5 and found["record_default"] == 1.0
    assert found["refused"] == "sharpness: must be between 0 and 2, got 3.0"
    assert found["sdk_option"] == "float" and found["sdk_accepts"] == {"sharpness": 1.2}
    assert found["cli"] == 0.5
    assert found["gateway"] == {"type": "number", "description": "how sharp; default 1", "minimum": 0.0,
                                "maximum": 2.0}
    assert found["server_info"] == {"type": "FP32", "required": False, "meaning": "how sharp; default 1",
                                    "default": 1.0, "minimum": 0.0, "maximum": 2.0}
    assert found["ensemble_input"] == "sharpness"


def test_every_optional_parameter_declares_its_default():
    from smartedit_client import _contract as wire

    for spec in wire.PARAMETERS:
        assert spec.required or spec.default is not None, spec.name
        if spec.default is not None:
            assert isinstance(spec.default, spec.python_type), spec.name
