"""PyTorch's side of `bench lora`: the same model, batch, optimizer and LoRA, timed the same way.

`dotnet run --project src/PeftSharp.Lab -c Release -- bench lora` measures TorchSharp; this script measures the same
steps in PyTorch on the same machine, so the two full fine-tuning steps (and LoRA steps) can be compared:

    python3 tools/bench_lora_pytorch.py [--repeats 5] [--threads 2]

The model is bench lora's TinyTransformer: pre-LN blocks x + attn(ln1(x)), then + fc2(gelu(fc1(ln2(x)))), d_model 512,
8 heads, FFN 2048, 4 layers, a 16-wide head; input (32, 128, 512), an MSE loss against a random target, AdamW lr 1e-4.
LoRA (r 8, alpha 16, on q, k, v, o, fc1, fc2) is written as PEFT's Linear layer computes it:
base(x) + lora_B(lora_A(dropout(x))) * scaling, with the base frozen.

Attention is softmax(q k^T / sqrt(d_head)) v written out when torch has no scaled_dot_product_attention (before 2.0);
the JSON line says which one ran. Prints one JSON line like bench lora's (medians, min/max, per-round ratios).
"""
import argparse
import gc
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

SDPA = getattr(F, "scaled_dot_product_attention", None)


class LoraLinear(nn.Module):
    """PEFT's LoRA Linear in training: y = W x + b + B A dropout(x) * alpha / r (B perturbed, as bench lora does)."""

    def __init__(self, base: nn.Linear, r: int, alpha: int, dropout: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.normal_(self.lora_B.weight, 0, 0.01)

    def forward(self, x):
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


class SelfAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.heads = heads

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        b, t, c = x.shape

        def split(y):  # (B, H, T, C/H)
            return y.view(b, t, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if SDPA is not None:
            attended = SDPA(q, k, v)
        else:
            attended = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(c // self.heads), dim=-1) @ v
        return self.o(attended.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), SelfAttention(d, heads), nn.LayerNorm(d)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x):
        h = x + self.attn(self.ln1(x))
        return h + self.fc2(F.gelu(self.fc1(self.ln2(h))))


class TinyTransformer(nn.Module):
    def __init__(self, d=512, heads=8, ffn=2048, layers=4, outputs=16):
        super().__init__()
        self.layers = nn.ModuleList(Block(d, heads, ffn) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, outputs)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def new_model():
    torch.manual_seed(1)
    return TinyTransformer().eval()


def add_lora(model, dropout):
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.layers:
        for owner, name in [(block.attn, "q"), (block.attn, "k"), (block.attn, "v"), (block.attn, "o"), (block, "fc1"), (block, "fc2")]:
            setattr(owner, name, LoraLinear(getattr(owner, name), r=8, alpha=16, dropout=dropout))
    return model


def loaded_blas():
    """The BLAS libraries this process mapped: Debian's torch links the system libblas.so.3, which is the slow reference
    BLAS unless an OpenBLAS package (libopenblas0-pthread) is installed and chosen by update-alternatives."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "blas" in line.split()[-1].lower()})
    except OSError:
        return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = torch.randn(32, 128, 512)
    target = torch.randn(32, 128, 16)

    base = new_model()
    full = new_model()
    lora = add_lora(new_model(), args.lora_dropout)
    optimizers = {
        "full_finetune_step": torch.optim.AdamW([p for p in full.parameters() if p.requires_grad], lr=1e-4),
        "lora_step": torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4),
    }

    def infer(model):
        with torch.no_grad():
            model(x)

    def step(model, optimizer):
        model.train()
        optimizer.zero_grad()
        F.mse_loss(model(x), target).backward()
        optimizer.step()
        model.eval()

    configurations = [
        ("base_inference", lambda: infer(base)),
        ("lora_step", lambda: step(lora, optimizers["lora_step"])),
        ("full_finetune_step", lambda: step(full, optimizers["full_finetune_step"])),
        ("lora_unmerged_inference", lambda: infer(lora)),
    ]
    for _, run in configurations:  # warm-up: optimizer state, allocator
        run()
    seconds = {name: [] for name, _ in configurations}
    for _ in range(args.repeats):
        for name, run in configurations:
            gc.collect()
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)

    def per_round(a, b):
        return [round(p / q, 3) for p, q in zip(seconds[a], seconds[b])]

    median = {name: statistics.median(values) for name, values in seconds.items()}
    print(json.dumps({
        "bench": "lora (PyTorch)",
        "torch": torch.__version__,
        "attention": "scaled_dot_product_attention" if SDPA is not None else "softmax(q k^T / sqrt(d)) v written out",
        "blas": loaded_blas(),
        "threads": args.threads,
        "rounds": args.repeats,
        "lora": f"r=8 alpha=16 dropout={args.lora_dropout} on q,k,v,o,fc1,fc2",
        "seconds": {k: round(v, 4) for k, v in median.items()},
        "seconds_spread": {k: {"min": round(min(v), 4), "median": round(median[k], 4), "max": round(max(v), 4)} for k, v in seconds.items()},
        "ratios": {
            "lora_step_vs_full_step": round(median["lora_step"] / median["full_finetune_step"], 3),
            "lora_unmerged_vs_base_inference": round(median["lora_unmerged_inference"] / median["base_inference"], 3),
        },
        "ratios_per_round": {"lora_step_vs_full_step": per_round("lora_step", "full_finetune_step")},
    }))


if __name__ == "__main__":
    main()
