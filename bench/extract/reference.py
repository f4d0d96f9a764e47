#!/usr/bin/python3
"""
PyTorch baseline of the region-feature extraction benchmark: the reference port's
`Preprocess` + `GeneralizedRCNN.forward` (the LXMERT demo's modeling_frcnn.py, utils.py,
processing_image.py, loaded from --ref or FRCNN_REF_DIR; not shipped here) on the CPU in float32,
with the weights of a detector folder (config.json + model.safetensors, reference state-dict
names; weights.safetensors of a fixture folder also works; F16/BF16 storage is widened to float32).

  time    (default) times each image: median of --runs after --warmup, peak RSS, BLAS info; with
          several --threads values ("1,2") each setting runs in its own process (torch threads =
          OPENBLAS_NUM_THREADS = N) and the fastest is named
  serve   for bench/extract/run.ts: prints {"ready": true, ...}, then answers one JSON line per
          request line {"op": "detect", "name": "img0"} with {"seconds", "cpu_seconds", "num_boxes"};
          "rss" -> {"max_rss_bytes", "rss_bytes"}; "quit" ends it

Images: --inputs FILE.safetensors (U8 `<name>/rgb` [H, W, 3] RGB), else synthetic images of
--sizes (HxW,...).

OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from THIS process's environment before torch
loads OpenBLAS (some machines set them, which makes OpenBLAS pick a slower kernel); the values that
were set are reported.

  /usr/bin/python3 bench/extract/reference.py --ref /tmp/ref --detector DIR --threads 1,2
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REMOVED_ENV = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
# a re-executed child learns what its parent removed
REMOVED_ENV = REMOVED_ENV or __import__("json").loads(os.environ.get("_FRCNN_REMOVED_ENV", "{}"))
os.environ["_FRCNN_REMOVED_ENV"] = __import__("json").dumps(REMOVED_ENV)

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import frcnn_ref  # noqa: E402


def max_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def blas_info(torch):
    info = {"removed_env": REMOVED_ENV, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    try:
        from threadpoolctl import threadpool_info
        info["threadpoolctl"] = threadpool_info()
    except ImportError:
        info["parallel_info"] = torch.__config__.parallel_info()
    info["config"] = torch.__config__.show()
    libs = set()
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split()[-1]
            if "blas" in os.path.basename(p).lower() or "lapack" in os.path.basename(p).lower():
                libs.add(p)
    info["blas_libraries"] = sorted(libs)
    for p in sorted(libs):
        try:
            lib = ctypes.CDLL(p)
            if hasattr(lib, "openblas_get_corename"):
                lib.openblas_get_corename.restype = ctypes.c_char_p
                lib.openblas_get_config.restype = ctypes.c_char_p
                info["openblas_corename"] = lib.openblas_get_corename().decode()
                info["openblas_config"] = lib.openblas_get_config().decode()
                if hasattr(lib, "openblas_get_num_threads"):
                    info["openblas_num_threads"] = lib.openblas_get_num_threads()
        except OSError:
            pass
    return info


def load_images(args):
    if args.inputs:
        t = frcnn_ref.read_safetensors(args.inputs)
        return {k[: -len("/rgb")]: v for k, v in sorted(t.items()) if k.endswith("/rgb")}
    from make_fixture import synth_image
    out = {}
    for i, s in enumerate(args.sizes.split(",")):
        H, W = [int(x) for x in s.split("x")]
        out[f"img{i}"] = synth_image(H, W, 500 + i)
    return out


def build(args):
    mf, pi, ut = frcnn_ref.load_reference(args.ref)
    import torch
    torch.set_num_threads(args.threads_one)
    cfg_path = os.path.join(args.detector, "config.json")
    cfg_dict = json.load(open(cfg_path))
    cfg = frcnn_ref.make_config(ut, cfg_dict)
    model = mf.GeneralizedRCNN(cfg)
    wpath = next((os.path.join(args.detector, n) for n in ("model.safetensors", "weights.safetensors")
                  if os.path.isfile(os.path.join(args.detector, n))), None)
    if wpath is None:
        sys.exit(f"{args.detector}: no model.safetensors / weights.safetensors")
    frcnn_ref.load_state_dict_into(model, frcnn_ref.read_safetensors(wpath))
    model.eval()
    pre = pi.Preprocess(cfg)

    def detect(rgb):
        bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1]))
        with torch.no_grad():
            images, sizes, scales_yx = pre(bgr)
            out = model(images, sizes, scales_yx=scales_yx, padding="max_detections",
                        max_detections=cfg.MAX_DETECTIONS, return_tensors="pt")
        return int(out["preds_per_image"][0])

    return torch, detect


def timed(detect, rgb):
    c0, t0 = time.process_time(), time.perf_counter()
    n = detect(rgb)
    return time.perf_counter() - t0, time.process_time() - c0, n


def run_one_setting(args):
    torch, detect = build(args)
    imgs = load_images(args)
    rss_loaded = current_rss_bytes()
    res = {"threads": args.threads_one, "images": {}}
    for name, rgb in imgs.items():
        for _ in range(args.warmup):
            detect(rgb)
        runs = [timed(detect, rgb) for _ in range(args.runs)]
        res["images"][name] = {"raw_hw": list(rgb.shape[:2]), "seconds": [round(r[0], 3) for r in runs],
                               "median_s": statistics.median(r[0] for r in runs),
                               "cpu_seconds_median": statistics.median(r[1] for r in runs), "num_boxes": runs[0][2]}
    res["median_s_per_image"] = statistics.median(v["median_s"] for v in res["images"].values())
    res["rss_after_load_bytes"] = rss_loaded
    res["peak_rss_bytes"] = max_rss_bytes()
    res["blas"] = blas_info(torch)
    return res


def serve(args):
    torch, detect = build(args)
    imgs = load_images(args)
    print(json.dumps({"ready": True, "side": "pytorch", "threads": args.threads_one, "images": sorted(imgs),
                      "rss_bytes": current_rss_bytes(), "blas": blas_info(torch)}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line == "quit":
            break
        if line == "rss":
            print(json.dumps({"max_rss_bytes": max_rss_bytes(), "rss_bytes": current_rss_bytes()}), flush=True)
            continue
        try:
            req = json.loads(line)
            wall, cpu, n = timed(detect, imgs[req["name"]])
            print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "num_boxes": n}), flush=True)
        except Exception as e:  # noqa: BLE001
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", choices=["time", "serve"], default="time")
    ap.add_argument("--ref", default=None)
    ap.add_argument("--detector", required=True, help="folder with config.json + model.safetensors (or weights.safetensors)")
    ap.add_argument("--inputs", default=None, help="safetensors of U8 <name>/rgb images")
    ap.add_argument("--sizes", default="600x800,750x1000", help="synthetic images HxW,... when no --inputs")
    ap.add_argument("--threads", default="2", help="torch threads (= OPENBLAS_NUM_THREADS); several: '1,2'")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args()
    settings = [int(x) for x in args.threads.split(",")]
    if args.mode == "serve" or len(settings) == 1:
        args.threads_one = settings[0]
        if os.environ.get("OPENBLAS_NUM_THREADS") != str(settings[0]) and not os.environ.get("_FRCNN_CHILD"):
            # OpenBLAS reads its thread count at load time: re-run with it set
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(settings[0]), _FRCNN_CHILD="1")
            os.execve(sys.executable, [sys.executable] + sys.argv, env)
        if args.mode == "serve":
            return serve(args)
        result = {"settings": [run_one_setting(args)]}
    else:
        result = {"settings": []}
        for n in settings:
            argv = [a for a in sys.argv[1:]]
            i = argv.index("--threads")
            argv[i + 1] = str(n)
            if "--json" in argv:
                j = argv.index("--json")
                del argv[j: j + 2]
            env = dict(os.environ, OPENBLAS_NUM_THREADS=str(n), _FRCNN_CHILD="1")
            out = subprocess.run([sys.executable, os.path.abspath(__file__)] + argv, env=env, check=True,
                                 stdout=subprocess.PIPE).stdout.decode()
            result["settings"].extend(json.loads(out.strip().splitlines()[-1])["settings"])
    best = min(result["settings"], key=lambda s: s["median_s_per_image"])
    result["fastest_threads"] = best["threads"]
    result["removed_env"] = REMOVED_ENV
    for s in result["settings"]:
        print(f"threads {s['threads']}: {s['median_s_per_image']:.2f} s/image (median), peak RSS "
              f"{s['peak_rss_bytes'] / 2**30:.2f} GiB, OpenBLAS core {s['blas'].get('openblas_corename')}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
