#!/usr/bin/env python3
"""PyTorch (eager, CPU, float32) side of bench/uniter: UNITER written for the benchmark with the
architecture of the official code (ChenRocks/UNITER), timed on request.

  text embeddings (word + position + type 0, LayerNorm, dropout) and image embeddings
  (LN(img_linear) + LN(pos_linear) + type 1, LayerNorm, dropout); the compact sequence
  cat(text, regions) gathered by gather_index; post-LN BERT layers (erf GELU, LayerNorm eps
  1e-12, additive -10000 key mask); pooler; MLM head (decoder tied to the word embeddings,
  masked positions selected before the head); ITM head; WRA: last layer scattered by
  ot_scatter, cosine cost, IPOT (beta 0.5, 50 iterations, k 1; the math of model/ot.py),
  signed OT loss x 0.1; AdamW as optim/adamw.py (betas 0.9/0.98, eps 1e-6, decay 0.01 except
  bias/LayerNorm), gradient clipping at 5.

Run with Debian's python3-torch: /usr/bin/python3 bench/uniter/torch_uniter.py ...
OPENBLAS_NUM_THREADS must be set before torch loads (the TypeScript driver sets it).

A fair baseline: OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE are removed from THIS process's
environment before torch loads OpenBLAS (some machines set them, e.g. CORETYPE=Haswell, which
makes OpenBLAS use older, slower kernels than the CPU supports); the values that were set and the
kernel OpenBLAS then chose (openblas_get_corename) are reported in the "ready" line.

  serve  [--layers 12] [--threads 1] [--seed 1]
         Builds the base model, prints one JSON line {"ready": ...}, then answers the requests
         of bench/uniter/worker.ts (train / infer / ipot / gemm / rss / quit), one JSON line each.
  parity --dir D
         Reads D/config.json, D/weights.safetensors and D/{mlm,itm,ipot}.safetensors (written
         by the TypeScript worker), writes D/torch_out.safetensors with the same names as the
         engine's D/engine_out.safetensors.
"""
import argparse
import ctypes
import json
import math
import os
import sys
import time

# Before torch (and so OpenBLAS) is loaded: OpenBLAS reads these once, at load time.
REMOVED_ENV = {k: os.environ.pop(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "engine"))
from torch_baseline import loaded_blas_libraries, max_rss_bytes, read_safetensors, write_safetensors  # noqa: E402

LN_EPS = 1e-12
BASE = {
    "vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
    "img_dim": 2048, "img_label_dim": 1601,
}
OT_BETA, OT_ITERATIONS, OT_K, OT_LAMBDA = 0.5, 50, 1, 0.1
LEARNING_RATE, GRAD_CLIP = 5e-5, 5.0


# ---------------------------------------------------------------------------------------------
# Parameters by official state_dict name (the tied MLM decoder is the word embedding tensor)

def param_specs(cfg):
    H, I = cfg["hidden_size"], cfg["intermediate_size"]
    specs = []

    def linear(name, out, inp):
        specs.extend([(f"{name}.weight", (out, inp), "normal"), (f"{name}.bias", (out,), "zeros")])

    def ln(name, h):
        specs.extend([(f"{name}.weight", (h,), "ones"), (f"{name}.bias", (h,), "zeros")])

    specs.append(("uniter.embeddings.word_embeddings.weight", (cfg["vocab_size"], H), "normal"))
    specs.append(("uniter.embeddings.position_embeddings.weight", (cfg["max_position_embeddings"], H), "normal"))
    specs.append(("uniter.embeddings.token_type_embeddings.weight", (cfg["type_vocab_size"], H), "normal"))
    ln("uniter.embeddings.LayerNorm", H)
    linear("uniter.img_embeddings.img_linear", H, cfg["img_dim"])
    ln("uniter.img_embeddings.img_layer_norm", H)
    ln("uniter.img_embeddings.pos_layer_norm", H)
    linear("uniter.img_embeddings.pos_linear", H, 7)
    specs.append(("uniter.img_embeddings.mask_embedding.weight", (2, cfg["img_dim"]), "normal"))
    ln("uniter.img_embeddings.LayerNorm", H)
    for l in range(cfg["num_hidden_layers"]):
        p = f"uniter.encoder.layer.{l}"
        for proj in ("query", "key", "value"):
            linear(f"{p}.attention.self.{proj}", H, H)
        linear(f"{p}.attention.output.dense", H, H)
        ln(f"{p}.attention.output.LayerNorm", H)
        linear(f"{p}.intermediate.dense", I, H)
        linear(f"{p}.output.dense", H, I)
        ln(f"{p}.output.LayerNorm", H)
    linear("uniter.pooler.dense", H, H)
    specs.append(("cls.predictions.bias", (cfg["vocab_size"],), "zeros"))
    linear("cls.predictions.transform.dense", H, H)
    ln("cls.predictions.transform.LayerNorm", H)
    specs.append(("feat_regress.bias", (cfg["img_dim"],), "zeros"))
    linear("feat_regress.net.0", H, H)
    ln("feat_regress.net.2", H)
    linear("region_classifier.net.0", H, H)
    ln("region_classifier.net.2", H)
    linear("region_classifier.net.3", cfg["img_label_dim"], H)
    linear("itm_output", 2, H)
    return specs


def fresh_params(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape, init in param_specs(cfg):
        if init == "normal":
            t = torch.randn(shape, generator=g) * cfg["initializer_range"]
        elif init == "ones":
            t = torch.ones(shape)
        else:
            t = torch.zeros(shape)
        params[name] = t.requires_grad_(True)
    return params


# ---------------------------------------------------------------------------------------------
# The model

def layer_norm(P, name, x):
    return F.layer_norm(x, (x.size(-1),), P[f"{name}.weight"], P[f"{name}.bias"], LN_EPS)


def dense(P, name, x):
    return F.linear(x, P[f"{name}.weight"], P.get(f"{name}.bias"))


def uniter_forward(P, cfg, b, training):
    """UniterModel.forward: the last layer's output [B, Lj, H]."""
    H, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    p_hidden = cfg["hidden_dropout_prob"]
    p_attn = cfg["attention_probs_dropout_prob"]
    ids = b["input_ids"]
    words = F.embedding(ids, P["uniter.embeddings.word_embeddings.weight"], padding_idx=0)
    pos = F.embedding(b["position_ids"], P["uniter.embeddings.position_embeddings.weight"])
    types = F.embedding(torch.zeros_like(ids), P["uniter.embeddings.token_type_embeddings.weight"])
    txt = F.dropout(layer_norm(P, "uniter.embeddings.LayerNorm", words + pos + types), p_hidden, training)

    img_feat = b["img_feat"]
    im = layer_norm(P, "uniter.img_embeddings.img_layer_norm", dense(P, "uniter.img_embeddings.img_linear", img_feat))
    ipos = layer_norm(P, "uniter.img_embeddings.pos_layer_norm", dense(P, "uniter.img_embeddings.pos_linear", b["img_pos_feat"]))
    img_types = F.embedding(torch.ones(img_feat.shape[:2], dtype=torch.long), P["uniter.embeddings.token_type_embeddings.weight"])
    img = F.dropout(layer_norm(P, "uniter.img_embeddings.LayerNorm", im + ipos + img_types), p_hidden, training)

    gather_index = b["gather_index"].unsqueeze(-1).expand(-1, -1, H)
    x = torch.gather(torch.cat([txt, img], dim=1), 1, gather_index)
    mask = (1.0 - b["attn_masks"].to(x.dtype))[:, None, None, :] * -10000.0
    B, T = x.shape[:2]
    dh = H // heads

    def split(t):
        return t.view(B, T, heads, dh).transpose(1, 2)

    for l in range(cfg["num_hidden_layers"]):
        p = f"uniter.encoder.layer.{l}"
        q = split(dense(P, f"{p}.attention.self.query", x))
        k = split(dense(P, f"{p}.attention.self.key", x))
        v = split(dense(P, f"{p}.attention.self.value", x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh) + mask
        probs = F.dropout(torch.softmax(scores, dim=-1), p_attn, training)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(B, T, H)
        attn_out = F.dropout(dense(P, f"{p}.attention.output.dense", ctx), p_hidden, training)
        a = layer_norm(P, f"{p}.attention.output.LayerNorm", attn_out + x)
        inter = F.gelu(dense(P, f"{p}.intermediate.dense", a))
        out = F.dropout(dense(P, f"{p}.output.dense", inter), p_hidden, training)
        x = layer_norm(P, f"{p}.output.LayerNorm", out + a)
    return x


def mlm_loss(P, cfg, b, training):
    seq = uniter_forward(P, cfg, b, training)
    labels = b["txt_labels"]
    Lt = b["input_ids"].size(1)
    masked = labels != -1
    hidden = seq[:, :Lt][masked]  # masked positions only, before the head (as the official code)
    h = layer_norm(P, "cls.predictions.transform.LayerNorm", F.gelu(dense(P, "cls.predictions.transform.dense", hidden)))
    logits = F.linear(h, P["uniter.embeddings.word_embeddings.weight"], P["cls.predictions.bias"])
    return {"loss": F.cross_entropy(logits, labels[masked], reduction="none").mean()}


def cost_matrix_cosine(x, y, eps=1e-5):
    return 1 - F.normalize(x, p=2, dim=-1, eps=eps).matmul(F.normalize(y, p=2, dim=-1, eps=eps).transpose(1, 2))


@torch.no_grad()
def ipot(C, x_len, x_pad, y_len, y_pad, joint_pad, beta, iterations, k):
    """The transport plan [B, N, M] for cost [B, M, N] (the iteration of model/ot.py)."""
    b, m, n = C.size()
    sigma = torch.ones(b, m, dtype=C.dtype) / x_len.unsqueeze(1)
    T = torch.ones(b, n, m, dtype=C.dtype)
    A = torch.exp(-C.transpose(1, 2) / beta)
    sigma.masked_fill_(x_pad, 0)
    joint_pad = joint_pad.transpose(1, 2)
    T.masked_fill_(joint_pad, 0)
    A.masked_fill_(joint_pad, 0)
    x_len = x_len.unsqueeze(1).unsqueeze(2)
    y_len = y_len.unsqueeze(1).unsqueeze(2)
    x_mask = (x_pad.to(C.dtype) * 1e4).unsqueeze(1)
    y_mask = (y_pad.to(C.dtype) * 1e4).unsqueeze(1)
    for _ in range(iterations):
        Q = A * T
        sigma = sigma.view(b, m, 1)
        for _ in range(k):
            delta = 1 / (y_len * Q.matmul(sigma).view(b, 1, n) + y_mask)
            sigma = 1 / (x_len * delta.matmul(Q) + x_mask)
        T = delta.view(b, n, 1) * Q * sigma
    T.masked_fill_(joint_pad, 0)
    return T


def ipot_plan(cost, txt_pad, img_pad):
    """IPOT on a given (already masked) cost, as optimal_transport_dist calls it."""
    joint_pad = txt_pad.unsqueeze(-1) | img_pad.unsqueeze(-2)
    txt_len = (txt_pad.size(1) - txt_pad.sum(dim=1)).to(cost.dtype)
    img_len = (img_pad.size(1) - img_pad.sum(dim=1)).to(cost.dtype)
    return ipot(cost, txt_len, txt_pad, img_len, img_pad, joint_pad, OT_BETA, OT_ITERATIONS, OT_K)


def optimal_transport_dist(txt_emb, img_emb, txt_pad, img_pad):
    cost = cost_matrix_cosine(txt_emb, img_emb)
    joint_pad = txt_pad.unsqueeze(-1) | img_pad.unsqueeze(-2)
    cost = cost.masked_fill(joint_pad, 0)
    T = ipot_plan(cost.detach(), txt_pad, img_pad)
    return torch.diagonal(cost.matmul(T.detach()), dim1=1, dim2=2).sum(-1)


def itm_outputs(P, cfg, b, training, ot=True):
    seq = uniter_forward(P, cfg, b, training)
    pooled = torch.tanh(dense(P, "uniter.pooler.dense", seq[:, 0]))
    itm_scores = dense(P, "itm_output", pooled)
    out = {"itm_scores": itm_scores}
    if "targets" not in b:
        return out
    targets = b["targets"]
    out["itm_loss"] = F.cross_entropy(itm_scores, targets)
    out["loss"] = out["itm_loss"]
    if ot:
        Lt, N = b["input_ids"].size(1), b["img_feat"].size(1)
        scatter = b["ot_inputs.ot_scatter"]
        width = max(int(scatter.max()) + 1, Lt + N)
        ctx = torch.zeros(seq.size(0), width, seq.size(2), dtype=seq.dtype).scatter(1, scatter.unsqueeze(-1).expand_as(seq), seq)
        dist = optimal_transport_dist(ctx[:, :Lt], ctx[:, Lt:Lt + N], b["ot_inputs.txt_pad"], b["ot_inputs.img_pad"])
        pos, neg = dist[targets == 1], dist[targets == 0]
        out["ot_dist"] = dist
        out["ot_loss"] = (pos.sum() - neg.sum()) / (pos.size(0) + neg.size(0))
        out["loss"] = out["itm_loss"] + OT_LAMBDA * out["ot_loss"]
    return out


# ---------------------------------------------------------------------------------------------
# AdamW of optim/adamw.py (decoupled decay after the Adam update) and clipping

class AdamW:
    def __init__(self, params, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01):
        self.params = params
        self.betas, self.eps = betas, eps
        no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
        self.decay = {n: (0.0 if any(s in n for s in no_decay) else weight_decay) for n in params}
        self.state = {}

    @torch.no_grad()
    def step(self, lr):
        b1, b2 = self.betas
        for name, p in self.params.items():
            if p.grad is None:
                continue
            st = self.state.setdefault(name, {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)})
            st["step"] += 1
            m, v, g = st["exp_avg"], st["exp_avg_sq"], p.grad
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.sqrt().add_(self.eps)
            step_size = lr * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
            p.addcdiv_(m, denom, value=-step_size)
            if self.decay[name] > 0:
                p.add_(p, alpha=-lr * self.decay[name])


# ---------------------------------------------------------------------------------------------

def openblas_info():
    """The kernel OpenBLAS chose (core name) and its build config, for every OpenBLAS mapped."""
    out = {"removed_env": REMOVED_ENV}
    for p in loaded_blas_libraries():
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        if hasattr(lib, "openblas_get_corename"):
            lib.openblas_get_corename.restype = ctypes.c_char_p
            lib.openblas_get_config.restype = ctypes.c_char_p
            out["corename"] = lib.openblas_get_corename().decode()
            out["config"] = lib.openblas_get_config().decode()
            out["library"] = p
            break
    return out


def load_batch(path):
    return {k: torch.from_numpy(v) for k, v in read_safetensors(path).items()}


def serve(args):
    torch.set_num_threads(args.threads)
    cfg = dict(BASE, num_hidden_layers=args.layers)
    t0 = time.perf_counter()
    params = fresh_params(cfg, args.seed)
    optimizer = AdamW(params)
    torch.manual_seed(args.seed)  # dropout masks
    batches = {}

    def batch(path):
        if not isinstance(path, str):
            raise ValueError(f"request needs a batch file, got {path!r}")
        if path not in batches:
            batches[path] = load_batch(path)
        return batches[path]

    def train(req):
        task, b = req.get("task"), batch(req.get("batch"))
        if task not in ("mlm", "itm"):
            raise ValueError(f"train: task must be mlm or itm, got {task!r}")
        start = time.perf_counter()
        for p in params.values():
            p.grad = None
        loss = (mlm_loss if task == "mlm" else itm_outputs)(params, cfg, b, True)["loss"]
        loss.backward()
        t1 = time.perf_counter()
        with_grad = [p for p in params.values() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(with_grad, GRAD_CLIP)
        t2 = time.perf_counter()
        optimizer.step(LEARNING_RATE)
        t3 = time.perf_counter()
        return {
            "loss": loss.item(), "forward_backward_s": t1 - start, "clip_s": t2 - t1, "optimizer_s": t3 - t2,
            "updated_params": sum(p.numel() for p in with_grad),
        }

    def infer(req):
        b = {k: v for k, v in batch(req.get("batch")).items() if k != "targets"}
        with torch.inference_mode():
            scores = itm_outputs(params, cfg, b, False)["itm_scores"]
        return {"pairs": scores.size(0)}

    def run_ipot(req):
        b = batch(req.get("inputs"))
        plan = ipot_plan(b["cost"], b["txt_pad"], b["img_pad"])
        return {"plan_shape": list(plan.shape)}

    gemm_inputs = {}

    def gemm(req):
        m, k, n = (req.get(d) for d in ("m", "k", "n"))
        if not all(isinstance(d, int) and d > 0 for d in (m, k, n)):
            raise ValueError(f"gemm: m, k and n must be positive integers, got {req!r}")
        if (m, k, n) not in gemm_inputs:
            g = torch.Generator().manual_seed(5)
            gemm_inputs[(m, k, n)] = (torch.rand(m, k, generator=g) - 0.5, torch.rand(n, k, generator=g) - 0.5)
        a, w = gemm_inputs[(m, k, n)]
        with torch.inference_mode():
            F.linear(a, w)
        return {"gflop": 2 * m * k * n / 1e9}

    ops = {"train": train, "infer": infer, "ipot": run_ipot, "gemm": gemm}
    ready = {
        "ready": True, "side": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "blas_libraries": loaded_blas_libraries(),
        "openblas": openblas_info(),
        "parameters": sum(p.numel() for p in params.values()), "init_s": time.perf_counter() - t0,
    }
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        text = line.strip()
        if text == "quit":
            break
        if text == "rss":
            print(json.dumps({"max_rss_bytes": max_rss_bytes(), "rss_bytes": current_rss_bytes()}), flush=True)
            continue
        try:
            req = json.loads(text)
            if req.get("op") not in ops:
                raise ValueError(f"unknown request {text[:100]}")
            start, cpu = time.perf_counter(), time.process_time()
            extra = ops[req["op"]](req)
            reply = {"op": req["op"], "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, **extra}
        except Exception as e:  # the driver reports it with this side's label
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


def current_rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def parity(args):
    d = args.dir
    with open(os.path.join(d, "config.json")) as f:
        cfg = dict(BASE, **json.load(f))
    params = {k: v.requires_grad_(True) for k, v in load_batch(os.path.join(d, "weights.safetensors")).items()}
    result = {}

    def grads(prefix):
        for n, p in params.items():
            if p.grad is not None:
                result[f"{prefix}.grad.{n}"] = p.grad.numpy().copy()
            p.grad = None

    mlm = mlm_loss(params, cfg, load_batch(os.path.join(d, "mlm.safetensors")), False)
    mlm["loss"].backward()
    result["mlm.loss"] = mlm["loss"].detach().numpy().reshape(())
    grads("mlm")
    itm = itm_outputs(params, cfg, load_batch(os.path.join(d, "itm.safetensors")), False)
    itm["loss"].backward()
    for k in ("loss", "itm_loss", "ot_loss", "itm_scores", "ot_dist"):
        result[f"itm.{k}"] = itm[k].detach().numpy()
    grads("itm")
    ipot_in = load_batch(os.path.join(d, "ipot.safetensors"))
    result["ipot.plan"] = ipot_plan(ipot_in["cost"], ipot_in["txt_pad"], ipot_in["img_pad"]).numpy()
    write_safetensors(os.path.join(d, "torch_out.safetensors"), result)
    print(json.dumps({"written": os.path.join(d, "torch_out.safetensors"), "tensors": len(result)}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--layers", type=int, default=BASE["num_hidden_layers"])
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("parity")
    p.add_argument("--dir", required=True)
    args = ap.parse_args()
    if args.cmd == "serve":
        serve(args)
    else:
        torch.set_num_threads(1)
        parity(args)


if __name__ == "__main__":
    main()
