"""Channel pruning on torch-built ResNet-, MobileNet- (depthwise, ReLU6) and DenseNet-style (concat)
networks, exported at run time by both torch exporters: groups, and the slim model against the
masked one (``onnx_pathlift.pruning.channels``, ``onnx_pathlift.pruning.slim``)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from checks import analyse, group_of, slim_error

from onnx_pathlift.fileio.load import load_model
from onnx_pathlift.pruning.ranking import prune_channels

torch = pytest.importorskip("torch")
import torch_archs  # noqa: E402
from torch import nn  # noqa: E402


def _resnet_style() -> nn.Module:
    down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
    return nn.Sequential(torch_archs.conv_bn(3, 8, 3, 1, 1), torch_archs.BasicBlock(8, 8),
                         torch_archs.BasicBlock(8, 16, 2, down), torch_archs.BasicBlock(16, 16),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def _mobilenet_style() -> nn.Module:
    ir = torch_archs.InvertedResidualV2
    return nn.Sequential(torch_archs.conv_bn(3, 8, 3, 2, 1, act=nn.ReLU6), ir(8, 8, 1, 1), ir(8, 8, 1, 6),
                         ir(8, 16, 2, 6), ir(16, 16, 1, 6), torch_archs.conv_bn(16, 32, 1, act=nn.ReLU6),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 5))


def _densenet_style() -> nn.Module:
    return torch_archs.DenseNet(growth=4, block_config=(2, 3), num_init_features=8, bn_size=2, num_classes=5)


TORCH_NETS = {"resnet": _resnet_style, "mobilenet": _mobilenet_style, "densenet": _densenet_style}


def _export(name: str, exporter: str, folder: Path) -> onnx.ModelProto:
    """TorchScript exporter at opset 13, or the dynamo exporter at opset 18 (needs onnxscript)."""
    torch.manual_seed(0)
    net = torch_archs.randomise(TORCH_NETS[name](), 1).eval()
    path = folder / f"{name}_{exporter}.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=exporter == "dynamo",
                      opset_version=13 if exporter == "torchscript" else 18, input_names=["input"],
                      output_names=["logits"], **({"verbose": False} if exporter == "dynamo" else {}))
    return load_model(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, onnx.ModelProto]:
    folder = tmp_path_factory.mktemp("nets")
    return {name: _export(name, "torchscript", folder) for name in TORCH_NETS}


@pytest.mark.parametrize("criterion,scope", [("path-mass", "global"), ("l1-norm", "layer")])
@pytest.mark.parametrize("name", sorted(TORCH_NETS))
def test_slim_reproduces_masked_on_torch_nets(exported, name: str, criterion: str, scope: str) -> None:
    model = exported[name]
    p, dag, _ = analyse(model)
    result = prune_channels(model, p, dag, 0.5, criterion, scope)
    assert result.removed
    assert slim_error(result.masked, result.slim, p) <= 1e-5
    onnx.checker.check_model(result.slim, full_check=True)
    assert sum(t.ByteSize() for t in result.slim.graph.initializer) < 0.8 * sum(
        t.ByteSize() for t in model.graph.initializer)
    assert [n.op_type for n in result.slim.graph.node] == [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("name", sorted(TORCH_NETS))
def test_dynamo_exports_prune_to_the_head(tmp_path, name: str) -> None:
    """The dynamo exporter writes the adaptive average pool as ReduceMean over H, W: per channel, so
    only the graph's input and output channels are kept."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model = _export(name, "dynamo", tmp_path)
    p, dag, _ = analyse(model)
    result = prune_channels(model, p, dag, 0.5, "path-mass", "layer")
    assert {r["reason"].split(" '")[0] for r in result.pinned()} == {"channel of the graph input",
                                                                      "channel of the graph output"}
    assert slim_error(result.masked, result.slim, p) <= 1e-5


def test_torch_net_groups(exported) -> None:
    """Depthwise convs join their input and output channels; DenseNet's concat channels are groups
    read by every later layer's BatchNormalization and 1x1 conv; a ResNet stage's stream is one group
    per channel across its blocks."""
    _, _, cg = analyse(exported["mobilenet"])
    dw = [n for n in exported["mobilenet"].graph.node if n.op_type == "Conv" and
          any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert dw and all(group_of(cg, n.input[0], 0) == group_of(cg, n.output[0], 0) for n in dw)
    _, _, cg = analyse(exported["densenet"])
    concat = [n for n in exported["densenet"].graph.node if n.op_type == "Concat"]
    first = group_of(cg, concat[0].input[0], 0)
    assert all(group_of(cg, n.output[0], 0) == first for n in concat[:2])
    assert len({e[0] for e in cg.groups[first].sinks}) >= 3
    _, _, cg = analyse(exported["resnet"])
    adds = [n for n in exported["resnet"].graph.node if n.op_type == "Add"]
    assert group_of(cg, adds[1].output[0], 3) == group_of(cg, adds[2].output[0], 3)
