#!/usr/bin/python3
"""The PyTorch peer of bench/llama.lua: a Llama-style decoder in plain PyTorch
(RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP, tied head),
float32, the same shapes, data and measurements as lualign's side.  Prints one
JSON object.

    /usr/bin/python3 bench/llama_torch.py SHAPE [--threads 2] [--steps N] [--modes train,generate]

SHAPE: smollm (SmolLM2-135M's shape) or qwen (Qwen2.5-0.5B's).
Modes: train (forward, cross-entropy, backward, AdamW; tokens/s), fwdbwd
(forward and backward without the optimizer), generate (batch-1 greedy with a
KV cache; ms/token), load (reading the BF16 safetensors file given by --file
into float32 tensors).  Run through bench/llama_compare.lua.
"""
import argparse
import json
import math
import mmap
import resource
import struct
import time

import torch
import torch.nn.functional as F

SHAPES = {
    "smollm": dict(layers=30, d=576, heads=9, kv=3, mlp=1536, vocab=49152, ctx=256, batch=4, theta=100000.0,
                   qkv_bias=False),
    "qwen": dict(layers=24, d=896, heads=14, kv=2, mlp=4864, vocab=151936, ctx=512, batch=2, theta=1000000.0,
                 qkv_bias=True),
}


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Block(torch.nn.Module):
    def __init__(self, s):
        super().__init__()
        d, self.h, self.kv = s["d"], s["heads"], s["kv"]
        self.hd = d // self.h
        self.input_layernorm = RMSNorm(d)
        self.q_proj = torch.nn.Linear(d, self.h * self.hd, bias=s["qkv_bias"])
        self.k_proj = torch.nn.Linear(d, self.kv * self.hd, bias=s["qkv_bias"])
        self.v_proj = torch.nn.Linear(d, self.kv * self.hd, bias=s["qkv_bias"])
        self.o_proj = torch.nn.Linear(self.h * self.hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d)
        self.gate_proj = torch.nn.Linear(d, s["mlp"], bias=False)
        self.up_proj = torch.nn.Linear(d, s["mlp"], bias=False)
        self.down_proj = torch.nn.Linear(s["mlp"], d, bias=False)

    def forward(self, x, cos, sin, cache=None, pos0=0):
        B, T, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.kv, self.hd).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            cache[0][:, :, pos0:pos0 + T] = k
            cache[1][:, :, pos0:pos0 + T] = v
            k, v = cache[0][:, :, :pos0 + T], cache[1][:, :, :pos0 + T]
        S = k.shape[2]
        k = k.repeat_interleave(self.h // self.kv, dim=1)
        v = v.repeat_interleave(self.h // self.kv, dim=1)
        scores = (q @ k.transpose(-1, -2)) * (self.hd ** -0.5)
        if T > 1:
            mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
            scores = scores.masked_fill(~mask, float("-inf"))
        y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + self.o_proj(y)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Model(torch.nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s
        self.embed_tokens = torch.nn.Embedding(s["vocab"], s["d"])
        self.layers = torch.nn.ModuleList([Block(s) for _ in range(s["layers"])])
        self.norm = RMSNorm(s["d"])
        hd = s["d"] // s["heads"]
        inv = 1.0 / (s["theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.arange(4096, dtype=torch.float64)[:, None] * inv[None]
        self.cos, self.sin = ang.cos().float(), ang.sin().float()   # (positions, head_dim / 2)
        for p in self.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, ids, caches=None, pos0=0):
        T = ids.shape[1]
        cos, sin = self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T]
        x = self.embed_tokens(ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, caches[i] if caches else None, pos0)
        return self.norm(x) @ self.embed_tokens.weight.T


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def read_bf16_safetensors(path):
    """Every tensor of a BF16 safetensors file as float32, through mmap."""
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        n = struct.unpack("<Q", mm[:8])[0]
        header = json.loads(mm[8:8 + n])
        out = {}
        for name, e in header.items():
            if name == "__metadata__":
                continue
            b, end = e["data_offsets"]
            raw = torch.frombuffer(mm, dtype=torch.int16, count=(end - b) // 2, offset=8 + n + b)
            out[name] = raw.view(torch.bfloat16).to(torch.float32).view(e["shape"])
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--modes", default="train,generate")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--file", default="")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    modes = set(a.modes.split(","))
    s = SHAPES[a.shape]
    result = {"shape": a.shape, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if "load" in modes:
        t0 = time.perf_counter()
        tensors = read_bf16_safetensors(a.file)
        result["load_s"] = time.perf_counter() - t0
        result["load_params"] = sum(t.numel() for t in tensors.values())
        del tensors
    torch.manual_seed(1234)
    model = Model(s)
    result["params"] = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(42)
    data = torch.randint(0, s["vocab"], (s["batch"], s["ctx"] + 1), generator=g)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    tokens = s["batch"] * s["ctx"]
    if "train" in modes or "fwdbwd" in modes:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1) \
            if "train" in modes else None
        times, losses = [], []
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x).view(-1, s["vocab"]), y.view(-1))
            if opt:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            if opt:
                opt.step()
            else:
                model.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            losses.append(loss.item())
            if i >= a.warmup:
                times.append(dt)
        key = "train" if opt else "fwdbwd"
        result[key] = {"ms_per_step": median(times) * 1e3, "tokens_per_s": tokens / median(times),
                       "loss_first": losses[0], "loss_last": losses[-1]}
        result["rss_after_" + key + "_MiB"] = peak_rss_mib()
        model.zero_grad(set_to_none=True)
        del opt
    if "generate" in modes:
        with torch.inference_mode():
            prompt = data[:1, :16]
            hd = s["d"] // s["heads"]

            def run():
                total = prompt.shape[1] + a.gen_tokens
                caches = [(torch.zeros(1, s["kv"], total, hd), torch.zeros(1, s["kv"], total, hd))
                          for _ in range(s["layers"])]
                logits = model(prompt, caches, 0)
                out, pos = [], prompt.shape[1]
                for _ in range(a.gen_tokens):
                    nxt = logits[:, -1].argmax(-1, keepdim=True)
                    out.append(int(nxt))
                    logits = model(nxt, caches, pos)
                    pos += 1
                return out

            run()
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                toks = run()
                ts.append(time.perf_counter() - t0)
            result["generate"] = {"ms_per_token": median(ts) * 1e3 / a.gen_tokens, "tokens": toks}
    result["peak_rss_MiB"] = peak_rss_mib()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
