"""
Shared helpers of the Faster R-CNN fixture generator (make_fixture.py) and the PyTorch baseline
(reference.py): load the reference port (the LXMERT demo's modeling_frcnn.py / utils.py /
processing_image.py, NOT shipped with this repository) from a folder given on the command line
or in FRCNN_REF_DIR, with import-only stubs for cv2 / wget / filelock; build its Config from the
nested config dict; read and write safetensors with json + numpy (the Python `safetensors`
package is not needed).

Python is only used for fixtures and benchmark baselines; the project itself never needs it.
"""
import hashlib
import json
import os
import struct
import sys
import tempfile

import numpy as np

REF_FILES = {
    "modeling_frcnn.py": "1ddb6276a037e1c3073f833182045622cdbb6875b96a504781fa1705efe0f5c6",
    "utils.py": "ca4e31ed0e2294f93368f8eb428438eb90cd7d78cca42af336cd9dff42a2e59c",
    "processing_image.py": "e244075a8f073cc6fd41066325f9b5b870a0612a58f089895ab1e9490e8c6942",
}
STUBBED = ["cv2", "wget", "filelock"]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_reference(ref_dir=None, check_sha=True):
    """Imports the reference modules; returns (modeling_frcnn, processing_image, utils)."""
    ref_dir = ref_dir or os.environ.get("FRCNN_REF_DIR")
    if not ref_dir:
        sys.exit("give the folder holding the reference's modeling_frcnn.py, utils.py, processing_image.py "
                 "(--ref DIR or FRCNN_REF_DIR); see bench/extract/README.md")
    for name, digest in REF_FILES.items():
        p = os.path.join(ref_dir, name)
        if not os.path.isfile(p):
            sys.exit(f"missing {p}")
        if check_sha and sha256_file(p) != digest:
            sys.exit(f"{p}: sha256 differs from the pinned reference ({digest[:16]}...)")
    stub_dir = tempfile.mkdtemp(prefix="frcnn-stubs-")
    for m in STUBBED:
        with open(os.path.join(stub_dir, m + ".py"), "w") as f:
            f.write("# import-only stub (never used on the tensor-input path)\n")
            if m == "filelock":
                f.write("class FileLock:\n    def __init__(self, *a, **k):\n        raise RuntimeError('filelock stub')\n")
    # tqdm is imported by utils.py (download progress bars, never used here); stub it only when absent
    try:
        import tqdm.auto  # noqa: F401
    except ImportError:
        os.makedirs(os.path.join(stub_dir, "tqdm"))
        with open(os.path.join(stub_dir, "tqdm", "__init__.py"), "w") as f:
            f.write("# import-only stub\n")
        with open(os.path.join(stub_dir, "tqdm", "auto.py"), "w") as f:
            f.write("# import-only stub\ndef tqdm(*a, **k):\n    raise RuntimeError('tqdm stub')\n")
        STUBBED.append("tqdm")
    sys.path.insert(0, stub_dir)
    sys.path.insert(0, ref_dir)
    import modeling_frcnn  # noqa: E402
    import processing_image  # noqa: E402
    import utils  # noqa: E402
    return modeling_frcnn, processing_image, utils


def make_config(utils_mod, cfg_dict):
    cfg_dict = {k: v for k, v in cfg_dict.items() if k not in ("model_type", "object_names", "attribute_names")}
    return utils_mod.Config(cfg_dict)


# ---------------------------------------------------------------------------------------------
# safetensors with json + numpy

_DT = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
       "U8": np.uint8, "I8": np.int8, "BF16": None}
_DT_REV = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.float64): "F64",
           np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8"}


def read_safetensors(path, names=None):
    """Returns {name: np.ndarray} (BF16 widened to float32)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__" or (names is not None and name not in names):
                continue
            a, b = info["data_offsets"]
            f.seek(base + a)
            raw = f.read(b - a)
            if info["dtype"] == "BF16":
                u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                arr = u.view(np.float32)
            else:
                arr = np.frombuffer(raw, dtype=np.dtype(_DT[info["dtype"]]).newbyteorder("<")).copy()
            out[name] = arr.reshape(info["shape"])
    return out


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: np.ndarray}. Sorted by item size (desc) then name, so every tensor is aligned."""
    items = sorted(tensors.items(), key=lambda kv: (-np.asarray(kv[1]).dtype.itemsize, kv[0]))
    header, blobs, off = {}, [], 0
    for name, arr in items:
        arr = np.asarray(arr, order="C")
        dt = _DT_REV[arr.dtype]
        raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load_state_dict_into(model, tensors):
    """Loads {name: np.ndarray} (reference state-dict names) into the model, widened to its dtypes."""
    import torch
    sd = model.state_dict()
    missing = [k for k in sd if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in tensors if k not in sd]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing[:5]}..., unexpected {unexpected[:5]}...")
    new = {}
    for k, v in sd.items():
        if k in tensors:
            t = torch.from_numpy(np.asarray(tensors[k], order="C")).to(v.dtype)
            if tuple(t.shape) != tuple(v.shape):
                raise RuntimeError(f"{k}: shape {tuple(t.shape)} != {tuple(v.shape)}")
            new[k] = t
        else:
            new[k] = v
    model.load_state_dict(new, strict=True)
