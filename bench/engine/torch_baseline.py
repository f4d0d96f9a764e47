#!/usr/bin/env python3
"""PyTorch (eager, CPU, float32) side of bench/engine: the same BERT encoder stack as
bench/engine/bert.ts, timed on request.

Run with Debian's python3-torch: /usr/bin/python3 bench/engine/torch_baseline.py ...
Thread settings come from the command line (torch intra-op threads) and from the
OPENBLAS_NUM_THREADS environment variable, which must be set before torch is imported
(the TypeScript driver sets it when it spawns this script).

  serve  --layers 12 --batch 8 --seq 128 --threads 1
         Builds the model, prints one JSON line {"ready": ...}, then answers each stdin line
         "forward" | "forward_backward" | "gemm" | "rss" with one JSON line; "quit" ends.
  parity --dir D
         Reads D/weights.safetensors and D/inputs.safetensors (written by the TypeScript
         worker), writes D/torch_out.safetensors with "output", "loss" and "grad:<name>".
"""
import argparse
import json
import math
import os
import resource
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-12

NP_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "BOOL": np.bool_}


def read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    (hlen,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + hlen])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if info["dtype"] not in NP_DTYPES:
            raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
        arr = np.frombuffer(buf[8 + hlen + begin : 8 + hlen + end], dtype=NP_DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def write_safetensors(path, tensors):
    """float32 tensors only; header padded to 8 bytes; written to a temporary file, then renamed."""
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    hjson = json.dumps(header).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def param_shapes(layers, hidden=768, intermediate=3072):
    shapes = []
    for l in range(layers):
        p = f"encoder.layer.{l}"
        for proj in ("query", "key", "value"):
            shapes += [(f"{p}.attention.self.{proj}.weight", (hidden, hidden)), (f"{p}.attention.self.{proj}.bias", (hidden,))]
        shapes += [
            (f"{p}.attention.output.dense.weight", (hidden, hidden)),
            (f"{p}.attention.output.dense.bias", (hidden,)),
            (f"{p}.attention.output.LayerNorm.weight", (hidden,)),
            (f"{p}.attention.output.LayerNorm.bias", (hidden,)),
            (f"{p}.intermediate.dense.weight", (intermediate, hidden)),
            (f"{p}.intermediate.dense.bias", (intermediate,)),
            (f"{p}.output.dense.weight", (hidden, intermediate)),
            (f"{p}.output.dense.bias", (hidden,)),
            (f"{p}.output.LayerNorm.weight", (hidden,)),
            (f"{p}.output.LayerNorm.bias", (hidden,)),
        ]
    return shapes


def encoder(x, mask, params, layers, heads=12):
    """Post-LN BERT layers; mask is [B, T] with 1 for tokens, 0 for padding."""
    B, T, H = x.shape
    dh = H // heads
    key_bias = ((1.0 - mask) * -10000.0)[:, None, None, :]

    def split_heads(t):
        return t.view(B, T, heads, dh).transpose(1, 2)

    for l in range(layers):
        P = lambda n: params[f"encoder.layer.{l}.{n}"]
        q = split_heads(F.linear(x, P("attention.self.query.weight"), P("attention.self.query.bias")))
        k = split_heads(F.linear(x, P("attention.self.key.weight"), P("attention.self.key.bias")))
        v = split_heads(F.linear(x, P("attention.self.value.weight"), P("attention.self.value.bias")))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh) + key_bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(B, T, H)
        attended = F.layer_norm(
            F.linear(context, P("attention.output.dense.weight"), P("attention.output.dense.bias")) + x,
            (H,), P("attention.output.LayerNorm.weight"), P("attention.output.LayerNorm.bias"), EPS,
        )
        inter = F.gelu(F.linear(attended, P("intermediate.dense.weight"), P("intermediate.dense.bias")))
        x = F.layer_norm(
            F.linear(inter, P("output.dense.weight"), P("output.dense.bias")) + attended,
            (H,), P("output.LayerNorm.weight"), P("output.LayerNorm.bias"), EPS,
        )
    return x


def random_model(layers, batch, seq):
    g = torch.Generator().manual_seed(0)
    params = {}
    for name, shape in param_shapes(layers):
        if name.endswith("LayerNorm.weight"):
            t = torch.ones(shape)
        elif name.endswith(".weight"):
            t = torch.randn(shape, generator=g) * 0.02
        else:
            t = torch.zeros(shape)
        params[name] = t.requires_grad_(True)
    x = torch.randn(batch, seq, 768, generator=g)
    projection = torch.randn(batch, seq, 768, generator=g) / math.sqrt(768)
    mask = torch.zeros(batch, seq)
    fractions = [1, 0.94, 0.78, 1, 0.5, 0.7, 1, 0.86]  # same padding pattern as bert.ts
    for b in range(batch):
        mask[b, : max(1, round(seq * fractions[b % len(fractions)]))] = 1
    return params, x, mask, projection


def loaded_blas_libraries():
    """The BLAS shared objects this process has mapped (after one matmul has run)."""
    torch.mm(torch.ones(64, 64), torch.ones(64, 64))
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "blas" in line.lower() and "/" in line}
    return sorted(os.path.realpath(p) for p in libs)


def max_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def serve(args):
    torch.set_num_threads(args.threads)
    params, x, mask, projection = random_model(args.layers, args.batch, args.seq)

    def forward():
        with torch.no_grad():
            return encoder(x, mask, params, args.layers)

    def forward_backward():
        for p in params.values():
            p.grad = None
        loss = (encoder(x, mask, params, args.layers) * projection).sum()
        loss.backward()
        return loss

    # The largest GEMM of the model alone (FFN up-projection), as in worker.ts.
    gemm_x = torch.sin(torch.arange(args.batch * args.seq * 768, dtype=torch.float32)).reshape(-1, 768) * 0.05
    gemm_w = torch.sin(torch.arange(3072 * 768, dtype=torch.float32)).reshape(3072, 768) * 0.05

    def gemm():
        with torch.no_grad():
            return F.linear(gemm_x, gemm_w).sum()

    phases = {"forward": forward, "forward_backward": forward_backward, "gemm": gemm}
    ready = {
        "ready": True,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "blas_libraries": loaded_blas_libraries(),
    }
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd == "rss":
            print(json.dumps({"max_rss_bytes": max_rss_bytes()}), flush=True)
            continue
        if cmd not in phases:
            print(json.dumps({"error": f"unknown command '{cmd}'"}), flush=True)
            continue
        start, cpu = time.perf_counter(), time.process_time()
        phases[cmd]()
        print(json.dumps({"phase": cmd, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}), flush=True)


def parity(args):
    weights = read_safetensors(os.path.join(args.dir, "weights.safetensors"))
    inputs = read_safetensors(os.path.join(args.dir, "inputs.safetensors"))
    layers = len({n.split(".")[2] for n in weights})
    params = {n: torch.from_numpy(v).requires_grad_(True) for n, v in weights.items()}
    out = encoder(torch.from_numpy(inputs["hidden_states"]), torch.from_numpy(inputs["attention_mask"]), params, layers)
    loss = (out * torch.from_numpy(inputs["projection"])).sum()
    loss.backward()
    result = {"output": out.detach().numpy(), "loss": loss.detach().numpy().reshape(())}
    for n, p in params.items():
        result[f"grad:{n}"] = p.grad.numpy()
    write_safetensors(os.path.join(args.dir, "torch_out.safetensors"), result)
    print(json.dumps({"layers": layers, "written": os.path.join(args.dir, "torch_out.safetensors")}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--layers", type=int, default=12)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--seq", type=int, default=128)
    s.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("parity")
    p.add_argument("--dir", required=True)
    args = ap.parse_args()
    torch.set_num_threads(getattr(args, "threads", 1))
    serve(args) if args.cmd == "serve" else parity(args)


if __name__ == "__main__":
    main()
