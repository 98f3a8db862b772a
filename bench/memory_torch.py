#!/usr/bin/python3
"""The PyTorch peer of bench/memory_compare.lua: the DPO step of bench/memory.lua
written the usual PyTorch way, on the same Qwen2.5-0.5B-shaped model (the random
weights of the BF16 folder that `bench/memory.lua prepare DIR` writes), the same
tokens (2 pairs of 512) and optimizer.  Prints one JSON line.

    OMP_WAIT_POLICY=PASSIVE /usr/bin/python3 bench/memory_torch.py CONFIG DIR [--steps N]
        [--threads 2] [--checkpoint] [--base-dtype float32|bfloat16]

The model is Qwen2's computation (RMSNorm, rotary embeddings, grouped-query
attention with biases on q, k, v, a SwiGLU MLP, a tied head) in plain torch
modules.  LoRA is written by hand as PEFT computes it: a frozen nn.Linear plus
scaling * lora_B(lora_A(x)), switched off for the reference log-probs.  The
sequence log-probs go through the logits as TRL computes them (the (B, T, V)
logits, then per row the target's logit minus the logsumexp).  Configurations
as in bench/memory.lua: lora (r=16 on the seven projections; the reference with
the adapters disabled inside the step), full (every parameter trained; the
reference log-probs computed once before the steps).  --checkpoint recomputes
each block in the backward pass (torch.utils.checkpoint); --base-dtype bfloat16
keeps the frozen base weights in bfloat16 and widens each to float32 in its
product, the nearest PyTorch equivalent of lualign's 16-bit frozen weights.
"""
import argparse
import json
import os
import resource
import struct
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as tc

V, C, I, H, HKV = 151936, 896, 4864, 14, 2
L = int(os.environ.get("BENCH_LAYERS", "24"))   # as bench/memory.lua prepare
D = C // H
THETA, EPS = 1000000.0, 1e-6


class LoraLinear(torch.nn.Module):
    def __init__(self, cin, cout, bias, r, alpha, base_dtype):
        super().__init__()
        # filled by load(); the frozen base may stay in bfloat16
        self.weight = torch.nn.Parameter(torch.empty(cout, cin, dtype=base_dtype if r else torch.float32),
                                         requires_grad=r == 0)
        self.bias = torch.nn.Parameter(torch.empty(cout), requires_grad=r == 0) if bias else None
        self.r = r
        if r:
            self.lora_A = torch.nn.Parameter(torch.empty(r, cin).uniform_(-cin ** -0.5, cin ** -0.5))
            self.lora_B = torch.nn.Parameter(torch.zeros(cout, r))
            self.scaling = alpha / r
        self.enabled = True

    def forward(self, x):
        w = self.weight if self.weight.dtype == torch.float32 else self.weight.float()
        y = F.linear(x, w, self.bias)
        if self.r and self.enabled:
            y = y + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling
        return y


def rms_norm(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def rotate(x, cos, sin):
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Layer(torch.nn.Module):
    def __init__(self, r, base_dtype):
        super().__init__()
        lin = lambda i, o, b: LoraLinear(i, o, b, r, 32.0, base_dtype)
        self.q, self.k, self.v = lin(C, H * D, True), lin(C, HKV * D, True), lin(C, HKV * D, True)
        self.o = lin(H * D, C, False)
        self.gate, self.up, self.down = lin(C, I, False), lin(C, I, False), lin(I, C, False)
        self.n1 = torch.nn.Parameter(torch.empty(C))
        self.n2 = torch.nn.Parameter(torch.empty(C))

    def forward(self, x, cos, sin, causal):
        B, T, _ = x.shape
        h = rms_norm(x, self.n1)
        q = rotate(self.q(h).view(B, T, H, D), cos, sin).transpose(1, 2)
        k = rotate(self.k(h).view(B, T, HKV, D), cos, sin).transpose(1, 2)
        v = self.v(h).view(B, T, HKV, D).transpose(1, 2)
        k = k.repeat_interleave(H // HKV, dim=1)
        v = v.repeat_interleave(H // HKV, dim=1)
        s = (q @ k.transpose(-1, -2)) * D ** -0.5
        s = s.masked_fill(~causal, float("-inf"))
        y = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.o(y)
        h = rms_norm(x, self.n2)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Model(torch.nn.Module):
    def __init__(self, r, base_dtype, checkpoint):
        super().__init__()
        self.embed = torch.nn.Parameter(torch.empty(V, C, dtype=base_dtype if r else torch.float32),
                                        requires_grad=r == 0)
        self.layers = torch.nn.ModuleList([Layer(r, base_dtype) for _ in range(L)])
        self.norm = torch.nn.Parameter(torch.empty(C))
        self.checkpoint = checkpoint
        if r:
            for n, p in self.named_parameters():
                p.requires_grad = "lora_" in n

    def hf_names(self):
        """This model's tensors under the Hugging Face Qwen2 checkpoint's names."""
        out = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.norm}
        for i, ly in enumerate(self.layers):
            pre = "model.layers.%d." % i
            out[pre + "input_layernorm.weight"] = ly.n1
            out[pre + "post_attention_layernorm.weight"] = ly.n2
            for part, lin in (("self_attn.q_proj", ly.q), ("self_attn.k_proj", ly.k), ("self_attn.v_proj", ly.v),
                              ("self_attn.o_proj", ly.o), ("mlp.gate_proj", ly.gate), ("mlp.up_proj", ly.up),
                              ("mlp.down_proj", ly.down)):
                out[pre + part + ".weight"] = lin.weight
                if lin.bias is not None:
                    out[pre + part + ".bias"] = lin.bias
        return out

    def load(self, path):
        """Fills every tensor from a BF16 safetensors file, one tensor at a time
        read into memory (not mapped: mapped pages would count in the RSS)."""
        want = self.hf_names()
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            for name, e in header.items():
                if name == "__metadata__":
                    continue
                if name not in want:
                    raise SystemExit("%s: unexpected tensor %s" % (path, name))
                if e["dtype"] != "BF16":
                    raise SystemExit("%s: %s is %s, not BF16" % (path, name, e["dtype"]))
                b, end = e["data_offsets"]
                f.seek(8 + n + b)
                raw = torch.frombuffer(bytearray(f.read(end - b)), dtype=torch.bfloat16).view(e["shape"])
                with torch.no_grad():
                    want.pop(name).copy_(raw)
        if want:
            raise SystemExit("%s: missing %s" % (path, ", ".join(sorted(want))))

    def set_lora(self, on):
        for m in self.modules():
            if isinstance(m, LoraLinear):
                m.enabled = on

    def hidden(self, ids):
        B, T = ids.shape
        inv = 1.0 / THETA ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
        ang = torch.arange(T, dtype=torch.float64)[:, None] * inv
        cos, sin = ang.cos().float()[None, :, None, :], ang.sin().float()[None, :, None, :]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        embed = self.embed if self.embed.dtype == torch.float32 else self.embed.float()
        x = embed[ids]
        for layer in self.layers:
            if self.checkpoint and torch.is_grad_enabled():
                x = tc.checkpoint(layer, x, cos, sin, causal, use_reentrant=False)
            else:
                x = layer(x, cos, sin, causal)
        return rms_norm(x, self.norm), embed

    def sequence_logprobs(self, ids, targets, mask):
        h, embed = self.hidden(ids)
        rows = []
        for hb, tb, mb in zip(h, targets, mask):   # TRL's selective log-softmax, row by row
            keep = mb.nonzero().squeeze(-1)        # the head only where the mask counts
            lg = hb[keep] @ embed.t()
            lp = torch.gather(lg, -1, tb[keep][:, None]).squeeze(-1) - torch.logsumexp(lg, dim=-1)
            rows.append((lp * mb[keep]).sum())
        return torch.stack(rows)


def dpo(pc, pr, rc, rr, beta=0.1):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config", choices=["lora", "full"])
    ap.add_argument("dir", help="the BF16 Hugging Face folder of bench/memory.lua prepare")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", action="store_true")
    ap.add_argument("--base-dtype", default="float32", choices=["float32", "bfloat16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    lora = a.config == "lora"
    base_dtype = torch.bfloat16 if a.base_dtype == "bfloat16" else torch.float32
    t0 = time.perf_counter()
    model = Model(16 if lora else 0, base_dtype, a.checkpoint)
    model.load(os.path.join(a.dir, "model.safetensors"))
    build = time.perf_counter() - t0
    B, T, P = 4, 512, 256
    # the tokens bench/memory.lua uses: a multiplicative hash of the position
    ids = (torch.arange(B * T, dtype=torch.long) * 2654435761 % V).view(B, T)
    targets = torch.cat([ids[:, 1:], torch.zeros(B, 1, dtype=torch.long)], 1)
    mask = torch.zeros(B, T)
    mask[:, P - 1:T - 1] = 1
    ref = None
    if not lora:
        with torch.no_grad():
            ref = model.sequence_logprobs(ids, targets, mask)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0)
    times, losses, ref_logp = [], [], None
    for step in range(a.steps):
        t = time.perf_counter()
        r = ref
        if lora:
            with torch.no_grad():
                model.set_lora(False)
                r = model.sequence_logprobs(ids, targets, mask)
                model.set_lora(True)
        ref_logp = ref_logp or r.tolist()
        lp = model.sequence_logprobs(ids, targets, mask)
        loss = dpo(lp[:2], lp[2:], r[:2], r[2:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        times.append(time.perf_counter() - t)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("torch %s step %d: %.2f s, loss %.6f, peak RSS %.0f MiB" % (a.config, step + 1, times[-1], losses[-1], peak),
              flush=True)
    print(json.dumps({"config": a.config, "step_s": times, "loss": losses,
                      "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "build_s": build, "ref_logp": ref_logp, "trainable": sum(p.numel() for p in params), "threads": a.threads,
                      "checkpoint": a.checkpoint, "base_dtype": a.base_dtype}))


if __name__ == "__main__":
    main()
