"""SpikeYOLO checkpoints (BICLab/SpikeYOLO @ 309ef5e and its ``SpikeYOLO_for_Gen1``): read the
unpickled ``ultralytics.nn.tasks.DetectionModel`` and plan our ``SpikeYOLOv8`` and its name map.

The official model is ``DetectionModel.model``, an ``nn.Sequential`` of the 27 layers of
``snn_yolov8.yaml`` (``ultralytics/nn/modules/yolo_spikformer.py``); a layer with n > 1 repeats
is itself a Sequential. Our attributes carry the yaml index (``l2``, ``l9_sppf`` ...), so the
map is per block type (official attribute names -> ours):

- ``MS_DownSampling``: encode_conv / encode_bn -> cb.conv / cb.bn
- ``SepConv`` (``Conv`` of both blocks): pwconv1+bn1 -> sep.pw, dwconv2+bn2 -> sep.dw,
  pwconv3 (SepRepConv: body.0 = BNAndPadLayer, body.1.0 1x1, body.1.1 dw 3x3) + bn3 -> sep.out
- ``MS_StandardConv`` / ``SpikeConv``: conv / bn -> cb.conv / cb.bn
- ``MS_ConvBlock``: conv1 / conv2 (RepConv: body.0 1x1, body.1 BNAndPad, body.2.0 dw 3x3,
  body.2.1 1x1, body.2.2 BN) + bn1 / bn2 -> conv1 / conv2 (rep.pw1, rep.bnpad, rep.dw, rep.pw2,
  rep.bn, bn)
- ``SpikeDetect``: cv2[k] (box) / cv3[k] (cls) = SpikeConv, SpikeConv, SpikeConvWithoutBN ->
  head.k.box / head.k.cls (c1, c2, pred); dfl.conv -> dfl.conv.

Config: widths, repeats and the layer-25 ratio from the tensor shapes (the released 69M
checkpoint needs r = 2 at layer 25 while the shipped yaml says 1: the tensors decide, a
disagreeing yaml is reported), nc and names from the model, T from ``MS_GetT.T`` (COCO) or, for
Gen1 whose T comes from the data, 2 (the released gen1_yolo_T2) unless given, D from the
quantiser class (``MultiSpike4`` -> 4; the Gen1 bundle's spikingjelly fires ``quant4``: 4).
"""

from __future__ import annotations

from typing import Any

from spikedet.convert.official_ckpt import Opaque, attr, children, module_at, module_tensors
from spikedet.convert.official_plan import Pairs, Plan, blocks_of, short_class
from spikedet.errors import SpikedetError

# yaml layer index -> (official block class, our attribute; None = no parameters)
LAYERS: dict[int, tuple[str, str | None]] = {
    0: ("MS_GetT", None),
    1: ("MS_DownSampling", "l1_stem"),
    2: ("MS_AllConvBlock", "l2"),
    3: ("MS_DownSampling", "l3"),
    4: ("MS_AllConvBlock", "l4"),
    5: ("MS_DownSampling", "l5"),
    6: ("MS_ConvBlock", "l6"),
    7: ("MS_DownSampling", "l7"),
    8: ("MS_ConvBlock", "l8"),
    9: ("SpikeSPPF", "l9_sppf"),
    10: ("MS_StandardConv", "l10"),
    11: ("Upsample", None),
    12: ("MS_ConvBlock", "l12"),
    13: ("Concat", None),
    14: ("MS_StandardConv", "l14"),
    15: ("Upsample", None),
    16: ("MS_AllConvBlock", "l16"),
    17: ("Concat", None),
    18: ("MS_StandardConv", "l18"),
    19: ("MS_AllConvBlock", "l19"),
    20: ("MS_StandardConv", "l20"),
    21: ("Concat", None),
    22: ("MS_ConvBlock", "l22"),
    23: ("MS_StandardConv", "l23"),
    24: ("Concat", None),
    25: ("MS_ConvBlock", "l25"),
    26: ("SpikeDetect", None),
}
STAGES = (2, 4, 6, 8)  # our Sequential stages (always indexed, even with one block)
GEN1_T = 2  # the released Gen1 checkpoint: "23M, T=2, D=4" (gen1.yaml: gen1_yolo_T2)


def _std(off: str, ours: str) -> Pairs:
    return [(off + "conv.", ours + "cb.conv."), (off + "bn.", ours + "cb.bn.")]


def _sep(off: str, ours: str) -> Pairs:
    o, u = off + "Conv.", ours + "sep."
    return [
        (o + "pwconv1.", u + "pw.cb.conv."),
        (o + "bn1.", u + "pw.cb.bn."),
        (o + "dwconv2.", u + "dw.cb.conv."),
        (o + "bn2.", u + "dw.cb.bn."),
        (o + "pwconv3.body.0.bn.", u + "out.rep.bnpad.bn."),
        (o + "pwconv3.body.1.0.", u + "out.rep.pw."),
        (o + "pwconv3.body.1.1.", u + "out.rep.dw."),
        (o + "bn3.", u + "out.bn."),
    ]


def _rep(off: str, bn: str, ours: str) -> Pairs:
    return [
        (off + "body.0.", ours + "rep.pw1."),
        (off + "body.1.bn.", ours + "rep.bnpad.bn."),
        (off + "body.2.0.", ours + "rep.dw."),
        (off + "body.2.1.", ours + "rep.pw2."),
        (off + "body.2.2.", ours + "rep.bn."),
        (bn, ours + "bn."),
    ]


def block_pairs(kind: str, off: str, ours: str) -> Pairs:
    """The name map of one official block at ``off`` onto our block at ``ours``."""
    if kind == "MS_DownSampling":
        return [(off + "encode_conv.", ours + "cb.conv."), (off + "encode_bn.", ours + "cb.bn.")]
    if kind == "MS_StandardConv":
        return _std(off, ours)
    if kind == "MS_AllConvBlock":
        return (
            _sep(off, ours)
            + _std(off + "conv1.", ours + "conv1.")
            + _std(off + "conv2.", ours + "conv2.")
        )
    if kind == "MS_ConvBlock":
        return (
            _sep(off, ours)
            + _rep(off + "conv1.", off + "bn1.", ours + "conv1.")
            + _rep(off + "conv2.", off + "bn2.", ours + "conv2.")
        )
    if kind == "SpikeSPPF":
        return _std(off + "cv1.", ours + "cv1.") + _std(off + "cv2.", ours + "cv2.")
    if kind == "SpikeDetect":
        pairs: Pairs = [(off + "dfl.conv.", "dfl.conv.")]
        for k in range(3):
            for theirs, mine in (("cv2", "box"), ("cv3", "cls")):
                o, u = f"{off}{theirs}.{k}.", f"head.{k}.{mine}."
                pairs += _std(o + "0.", u + "c1.") + _std(o + "1.", u + "c2.")
                pairs.append((o + "2.conv.", u + "pred.cb.conv."))
        return pairs
    return []


def is_spikeyolo(root: Opaque) -> bool:
    layers = children(module_at(root, "model")) if module_at(root, "model") else {}
    return len(layers) == len(LAYERS) and short_class(layers["26"]) == "SpikeDetect"


def _neuron(root: Opaque, where: str) -> tuple[str, int]:
    """("coco", D) for mem_update + MultiSpike<D>, ("gen1", 4) for MultiStepLIFNode."""
    kinds: set[str] = set()
    levels: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        name = short_class(node)
        if name == "mem_update":
            quant = short_class(children(node).get("qtrick"))
            if not quant.startswith("MultiSpike") or not quant[10:].isdigit():
                raise SpikedetError(f"I-LIF quantiser {quant} is not MultiSpike<D>", where)
            kinds.add("coco")
            levels.add(int(quant[10:]))
        elif name == "MultiStepLIFNode":
            mem = attr(node, "_memories", {}) or {}
            tau, decay_input = attr(node, "tau"), attr(node, "decay_input", True)
            if tau != 2.0 or decay_input is not True or mem.get("v_reset", None) is not None:
                raise SpikedetError(
                    f"Gen1 LIF with tau={tau}, decay_input={decay_input}, "
                    f"v_reset={mem.get('v_reset')}: only the released tau=2 soft-reset form",
                    where,
                )
            kinds.add("gen1")
            levels.add(4)  # the bundled spikingjelly's surrogate is quant4 = round(clamp(v,0,4))
        stack.extend(children(node).values())
    if len(kinds) != 1 or len(levels) != 1:
        raise SpikedetError(f"neurons {sorted(kinds)} with D {sorted(levels)}: expected one", where)
    return kinds.pop(), levels.pop()


def _check_layers(layers: dict[str, Opaque], where: str) -> None:
    for i, (kind, _) in LAYERS.items():
        got = {short_class(b) for b in blocks_of(layers[str(i)])}
        if got != {kind}:
            raise SpikedetError(
                f"layer {i} is {sorted(got)}, expected {kind}: not the snn_yolov8.yaml layout",
                where,
            )


def _yaml_ratio(root: Opaque) -> Any:
    try:
        return attr(root, "yaml")["head"][15][3][0]
    except (TypeError, KeyError, IndexError):
        return None


def spikeyolo_plan(
    root: Opaque, where: str, args: dict[str, Any], T: int | None, model: str | None = None
) -> Plan:
    """Our config (a ``spikeyolo-*`` zoo entry with this checkpoint's fields) and name map.
    ``model``: use that zoo entry as it is (only the class names and ``T`` from here); a
    checkpoint that does not fit it fails in ``map_state``."""
    from spikedet.train.models.registry import SPIKEYOLO_NAMES, model_config

    layers = children(module_at(root, "model"))
    _check_layers(layers, where)
    tensors = module_tensors(module_at(root, "model"), "model.")

    def out_ch(i: int) -> int:
        return int(tensors[f"model.{i}.encode_conv.weight"].shape[0])

    widths = [out_ch(i) for i in (1, 3, 5, 7)]
    repeats = [len(blocks_of(layers[str(i)])) for i in STAGES]
    p5 = tensors["model.25.conv1.body.2.1.weight"].shape[0] // (2 * widths[2])
    neuron, levels = _neuron(module_at(root, "model"), where)
    detect = layers["26"]
    nc = int(attr(detect, "nc", tensors["model.26.cv3.0.2.conv.weight"].shape[0]))
    names_attr = attr(root, "names")
    names = [str(names_attr[i]) for i in range(nc)] if isinstance(names_attr, dict) else None
    notes: list[str] = []
    scale = next(
        (
            n
            for n in SPIKEYOLO_NAMES
            if n[len("spikeyolo-") :] in "nsml"
            and model_config(n)["widths"] == widths
            and model_config(n)["repeats"] == repeats
        ),
        None,
    )
    if scale is None:
        raise SpikedetError(f"widths {widths} / repeats {repeats} match no SpikeYOLO scale", where)
    if _yaml_ratio(root) not in (None, p5):
        notes.append(
            f"layer 25 ratio r={p5} from the tensors (the recorded yaml says {_yaml_ratio(root)})"
        )
    steps = int(attr(layers["0"], "T", 1)) if neuron == "coco" else GEN1_T
    if neuron == "gen1":
        notes.append(f"Gen1: T comes from the data; T={T or GEN1_T} (released: {GEN1_T})")
    name = "spikeyolo-s-gen1" if neuron == "gen1" and scale == "spikeyolo-s" else scale
    imgsz = int(args.get("imgsz") or (320 if neuron == "gen1" else 640))
    if model is not None:
        config = model_config(model, names=names, nc=nc if names is None else None, T=T)
        return Plan("spikeyolo", config, _pairs(layers), notes)
    config = model_config(
        name,
        names=names,
        nc=nc if names is None else None,
        T=T or steps,
        levels=levels,
        p5_ratio=int(p5),
        imgsz=imgsz,
        neuron=neuron,
        in_channels=int(tensors["model.1.encode_conv.weight"].shape[1]),
        sep_kernel=int(
            tensors[
                "model.2.Conv.dwconv2.weight"
                if repeats[0] == 1
                else "model.2.0.Conv.dwconv2.weight"
            ].shape[-1]
        ),
        reg_max=int(attr(detect, "reg_max", 16)),
    )
    return Plan("spikeyolo", config, _pairs(layers), notes)


def _pairs(layers: dict[str, Opaque]) -> Pairs:
    pairs: Pairs = []
    for i, (kind, ours) in LAYERS.items():
        blocks = blocks_of(layers[str(i)])
        for j, _ in enumerate(blocks):
            off = f"model.{i}." + (f"{j}." if len(blocks) > 1 else "")
            mine = "" if ours is None else ours + "." + (f"{j}." if i in STAGES else "")
            pairs += block_pairs(kind, off, mine)
    return pairs
