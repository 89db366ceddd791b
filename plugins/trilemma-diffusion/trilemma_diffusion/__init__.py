"""Building blocks shared by trilemma's diffusion-family plugins (DDPM, denoising diffusion GANs,
flow matching, reflow, latent diffusion): schedules, the Gaussian diffusion maths, samplers, ODE
steppers and the U-Net.
A library, not a plugin: it has no entry point and registers no model."""

from trilemma_diffusion.flow import FlowSampling, start_from_teacher
from trilemma_diffusion.gaussian import GaussianDiffusion, Objective, Weighting, discretized_gaussian_log_likelihood
from trilemma_diffusion.ode import integrate_ode
from trilemma_diffusion.schedules import SCHEDULES, cosine_betas, linear_betas, quadratic_betas, sigmoid_betas
from trilemma_diffusion.unet import QUICK_UNET, SMOKE_UNET, UNet, UNetConfig, norm, sinusoidal_embedding

__version__ = "0.2.2"
__all__ = [
    "QUICK_UNET",
    "SCHEDULES",
    "SMOKE_UNET",
    "FlowSampling",
    "GaussianDiffusion",
    "Objective",
    "UNet",
    "UNetConfig",
    "Weighting",
    "cosine_betas",
    "discretized_gaussian_log_likelihood",
    "integrate_ode",
    "linear_betas",
    "norm",
    "quadratic_betas",
    "sigmoid_betas",
    "sinusoidal_embedding",
    "start_from_teacher",
]
