"""Model-zoo checks of every bundle, offline: ``verify_net_in_out`` against ``configs/metadata.json``, then
``ckpt_export`` (TorchScript) and ``onnx_export`` (ONNX) of a checkpoint saved as the bundles save it
(``models/model.pt``: the network's bare ``state_dict``, as MONAI's ``CheckpointSaver`` writes a single object;
``models/checkpoint.pt``: ``{"model": state_dict, ...}``; ``--key_in_ckpt model`` reads both), each export compared
with the eager network, both in eval mode.

The networks are the bundles' ``quick.json`` variants (the real channel counts, narrower layers). Verification uses
the metadata's input shapes; the exports use the (smaller) input size the quick pipeline feeds the network.
``scn`` and kneel's stage 2 (a ``#`` id and metadata overrides) run the documented ``python -m monai.bundle ...``
command lines (see the bundles' docs/README.md; in the background from the start of the module); the others call the
same ``monai.bundle`` functions in-process, which is faster.
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
from monai.bundle import ConfigParser
from monai.data import load_net_with_metadata

REPO = Path(__file__).resolve().parents[1]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs").is_dir())
COMMANDS = ("verify_net_in_out", "ckpt_export", "onnx_export")
FORMAT = "_meta_#network_data_format"
CLI_TIMEOUT = 300

# monai.bundle's TorchScript export goes through torch.jit, which PyTorch deprecates in favour of torch.export
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated")


@dataclass(frozen=True)
class Net:
    """One network of a bundle, the ``network_data_format`` entries of its input and output, and how it exports.

    ``size_id``: config id of the spatial size the pipeline feeds the network (the export and parity input size).
    ``use_trace``: TorchScript by ``torch.jit.trace`` (the bundles feed fixed-size inputs). StackedHourglass,
    KneelHourglass and HRNet are not scriptable: their forwards index ``ModuleList``s with loop variables or zip
    them with lists, and KNEEL's soft-argmax checks for ``MetaTensor`` inputs; SCN is scripted.
    ``overrides``: config ``(id, value)`` pairs of every command: with ``final_only`` the stacked hourglass returns
    its last stack's heatmaps (the prediction) as one tensor instead of the list of stacks.
    ``export``: run the export tests (kneel's stage 2 is the stage-1 class with other channels: verified only).
    ``cli``: run the commands as ``python -m monai.bundle`` command lines (subprocesses) instead of in-process.
    """

    bundle: str
    net_id: str = "network_def"
    inputs: str = "image"
    outputs: str = "pred"
    size_id: str = "spatial_size"
    use_trace: bool = True
    overrides: tuple[tuple[str, Any], ...] = ()
    export: bool = True
    cli: bool = False

    @property
    def name(self) -> str:
        return f"{self.bundle}:{self.net_id}"


NETS = [  # the CLI commands start with the module and run while the in-process tests run: list them last
    Net("adv_posenet", overrides=(("network_def#final_only", True),)),
    Net("kneel", size_id="stage1_size"),
    Net("interactive_kp"),
    Net("kneel", "stage2#network_def", inputs="roi", outputs="roi_pred", size_id="roi_size", export=False, cli=True),
    Net("scn", use_trace=False, cli=True),
]
EXPORTED = [n for n in NETS if n.export]


def config_files(bundle: str) -> list[str]:
    configs = REPO / "bundles" / bundle / "configs"
    return [str(configs / "train.json"), str(configs / "quick.json")]


def meta_file(bundle: str) -> str:
    return str(REPO / "bundles" / bundle / "configs" / "metadata.json")


def io_format(net: Net) -> tuple[dict, dict]:
    """The metadata entries of ``net``'s input and output."""
    fmt = json.loads(Path(meta_file(net.bundle)).read_text())["network_data_format"]
    return fmt["inputs"][net.inputs], fmt["outputs"][net.outputs]


def io_overrides(net: Net) -> dict[str, Any]:
    """Overrides pointing the ``image`` / ``pred`` entries, which monai.bundle reads, at ``net``'s own entries."""
    inp, out = io_format(net)
    ov: dict[str, Any] = {}
    if net.inputs != "image":
        ov.update({f"{FORMAT}#inputs#image#{k}": inp[k] for k in ("num_channels", "spatial_shape", "dtype")})
    if net.outputs != "pred":
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
    """A bundle network (eval mode) with random weights saved as the bundles' checkpoints, an input of the export
    size and the eager output on it, and the ``monai.bundle`` commands on it (started at once for the CLI bundles)."""

    net: Net
    workdir: Path
    model: torch.nn.Module
    x: torch.Tensor
    ref: torch.Tensor
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def ckpt(self, command: str) -> Path:
        """TorchScript from the best-metric weights, ONNX from the resume checkpoint: both formats are covered."""
        return self.workdir / ("model.pt" if command == "ckpt_export" else "checkpoint.pt")

    @property
    def ts(self) -> Path:
        return self.workdir / "model.ts"

    @property
    def onnx(self) -> Path:
        return self.workdir / "model.onnx"

    def kwargs(self, command: str) -> dict[str, Any]:
        """Arguments of ``monai.bundle.<command>`` (the documented ones, plus the quick config and temp paths)."""
        kw: dict[str, Any] = {"meta_file": meta_file(self.net.bundle), "config_file": config_files(self.net.bundle)}
        if command != "verify_net_in_out":
            path = self.ts if command == "ckpt_export" else self.onnx
            kw.update(filepath=str(path), ckpt_file=str(self.ckpt(command)), key_in_ckpt="model")
        if command == "onnx_export" or (command == "ckpt_export" and self.net.use_trace):
            kw["input_shape"] = list(self.x.shape)
        if command == "ckpt_export" and self.net.use_trace:
            kw["use_trace"] = True
            kw["converter_kwargs"] = {"check_trace": False}  # the parity checks below replace trace's own rerun
        kw["dataset_dir"] = str(self.workdir / "data")
        return {**kw, **dict(self.net.overrides), **io_overrides(self.net)}

    def start(self, command: str) -> None:
        """``python -m monai.bundle <command> <net_id> --key value ...`` in the background. Values are Python
        literals: fire reads a bare ``a#b`` as ``a`` followed by a comment, so strings are quoted."""
        args = [sys.executable, "-m", "monai.bundle", command, repr(self.net.net_id)]
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
            getattr(monai.bundle, command)(self.net.net_id, **self.kwargs(command))
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


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Callable[[Net], Prepared]:
    cache: dict[str, Prepared] = {}

    def get(net: Net) -> Prepared:
        if net.name in cache:
            return cache[net.name]
        workdir = tmp_path_factory.mktemp(net.name.replace(":", "_").replace("#", "_"))
        parser = ConfigParser()
        parser.read_config(config_files(net.bundle))
        parser["dataset_dir"] = str(workdir / "data")  # the synthetic datalist gives the landmark count
        torch.manual_seed(0)
        model = parser.get_parsed_content(net.net_id)  # the training form, without net.overrides
        _randomise_norm_statistics(model)
        torch.save(model.state_dict(), workdir / "model.pt")  # as CheckpointSaver(save_dict={"model": network})
        torch.save({"model": model.state_dict(), "trainer": {"epoch": 1}}, workdir / "checkpoint.pt")  # as resume
        inp, _ = io_format(net)
        size = parser.get_parsed_content(net.size_id)
        x = torch.rand(1, inp["num_channels"], *size, generator=torch.Generator().manual_seed(2)) * 2 - 1
        p = Prepared(net, workdir, model.eval(), x, last_stack(forward(model, x)))
        if net.cli:  # the dataset exists now: the three commands can run side by side
            for command in COMMANDS if net.export else COMMANDS[:1]:
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


def test_every_bundle_is_covered():
    assert {n.bundle for n in NETS} == set(BUNDLES), "add the new bundle's networks to NETS"


@pytest.mark.parametrize("net", NETS, ids=[n.name for n in NETS])
def test_verify_net_in_out(net: Net, prepared):
    p = prepared(net)
    p.run("verify_net_in_out")
    # verify_net_in_out checks channels and dtype; the spatial shapes are checked here
    inp, out = io_format(net)
    x = torch.rand(1, inp["num_channels"], *inp["spatial_shape"])
    y = last_stack(forward(p.model, x))
    assert tuple(y.shape) == (1, out["num_channels"], *out["spatial_shape"]), (
        f"{net.name}: output {tuple(y.shape)} on the metadata's input shape {tuple(x.shape)} does not match "
        f"metadata outputs#{net.outputs}"
    )


@pytest.mark.parametrize("net", EXPORTED, ids=[n.name for n in EXPORTED])
def test_ckpt_export_torchscript_matches_eager(net: Net, prepared):
    p = prepared(net)
    p.run("ckpt_export")
    model, meta, extra = load_net_with_metadata(str(p.ts), map_location="cpu", more_extra_files=["quick.json"])
    assert meta["version"] == json.loads(Path(meta_file(net.bundle)).read_text())["version"]
    assert json.loads(extra["quick.json"]) == json.loads(Path(config_files(net.bundle)[1]).read_text())
    assert_parity(forward(model.eval(), p.x), p.ref, f"{net.name} TorchScript")


@pytest.mark.parametrize("net", EXPORTED, ids=[n.name for n in EXPORTED])
def test_onnx_export_matches_eager(net: Net, prepared):
    p = prepared(net)
    p.run("onnx_export")
    session = ort.InferenceSession(str(p.onnx), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    assert len(inputs) == 1 and len(outputs) == 1, f"{net.name}: expected one ONNX input and one output"
    (out,) = session.run(None, {inputs[0].name: p.x.numpy()})
    assert_parity(out, p.ref, f"{net.name} ONNX")
