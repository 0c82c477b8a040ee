"""scripts/decode_benchmark.py: whole-file vs reduced-scale JPEG decoding with one checkpoint (here an untrained
scn quick network on small JPEG hands, saved with its record as training saves it): both inference runs, their errors
and shift, the interleaved timing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_ext.bundle import config_files, read_config
from monai_ext.data.readers import read_radiograph
from monai_ext.data.synthetic import generate_dataset

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("decode_benchmark", REPO / "scripts" / "decode_benchmark.py")
decode_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(decode_benchmark)


@pytest.mark.slow
def test_compares_full_and_reduced_decoding(tmp_path: Path):
    source = generate_dataset("hand", tmp_path / "dicom", n_train=1, n_val=3, n_test=0)
    doc = json.loads(Path(source).read_text())
    for item in doc["validation"]:  # the phantoms as 8-bit JPEGs, spacing in the datalist
        arr, meta = read_radiograph(Path(source).parent / item["image"])
        grey = (255 * (arr - arr.min()) / (arr.max() - arr.min())).astype(np.uint8).T
        name = Path(item["image"]).with_suffix(".jpg").name
        Image.fromarray(grey).save(tmp_path / name, quality=95)
        item.update(image=str(tmp_path / name), spacing=list(meta["spacing"]))
    for item in doc["training"]:
        item["image"] = str(Path(source).parent / item["image"])
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(doc))
    # the training composition builds the network and the record it saves with its weights (models/model.pt)
    parser = read_config(config_files(REPO / "bundles" / "scn", "train", ["quick.json"]), bundle_root=str(tmp_path),
                         datalist=str(datalist))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network")
    record = parser.get_parsed_content("model_config")
    torch.save({"model": network.state_dict(), "model_config": record.state_dict()}, tmp_path / "model.pt")
    out = tmp_path / "decode.json"
    with pytest.raises(ValueError, match="spatial_size: the trained model's record sets it"):  # nothing runs
        decode_benchmark.run(bundle="scn", checkpoint=str(tmp_path / "model.pt"), datalist=str(datalist),
                             overrides='{"spatial_size": [32, 32]}', out=str(out))
    # no variant: the network and its input size (quick.json's 64x64) come from the checkpoint's record
    record = decode_benchmark.run(bundle="scn", checkpoint=str(tmp_path / "model.pt"), datalist=str(datalist),
                                  decode_size="32,32", repeats=2, out=str(out), overrides='{"num_workers": 0}')
    assert json.loads(out.read_text())["n_images"] == 3 == record["n_images"]
    assert record["configs"] == ["bundles/scn/configs/train.json", *record["configs"][1:]]
    assert record["decode_size"] == [32, 32] and record["decode_scales"]["full"] == [1]
    assert min(record["decode_scales"]["reduced"]) > 1  # the JPEGs really were decoded at a reduced scale
    for mode in ("full", "reduced"):
        assert record["modes"][mode]["mre"] > 0 and record["preprocessing_ms"][mode]["n"] == 6
    assert record["shift"]["unit"] == "mm" and record["shift"]["max"] >= record["shift"]["median"] >= 0
