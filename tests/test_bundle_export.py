"""Model-zoo checks of every trained model of every bundle, offline, with no setting repeated: ``verify_net_in_out``
against ``configs/metadata.json``, then ``ckpt_export`` (TorchScript) and ``onnx_export`` (ONNX) of a model saved
as training saves it (``models/model.pt``: ``{"model": state_dict, "model_config": record}``, read with
``--key_in_ckpt model``), each export compared with the eager network, both in eval mode.

What is exported comes from the bundles' own files: every training stage (``monai_ext.bundle.training_stages``)
trains a network whose input and output are the stage's entries of ``network_data_format`` (in order: KNEEL's stage 2
is ``roi`` / ``roi_pred``). The networks are the bundles' ``quick.json`` variants (the real channel counts, narrower
layers) with random weights, saved with the record the training would write; the commands get the evaluation and
inference composition (``train.json`` + ``bundles/common/configs/inference.json`` + the bundle's ``model_overlays``) and rebuild the
network from the record. A network that ``torch.jit.script`` compiles is exported scripted, else traced (the
bundles feed fixed-size inputs). One bundle runs the documented ``python -m monai.bundle ...`` command lines (in the
background from the start of the module); the others call the same ``monai.bundle`` functions in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import monai.bundle
import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import BUNDLES, REPO, network_format
from monai.data import load_net_with_metadata

from monai_ext.bundle import config_files, read_config, training_stages

COMMANDS = ("verify_net_in_out", "ckpt_export", "onnx_export")
FORMAT = "_meta_#network_data_format"
CLI_TIMEOUT = 300
CLI_BUNDLE = "scn"  # the one whose documented command lines run as subprocesses

# monai.bundle's TorchScript export goes through torch.jit, which PyTorch deprecates in favour of torch.export
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated")


@dataclass(frozen=True)
class Net:
    """The network trained by one training stage of a bundle and its ``network_data_format`` entries.

    ``stage``: the stage overlay (None: ``train.json`` itself); ``index``: its position among the stages, which is
    also that of its entries in ``network_data_format``; ``cli``: run the commands as ``python -m monai.bundle``
    command lines instead of in-process.
    """

    bundle: str
    stage: str | None
    index: int
    cli: bool = False

    @property
    def name(self) -> str:
        return f"{self.bundle}:{self.stage or 'train.json'}"

    @property
    def dir(self) -> Path:
        return REPO / "bundles" / self.bundle

    def entries(self) -> tuple[str, str, dict, dict]:
        fmt = network_format(self.dir)
        inputs, outputs = list(fmt["inputs"]), list(fmt["outputs"])
        return inputs[self.index], outputs[self.index], fmt["inputs"][inputs[self.index]], fmt["outputs"][outputs[self.index]]


NETS = [Net(b.name, stage, i, cli=b.name == CLI_BUNDLE) for b in BUNDLES for i, stage in enumerate(training_stages(b))]
NETS.sort(key=lambda n: n.cli)  # the CLI commands start with the module and run while the in-process tests run


def meta_file(net: Net) -> str:
    return str(net.dir / "configs" / "metadata.json")


def io_overrides(net: Net) -> dict[str, Any]:
    """Overrides pointing the ``image`` / ``pred`` entries, which monai.bundle reads, at ``net``'s own entries."""
    inputs, outputs, inp, out = net.entries()
    ov: dict[str, Any] = {}
    if inputs != "image":
        ov.update({f"{FORMAT}#inputs#image#{k}": inp[k] for k in ("num_channels", "spatial_shape", "dtype")})
    if outputs != "pred":
        ov.update({f"{FORMAT}#outputs#pred#{k}": out[k] for k in ("num_channels", "dtype")})
    return ov


def _randomise_norm_statistics(model: torch.nn.Module) -> None:
    """Non-trivial batch-norm running statistics, so that an export in training mode (batch statistics) would differ."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))


@dataclass
class Prepared:
    """A bundle network (eval mode) with random weights saved as training saves it, an input of the trained size and
    the eager output on it, and the ``monai.bundle`` commands on it (started at once for the CLI bundle)."""

    net: Net
    workdir: Path
    model: torch.nn.Module
    x: torch.Tensor
    ref: torch.Tensor
    scripted: bool
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def ckpt(self) -> Path:
        return self.workdir / "models" / ("stage2/" if self.net.stage else "") / "model.pt"

    @property
    def ts(self) -> Path:
        return self.workdir / "model.ts"

    @property
    def onnx(self) -> Path:
        return self.workdir / "model.onnx"

    def kwargs(self, command: str) -> dict[str, Any]:
        """Arguments of ``monai.bundle.<command>``: the documented ones (the inference composition, the trained
        model's checkpoint), plus temp paths; no setting of the model is repeated."""
        kw: dict[str, Any] = {
            "meta_file": meta_file(self.net),
            "config_file": config_files(self.net.dir, "inference", ["quick.json"]),
            "bundle_root": str(self.workdir),
            "ckpt_path": str(self.ckpt),
        }
        if command != "verify_net_in_out":
            path = self.ts if command == "ckpt_export" else self.onnx
            kw.update(filepath=str(path), ckpt_file=str(self.ckpt), key_in_ckpt="model")
        if command == "onnx_export" or (command == "ckpt_export" and not self.scripted):
            kw["input_shape"] = list(self.x.shape)
        if command == "ckpt_export" and not self.scripted:
            kw["use_trace"] = True
            kw["converter_kwargs"] = {"check_trace": False}  # the parity checks below replace trace's own rerun
        return {**kw, **io_overrides(self.net)}

    def start(self, command: str) -> None:
        """``python -m monai.bundle <command> network_def --key value ...`` in the background. Values are Python
        literals: fire reads a bare ``a#b`` as ``a`` followed by a comment, so strings are quoted."""
        args = [sys.executable, "-m", "monai.bundle", command, "network_def"]
        for key, value in self.kwargs(command).items():
            args += [f"--{key}", repr(value)]
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        log = open(self.workdir / f"{command}.log", "w")
        self.processes[command] = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def run(self, command: str) -> None:
        """Run (in-process) or wait for (CLI) ``command``; fail with its output if it fails."""
        if not self.net.cli:
            getattr(monai.bundle, command)("network_def", **self.kwargs(command))
            return
        proc = self.processes[command]
        try:
            rc = proc.wait(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        log = (self.workdir / f"{command}.log").read_text()
        assert rc == 0, f"{' '.join(map(str, proc.args))} exited {rc}:\n{log[-4000:]}"


def _scriptable(model: torch.nn.Module) -> bool:
    try:
        torch.jit.script(model)
        return True
    except Exception:  # noqa: BLE001 - any compiler error means: trace it
        return False


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Callable[[Net], Prepared]:
    cache: dict[str, Prepared] = {}

    def get(net: Net) -> Prepared:
        if net.name in cache:
            return cache[net.name]
        workdir = tmp_path_factory.mktemp(net.name.replace(":", "_").replace(".", "_"))
        # the training composition of the stage builds the network and the record it would save with its weights
        parser = read_config(config_files(net.dir, "train", ["quick.json"], net.stage),
                             bundle_root=str(workdir), dataset_dir=str(workdir / "data"))
        if net.stage:
            parser["init_from_stage1"] = False  # random weights: nothing to start from
        torch.manual_seed(0)
        model = parser.get_parsed_content("network")
        _randomise_norm_statistics(model)
        record = parser.get_parsed_content("model_config")
        ckpt = workdir / "models" / ("stage2" if net.stage else "") / "model.pt"
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "model_config": record.state_dict()}, ckpt)
        # the network as evaluation and inference rebuild it from the record (a stacked hourglass: last stack only)
        parser = read_config(config_files(net.dir, "inference", ["quick.json"]),
                             bundle_root=str(workdir), dataset_dir=str(workdir / "data"), ckpt_path=str(ckpt))
        served = parser.get_parsed_content("network_def")
        served.load_state_dict(model.state_dict())
        _, _, inp, _ = net.entries()
        size = parser.get_parsed_content("spatial_size")
        x = torch.rand(1, inp["num_channels"], *size, generator=torch.Generator().manual_seed(2)) * 2 - 1
        served.eval()
        p = Prepared(net, workdir, served, x, last_stack(forward(served, x)), _scriptable(served))
        if net.cli:  # the checkpoint exists now: the three commands can run side by side
            for command in COMMANDS:
                p.start(command)
        cache[net.name] = p
        return p

    for net in NETS:
        if net.cli:
            get(net)
    yield get
    for p in cache.values():
        for proc in p.processes.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def forward(model: torch.nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(x)


def last_stack(out: Any) -> torch.Tensor:
    """The prediction: a stacked hourglass returns one output per stack, the last one is the prediction."""
    return out[-1] if isinstance(out, (list, tuple)) else out


def assert_parity(actual: Any, ref: torch.Tensor, what: str) -> None:
    actual = actual if isinstance(actual, torch.Tensor) else torch.as_tensor(np.asarray(actual))
    scale = float(ref.abs().max())
    assert scale > 0, f"{what}: the reference output is all zeros, the comparison would be vacuous"
    torch.testing.assert_close(actual, ref, rtol=0.0, atol=1e-5 * scale, msg=lambda m: f"{what}: {m}")


def test_every_training_stage_has_its_metadata_entries():
    """One ``network_data_format`` input and output per training stage, in the stages' order."""
    for bundle in BUNDLES:
        fmt, stages = network_format(bundle), training_stages(bundle)
        assert len(fmt["inputs"]) == len(stages) and len(fmt["outputs"]) >= len(stages), bundle.name


@pytest.mark.parametrize("net", NETS, ids=[n.name for n in NETS])
def test_verify_net_in_out(net: Net, prepared):
    p = prepared(net)
    p.run("verify_net_in_out")
    # verify_net_in_out checks channels and dtype; the spatial shapes are checked here
    _, outputs, inp, out = net.entries()
    x = torch.rand(1, inp["num_channels"], *inp["spatial_shape"])
    y = last_stack(forward(p.model, x))
    assert tuple(y.shape) == (1, out["num_channels"], *out["spatial_shape"]), (
        f"{net.name}: output {tuple(y.shape)} on the metadata's input shape {tuple(x.shape)} does not match "
        f"metadata outputs#{outputs}"
    )


@pytest.mark.parametrize("net", NETS, ids=[n.name for n in NETS])
def test_ckpt_export_torchscript_matches_eager(net: Net, prepared):
    p = prepared(net)
    p.run("ckpt_export")
    last = Path(p.kwargs("ckpt_export")["config_file"][-1])  # the export carries each config file under its name
    model, meta, extra = load_net_with_metadata(str(p.ts), map_location="cpu", more_extra_files=[last.name])
    assert meta["version"] == json.loads(Path(meta_file(net)).read_text())["version"]
    assert json.loads(extra[last.name]) == json.loads(last.read_text())
    assert_parity(forward(model.eval(), p.x), p.ref, f"{net.name} TorchScript")


@pytest.mark.parametrize("net", NETS, ids=[n.name for n in NETS])
def test_onnx_export_matches_eager(net: Net, prepared):
    p = prepared(net)
    p.run("onnx_export")
    session = ort.InferenceSession(str(p.onnx), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    assert len(inputs) == 1 and len(outputs) == 1, f"{net.name}: expected one ONNX input and one output"
    (out,) = session.run(None, {inputs[0].name: p.x.numpy()})
    assert_parity(out, p.ref, f"{net.name} ONNX")
