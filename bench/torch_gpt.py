#!/usr/bin/python3
"""The PyTorch peer of bench/gpt.lua: the same GPT-2-style decoder in plain
PyTorch, with the same shapes, optimizer and measurements.  Prints one JSON
object (the same keys as bench/gpt.lua's).

    /usr/bin/python3 bench/torch_gpt.py CONFIG [--threads 2] [--steps N] [--warmup N]
                                        [--modes train,forward,generate] [--foreach 0|1]

CONFIG: tiny, small or gpt2 (the table in bench/README.md).  Run through
bench/gpt_compare.lua, which starts it under each peer setting
(bench/peer.lua) and alternates it with lualign.

The model, as lualign.models.gpt builds it: token and learned position
embeddings; per block LayerNorm, one fused q/k/v projection, causal attention
(scores, masked softmax, weighted sum: PyTorch 1.13 has no fused attention),
output projection, residual; LayerNorm, 4x MLP with the tanh form of GELU
(GPT-2's gelu_new, which lualign uses), residual; final LayerNorm; LM head
tied to the token embedding.  float32, GPT-2's initialisation, AdamW (lr
3e-4, betas 0.9/0.95, weight decay 0.1).  AdamW's update runs as PyTorch's
multi-tensor (foreach) form for tiny, where it was 5-25% faster here (many
small tensors), and as the single-tensor form, PyTorch 1.13's default, for
small and gpt2, where the multi-tensor form was no faster (--foreach
overrides).

FLOPs per training token: 6 x (weights in products) + 12 x layers x width x
context (the attention products over the whole context, as computed).

Modes:
  train     forward, cross-entropy, backward, AdamW; median step after warm-up
  forward   the batch's logits under no_grad, eval mode
  generate  batch-1 greedy decoding of 64 tokens after a 16-token prompt, with
            a preallocated key/value cache and without a cache (the whole
            sequence again for every token); both must give the same tokens
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F

CONFIGS = {
    "tiny": dict(layers=4, d=128, heads=4, ctx=128, vocab=256, batch=8, steps=30, warmup=5, foreach=1),
    "small": dict(layers=6, d=384, heads=6, ctx=256, vocab=8192, batch=8, steps=15, warmup=3, foreach=0),
    "gpt2": dict(layers=12, d=768, heads=12, ctx=256, vocab=50257, batch=4, steps=10, warmup=2, foreach=0),
}


class Block(torch.nn.Module):
    def __init__(self, d, heads, ctx):
        super().__init__()
        self.heads = heads
        self.ln_1 = torch.nn.LayerNorm(d)
        self.c_attn = torch.nn.Linear(d, 3 * d)
        self.attn_proj = torch.nn.Linear(d, d)
        self.ln_2 = torch.nn.LayerNorm(d)
        self.c_fc = torch.nn.Linear(d, 4 * d)
        self.mlp_proj = torch.nn.Linear(4 * d, d)
        self.register_buffer("causal", torch.ones(ctx, ctx, dtype=torch.bool).tril(), persistent=False)

    def attention(self, x, cache, pos0):
        B, T, C = x.shape
        hd = C // self.heads
        q, k, v = (t.view(B, T, self.heads, hd).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        if cache is not None:   # (keys, values) of shape (B, heads, length, hd), filled up to pos0
            cache[0][:, :, pos0:pos0 + T] = k
            cache[1][:, :, pos0:pos0 + T] = v
            k, v = cache[0][:, :, :pos0 + T], cache[1][:, :, :pos0 + T]
        S = k.shape[2]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        if T > 1:   # query i sits at position S - T + i and sees keys 0 .. S - T + i
            scores = scores.masked_fill(~self.causal[S - T:S, :S], float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.attn_proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x, cache=None, pos0=0):
        x = x + self.attention(self.ln_1(x), cache, pos0)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte = torch.nn.Embedding(c["vocab"], c["d"])
        self.wpe = torch.nn.Embedding(c["ctx"], c["d"])
        self.h = torch.nn.ModuleList([Block(c["d"], c["heads"], c["ctx"]) for _ in range(c["layers"])])
        self.ln_f = torch.nn.LayerNorm(c["d"])
        residual_std = 0.02 / math.sqrt(2 * c["layers"])
        for name, p in self.named_parameters():
            if p.dim() == 1:
                continue   # biases stay 0, norms 1
            torch.nn.init.normal_(p, std=residual_std if name.endswith("proj.weight") else 0.02)
        for m in self.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.zeros_(m.bias)

    def forward(self, ids, caches=None, pos0=0, last_only=False):
        T = ids.shape[1]
        x = self.wte(ids) + self.wpe.weight[pos0:pos0 + T]
        for i, block in enumerate(self.h):
            x = block(x, caches[i] if caches else None, pos0)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:]
        return x @ self.wte.weight.t()   # the tied head


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(model, c, x, y, a, flops_per_token):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            foreach=bool(a.foreach))
    model.train()
    times, losses = [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x).view(-1, c["vocab"]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if i >= a.warmup:
            times.append(dt)
    med = median(times)
    tokens = c["batch"] * c["ctx"]
    model.zero_grad(set_to_none=True)
    return {"ms_per_step": med * 1e3, "tokens_per_s": tokens / med,
            "gflops_per_s": flops_per_token * tokens / med / 1e9,
            "loss_first": losses[0], "loss_last": losses[-1]}


def forward(model, c, x, a, flops_per_token):
    model.eval()
    times = []
    with torch.no_grad():
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            logits = model(x)
            del logits
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
    med = median(times)
    tokens = c["batch"] * c["ctx"]
    return {"ms": med * 1e3, "tokens_per_s": tokens / med, "gflops_per_s": flops_per_token / 3 * tokens / med / 1e9}


def generate(model, c, prompt, new=64):
    model.eval()
    hd = c["d"] // c["heads"]

    def with_cache():
        total = prompt.shape[1] + new
        caches = [(torch.zeros(1, c["heads"], total, hd), torch.zeros(1, c["heads"], total, hd))
                  for _ in range(c["layers"])]
        logits, pos, out = model(prompt, caches, 0, last_only=True), prompt.shape[1], []
        for _ in range(new):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(nxt))
            if len(out) == new:
                break
            logits = model(nxt, caches, pos, last_only=True)
            pos += 1
        return out

    def without_cache():
        ids = prompt
        for _ in range(new):
            nxt = model(ids, last_only=True)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        return ids[0, prompt.shape[1]:].tolist()

    result, outs = {}, {}
    with torch.inference_mode():
        for label, fn in (("no_cache", without_cache), ("kv_cache", with_cache)):
            fn()
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                outs[label] = fn()
                ts.append(time.perf_counter() - t0)
            med = median(ts)
            result[label] = {"ms_per_token": med * 1e3 / new, "tokens_per_s": new / med}
    result["outputs_match"] = outs["no_cache"] == outs["kv_cache"]
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", choices=sorted(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--modes", default="train,forward,generate")
    ap.add_argument("--foreach", type=int, default=None, choices=(0, 1))
    a = ap.parse_args()
    c = CONFIGS[a.config]
    a.steps = c["steps"] if a.steps is None else a.steps
    a.warmup = c["warmup"] if a.warmup is None else a.warmup
    a.foreach = c["foreach"] if a.foreach is None else a.foreach
    modes = set(a.modes.split(","))
    unknown = modes - {"train", "forward", "generate"}
    if unknown:
        ap.error("unknown modes: " + ", ".join(sorted(unknown)))
    torch.set_num_threads(a.threads)
    torch.manual_seed(1234)
    model = GPT(c)
    L, d, V, T = c["layers"], c["d"], c["vocab"], c["ctx"]
    flops_per_token = 6 * (12 * L * d * d + V * d) + 12 * L * d * T
    result = {"config": a.config, "threads": torch.get_num_threads(), "torch": torch.__version__, "foreach": a.foreach,
              "params": sum(p.numel() for p in model.parameters()),
              "flops_per_token_train": flops_per_token, "tokens_per_step": c["batch"] * T}
    g = torch.Generator().manual_seed(42)
    data = torch.randint(0, V, (c["batch"], T + 1), generator=g)
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    if "train" in modes:
        result["train"] = train(model, c, x, y, a, flops_per_token)
        result["rss_after_train_MiB"] = peak_rss_mib()
    if "forward" in modes:
        result["forward"] = forward(model, c, x, a, flops_per_token)
    if "generate" in modes:
        result["generate"] = generate(model, c, data[:1, :16])
    result["peak_rss_MiB"] = peak_rss_mib()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
