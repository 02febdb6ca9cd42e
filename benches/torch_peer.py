"""The PyTorch peer of `cargo bench --bench step_time`: the same configs, DiT (DiT's reference models.py
architecture, written out without timm; attention through F.scaled_dot_product_attention, as timm's Attention runs
it), batch, optimizer (AdamW, grad-norm clip 1), EMA and guided samplers, timed the same way (medians over the same
number of steps after a warm-up).

    python benches/torch_peer.py THREADS [CONFIG ...]

Run by benches/peer.sh, which installs PyTorch from PyPI into a private virtual environment, pins both sides to the
same thread count and runs each config in a process of its own (for its peak RSS). One JSON line per config.
"""
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, freq=256):
        super().__init__()
        self.freq = freq
        self.mlp = nn.Sequential(nn.Linear(freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        half = self.freq // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        sm, scm, gm, sf, scf, gf = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gm.unsqueeze(1) * self.attn(modulate(self.norm1(x), sm, scm))
        return x + gf.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sf, scf))


class DiT(nn.Module):
    def __init__(self, input_size=28, patch=4, in_ch=1, hidden=128, depth=4, heads=4, mlp_ratio=4.0, classes=10):
        super().__init__()
        self.patch, self.in_ch = patch, in_ch
        self.x_embedder = nn.Conv2d(in_ch, hidden, patch, stride=patch)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = nn.Embedding(classes + 1, hidden)
        grid = input_size // patch
        self.register_buffer("pos_embed", torch.zeros(1, grid * grid, hidden))
        self.blocks = nn.ModuleList([DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_linear = nn.Linear(hidden, patch * patch * in_ch)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, t, y):
        b = x.shape[0]
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.final_adaLN(c).chunk(2, dim=1)
        h = self.final_linear(modulate(self.final_norm(h), shift, scale))
        g, p = int(h.shape[1] ** 0.5), self.patch
        h = h.reshape(b, g, g, p, p, self.in_ch).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, self.in_ch, g * p, g * p)


# The configs of benches/step_time.rs.
CONFIGS = {
    "mnist-tiny": dict(input=28, ch=1, patch=4, hidden=128, depth=4, heads=4, classes=10, batch=64, steps=10, sample_batch=64, sample_steps=25),
    "mnist-small": dict(input=28, ch=1, patch=4, hidden=192, depth=6, heads=6, classes=10, batch=64, steps=10, sample_batch=64, sample_steps=25),
    "DiT-S/2": dict(input=32, ch=4, patch=2, hidden=384, depth=12, heads=6, classes=1000, batch=32, steps=3, sample_batch=8, sample_steps=5),
    "DiT-B/2": dict(input=32, ch=4, patch=2, hidden=768, depth=12, heads=12, classes=1000, batch=8, steps=3, sample_batch=8, sample_steps=5),
}

BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
ABAR = torch.cumprod(1 - BETAS, 0)


def make_model(c):
    return DiT(input_size=c["input"], patch=c["patch"], in_ch=c["ch"], hidden=c["hidden"], depth=c["depth"],
               heads=c["heads"], classes=c["classes"])


def train_step_time(model, c):
    """Median seconds of one step: forward, ε-MSE, backward, clip, AdamW, EMA."""
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    b, per = c["batch"], c["ch"] * c["input"] ** 2
    x0 = (torch.arange(b * per) % 97).float().reshape(b, c["ch"], c["input"], c["input"]) / 48.0 - 1.0
    y = torch.arange(b) % c["classes"]
    abar = ABAR.float()

    def one():
        t = torch.randint(0, 1000, (b,))
        noise = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(0.9999).add_(p.detach(), alpha=0.0001)

    one()
    times = []
    for _ in range(c["steps"]):
        t0 = time.perf_counter()
        one()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def sample_step_time(model, c, sampler, steps, scale=4.0):
    """Seconds per denoising step of guided sampling over a respaced schedule, timed over c["sample_steps"]."""
    n = c["sample_batch"]
    use = torch.linspace(0, 999, steps).round().long()
    abar = ABAR[use]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1 - abar / abar_prev
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]])).float()
    c1 = (betas * abar_prev.sqrt() / (1 - abar)).float()
    c2 = ((1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)).float()
    abar, abar_prev = abar.float(), abar_prev.float()
    y = torch.arange(n) % c["classes"]
    y2 = torch.cat([y, torch.full_like(y, c["classes"])])
    x = torch.randn(n, c["ch"], c["input"], c["input"])
    model.eval()

    def step(i):
        nonlocal x
        t = torch.full((2 * n,), int(use[i]))
        out = model(torch.cat([x, x]), t, y2)
        eps = out[n:] + scale * (out[:n] - out[n:])
        x0 = ((x - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()).clamp(-1, 1)
        if sampler == "ddpm":
            mean = c1[i] * x0 + c2[i] * x
            x = mean + (0.5 * post_logvar[i]).exp() * torch.randn_like(x) if i > 0 else mean
        else:
            eps = (x - abar[i].sqrt() * x0) / (1 - abar[i]).sqrt()
            x = abar_prev[i].sqrt() * x0 + (1 - abar_prev[i]).sqrt() * eps

    step(steps - 1)  # warm-up
    k = c["sample_steps"]
    t0 = time.perf_counter()
    for i in reversed(range(steps - k, steps)):
        step(i)
    model.train()
    return (time.perf_counter() - t0) / k


@torch.no_grad()
def dpm_step_time(model, c, scale=4.0):
    """Seconds per step of guided DPM-Solver++ 2M sampling with diffusers' scheduler, c["sample_steps"] steps."""
    from diffusers import DPMSolverMultistepScheduler

    n = c["sample_batch"]
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    y = torch.arange(n) % c["classes"]
    y2 = torch.cat([y, torch.full_like(y, c["classes"])])
    model.eval()

    def run(steps):
        sched.set_timesteps(steps)
        x = torch.randn(n, c["ch"], c["input"], c["input"])
        for t in sched.timesteps:
            out = model(torch.cat([x, x]), torch.full((2 * n,), int(t)), y2)
            eps = out[n:] + scale * (out[:n] - out[n:])
            x = sched.step(eps, t, x).prev_sample

    run(1)  # warm-up
    k = c["sample_steps"]
    t0 = time.perf_counter()
    run(k)
    model.train()
    return (time.perf_counter() - t0) / k


if __name__ == "__main__":
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
    torch.set_num_threads(threads)
    names = sys.argv[2:] or list(CONFIGS)
    for name in names:
        c = CONFIGS[name]
        torch.manual_seed(0)
        model = make_model(c)
        step = train_step_time(model, c)
        ddpm = sample_step_time(model, c, "ddpm", 250) * 250
        ddim = sample_step_time(model, c, "ddim", 50) * 50
        dpm = dpm_step_time(model, c) * 25
        print(json.dumps({
            "config": name, "threads": threads, "torch": torch.__version__, "batch": c["batch"],
            "msPerStep": step * 1e3, "imagesPerSec": c["batch"] / step,
            "ddpm250ImagesPerSec": c["sample_batch"] / ddpm, "ddim50ImagesPerSec": c["sample_batch"] / ddim,
            "dpm25ImagesPerSec": c["sample_batch"] / dpm,
            "peakRssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }), flush=True)


