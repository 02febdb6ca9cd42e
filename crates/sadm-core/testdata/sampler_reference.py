"""Reference trajectories for sadm's few-step samplers (`diffusion::samplers`), computed by diffusers'
`DPMSolverMultistepScheduler` and `UniPCMultistepScheduler` and k-diffusion's `sample_euler`/`sample_heun` on an analytic "model", so no network
is involved and every difference is the solver's.

The model is the exact noise prediction for Gaussian data: every element k of x0 is N(mu_k, s_k^2), with
mu_k = 0.8 sin(k + 1) and s_k = 0.5 + 0.4 cos(k)^2 over the flattened C*H*W index, so

    eps(x_t, t) = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar),      abar = abar(t).

abar(t) is the training schedule's (DiT's linear betas 1e-4..0.02 over 1000 steps, in float64) at an integer t, and
k-diffusion's `t_to_sigma` (log sigma linear between the neighbouring steps) at a fractional one, so the model sees
the timestep the solver feeds it, as a network would: a solver that rounds t wrongly, or feeds the wrong one, gets
another answer. A "v" model returns v = sqrt(abar) eps - sqrt(1 - abar) x0_hat of the same eps.

diffusers' scheduler computes its cumulative product of alphas in float32; it is replaced by the float64 one before
`set_timesteps`, as sadm computes it (the float32 product is off by up to 6e-5 relative at t = 999), and its sigmas are
then float32 as diffusers stores them. The SDE solver's noise is drawn here, stored, and handed to the scheduler as
`variance_noise`; the Rust test replays it.

Written next to this file: sampler_reference.safetensors. Per case `<name>/x` is the trajectory [steps + 1, B, C, H, W]
(the start, then the sample after each step), `<name>/t` the timesteps the model was called with (in call order),
`<name>/noise` the SDE noise per step; `x_T` is the start (unit noise; k-diffusion starts from it times sigma_max),
`sigma_to_t/sigma` and `/t` k-diffusion's interpolated `sigma_to_t`. sampler_reference.json lists the cases with
their settings.

    ~/.cache/sadm-torch-venv/bin/python crates/sadm-core/testdata/sampler_reference.py
    # torch 2.15, diffusers 0.42.1, k-diffusion 0.1.1.post1 (+ torchsde, torchvision; imported without its __init__)
"""
import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from safetensors.torch import save_file

# k-diffusion's package __init__ imports its training code (scikit-image, wandb, CLIP ...); the samplers need none of it.
_kd = os.path.dirname(importlib.util.find_spec("k_diffusion").origin)
_pkg = types.ModuleType("k_diffusion")
_pkg.__path__ = [_kd]
sys.modules["k_diffusion"] = _pkg
import k_diffusion.external as kx  # noqa: E402
import k_diffusion.sampling as ks  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
T = 1000
SHAPE = (2, 2, 3, 3)
BETAS = np.linspace(1e-4, 0.02, T, dtype=np.float64)
ABAR = np.cumprod(1.0 - BETAS)
LOG_SIGMAS = np.log(np.sqrt((1 - ABAR) / ABAR))

k = np.arange(SHAPE[1] * SHAPE[2] * SHAPE[3], dtype=np.float64)
MU = torch.from_numpy(0.8 * np.sin(k + 1)).reshape(1, *SHAPE[1:])
S = torch.from_numpy(0.5 + 0.4 * np.cos(k) ** 2).reshape(1, *SHAPE[1:])


def abar_at(t):
    """abar(t) per sample: the table at an integer t, k-diffusion's log-sigma interpolation between steps otherwise."""
    out = []
    for v in t.reshape(-1).tolist():
        lo, hi = int(np.floor(v)), int(np.ceil(v))
        w = v - lo
        sigma = np.exp((1 - w) * LOG_SIGMAS[lo] + w * LOG_SIGMAS[hi])
        out.append(ABAR[lo] if lo == hi else 1.0 / (1.0 + sigma * sigma))
    return torch.tensor(out, dtype=torch.float64).reshape(-1, 1, 1, 1)


def eps_model(x, t):
    a = abar_at(t)
    return torch.sqrt(1 - a) * (x - torch.sqrt(a) * MU) / (a * S * S + 1 - a)


def v_model(x, t):
    a = abar_at(t)
    eps = eps_model(x, t)
    x0 = (x - torch.sqrt(1 - a) * eps) / torch.sqrt(a)
    return torch.sqrt(a) * eps - torch.sqrt(1 - a) * x0


g = torch.Generator().manual_seed(20261202)
X_T = torch.randn(SHAPE, generator=g, dtype=torch.float64)
tensors = {"x_T": X_T.float()}
cases = []


def dpm(name, steps, spacing="linspace", sde=False, prediction="epsilon", threshold=None, unipc=False):
    karras = spacing == "karras"
    if unipc:
        sched = UniPCMultistepScheduler(
            num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=2,
            prediction_type="v_prediction" if prediction == "v" else "epsilon", predict_x0=True, solver_type="bh2",
            lower_order_final=True, use_karras_sigmas=karras, timestep_spacing="linspace" if karras else spacing,
            final_sigmas_type="zero", thresholding=threshold is not None,
            dynamic_thresholding_ratio=threshold[0] if threshold else 0.995, sample_max_value=threshold[1] if threshold else 1.0,
        )
    else:
        sched = DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", solver_order=2,
        prediction_type="v_prediction" if prediction == "v" else "epsilon",
        algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++", solver_type="midpoint", lower_order_final=True,
        use_karras_sigmas=karras, timestep_spacing="linspace" if karras else spacing, final_sigmas_type="zero",
        thresholding=threshold is not None, dynamic_thresholding_ratio=threshold[0] if threshold else 0.995,
        sample_max_value=threshold[1] if threshold else 1.0,
    )
    sched.alphas_cumprod = torch.from_numpy(ABAR)
    sched.set_timesteps(steps)
    model = v_model if prediction == "v" else eps_model
    x = X_T.clone()
    xs, ts, noises = [x.float()], [], []
    for t in sched.timesteps:
        tt = torch.full((SHAPE[0],), float(t), dtype=torch.float64)
        out = model(x, tt)
        kw = {}
        if sde:
            kw["variance_noise"] = torch.randn(SHAPE, generator=g, dtype=torch.float64)
            noises.append(kw["variance_noise"].float())
        x = sched.step(out, t, x, **kw).prev_sample.to(torch.float64)
        xs.append(x.float())
        ts.append(float(t))
    tensors[f"{name}/x"] = torch.stack(xs)
    tensors[f"{name}/t"] = torch.tensor(ts, dtype=torch.float32)
    if sde:
        tensors[f"{name}/noise"] = torch.stack(noises)
    cases.append(dict(name=name, sampler="unipc" if unipc else "dpm++2m-sde" if sde else "dpm++2m", steps=steps, spacing=spacing,
                      prediction=prediction, threshold=threshold))


def kdiff(name, steps, heun, spacing="karras"):
    den = kx.DiscreteEpsDDPMDenoiser(lambda x, t: eps_model(x, t), torch.from_numpy(ABAR), quantize=False)
    if spacing == "karras":
        sigmas = ks.get_sigmas_karras(steps, den.sigma_min.item(), den.sigma_max.item()).to(torch.float64)
    else:
        sigmas = den.get_sigmas(steps)
    ts, xs = [], []
    calls = {"t": ts}

    def model(x, sigma):
        calls["t"].append(float(den.sigma_to_t(sigma)[0]))
        return den(x, sigma)

    x0 = X_T * sigmas[0]
    sampler = ks.sample_heun if heun else ks.sample_euler
    out = sampler(model, x0, sigmas, disable=True, callback=lambda d: xs.append(d["x"].float()))
    xs.append(out.float())
    # The trajectory in sadm's terms: the VP sample x_t = x / sqrt(1 + sigma^2) after each step.
    vp = [x / torch.sqrt(1 + s.float() ** 2) for x, s in zip(xs, sigmas)]
    tensors[f"{name}/x"] = torch.stack(vp)
    tensors[f"{name}/t"] = torch.tensor(ts, dtype=torch.float32)
    cases.append(dict(name=name, sampler="heun" if heun else "euler", steps=steps, spacing=spacing, prediction="epsilon",
                      threshold=None))


# 6 steps: linspace(0, 999, 7) holds 166.5 and 832.5, where numpy's round-half-to-even and Rust's `round` disagree.
# Under 15 steps the last two steps are lower order (lower_order_final); 16 and 25 are above that line.
for n in [1, 2, 3, 6, 10, 16, 25]:
    for spacing in ["linspace", "leading", "trailing", "karras"]:
        dpm(f"dpm++2m/{spacing}/{n}", n, spacing)
for n in [2, 6, 10, 25]:
    dpm(f"dpm++2m-sde/linspace/{n}", n, "linspace", sde=True)
dpm("dpm++2m-sde/karras/10", 10, "karras", sde=True)
dpm("dpm++2m/linspace/10/v", 10, "linspace", prediction="v")
dpm("dpm++2m-sde/trailing/6/v", 6, "trailing", sde=True, prediction="v")
dpm("dpm++2m/linspace/10/threshold", 10, "linspace", threshold=(0.9, 1.5))
for n in [1, 2, 3, 6, 10, 25]:
    for spacing in ["linspace", "trailing", "karras"]:
        dpm(f"unipc/{spacing}/{n}", n, spacing, unipc=True)
dpm("unipc/linspace/10/v", 10, "linspace", prediction="v", unipc=True)
# Heun with 1 step is a single Euler step, which sadm refuses as a Heun sampling.
for n in [1, 2, 5, 10, 25]:
    for spacing in ["karras", "linspace"]:
        kdiff(f"euler/{spacing}/{n}", n, heun=False, spacing=spacing)
        if n > 1:
            kdiff(f"heun/{spacing}/{n}", n, heun=True, spacing=spacing)

den = kx.DiscreteEpsDDPMDenoiser(eps_model, torch.from_numpy(ABAR), quantize=False)
probe = torch.tensor([den.sigma_max.item(), 80.0, 14.6, 3.0, 1.0, 0.5, 0.1, 0.03, den.sigma_min.item(), 0.001], dtype=torch.float64)
tensors["sigma_to_t/sigma"] = probe
tensors["sigma_to_t/t"] = den.sigma_to_t(probe)

save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(HERE, "sampler_reference.safetensors"))
with open(os.path.join(HERE, "sampler_reference.json"), "w") as f:
    json.dump({"shape": SHAPE, "cases": cases}, f, indent=1)
print(len(cases), "cases")
