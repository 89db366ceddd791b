import math
from importlib.metadata import entry_points

import pytest
import torch
from trilemma_cld import CLD, CriticallyDampedLangevin, euler_maruyama, sscs

from trilemma.testing import check_model_contract

SMALL = {"base_channels": 8, "blocks_per_level": 1}
SAMPLERS = ("sscs:steps=5", "sscs:steps=2", "em:steps=4")
PROCESS = CriticallyDampedLangevin(beta=4.0, friction=1.0, v0_factor=0.04)


def drift_and_diffusion(process):
    m, g = process.mass, process.friction
    a = process.beta * torch.tensor([[0.0, 1 / m], [-1.0, -g / m]], dtype=torch.float64)
    d = torch.tensor([[0.0, 0.0], [0.0, 2 * g * process.beta]], dtype=torch.float64)
    return a, d


@pytest.mark.parametrize("t", [0.001, 0.05, 0.3, 1.0])
def test_kernel_mean_and_covariance_match_the_sde_solved_numerically(t):
    """Mean: the matrix exponential of the drift; covariance: the Lyapunov ODE dΣ/dt = AΣ + ΣAᵀ + D
    integrated by RK4 in float64 from Σ_0 = diag(0, γM)."""
    a, d = drift_and_diffusion(PROCESS)
    x0 = 0.7
    (mx, mv), (sxx, sxv, svv) = PROCESS.kernel(t)
    mean = torch.linalg.matrix_exp(a * t) @ torch.tensor([x0, 0.0], dtype=torch.float64)
    assert abs(float(mx) * x0 - mean[0]) < 1e-5 and abs(float(mv) * x0 - mean[1]) < 1e-5
    sigma = torch.diag(torch.tensor([0.0, PROCESS.v0_factor * PROCESS.mass], dtype=torch.float64))
    steps = 20000
    h = t / steps

    def f(s):
        return a @ s + s @ a.T + d

    for _ in range(steps):
        k1 = f(sigma)
        k2 = f(sigma + h / 2 * k1)
        k3 = f(sigma + h / 2 * k2)
        k4 = f(sigma + h * k3)
        sigma = sigma + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    assert abs(float(sxx) - sigma[0, 0]) < 1e-5 and abs(float(sxv) - sigma[0, 1]) < 1e-5
    assert abs(float(svv) - sigma[1, 1]) < 1e-5


def test_the_kernel_reaches_equilibrium_and_its_cholesky_factor_is_right():
    (mx, mv), (sxx, sxv, svv) = PROCESS.kernel(1.0)
    assert abs(float(mx)) < 1e-2 and abs(float(sxx) - 1) < 1e-2 and abs(float(svv) - PROCESS.mass) < 1e-2
    lxx, lxv, lvv = PROCESS.cholesky(0.2)
    _, (sxx, sxv, svv) = PROCESS.kernel(0.2)
    assert torch.allclose(torch.stack([lxx**2, lxx * lxv, lxv**2 + lvv**2]), torch.stack([sxx, sxv, svv]))


def test_hybrid_score_target_is_the_velocity_score_of_the_kernel():
    """∇_v log N(u; μ, Σ) at u = μ + Lε equals −ε_v/ℓ_vv (autograd against the closed form)."""
    t = 0.15
    (mx, mv), cov = PROCESS.kernel(t)
    lxx, lxv, lvv = PROCESS.cholesky(t)
    sigma = torch.tensor([[cov[0], cov[1]], [cov[1], cov[2]]], dtype=torch.float64)
    eps = torch.tensor([0.4, -1.3], dtype=torch.float64)
    x0 = 0.3
    mean = torch.stack([mx * x0, mv * x0])
    u = (mean + torch.stack([lxx * eps[0], lxv * eps[0] + lvv * eps[1]])).requires_grad_()
    torch.distributions.MultivariateNormal(mean, sigma).log_prob(u).backward()
    assert abs(float(u.grad[1]) - float(-eps[1] / lvv)) < 1e-8


def gaussian_score(process, m, s2):
    """The exact ∇_v log p_t(v | x) when the data are N(m, s²)."""
    def score(x, v, t):
        e = process.forward_map(process.beta * t)
        cxx, cxv, cvv = (float(c) for c in process.propagated_covariance(e, s2, 0.0, process.v0_factor * process.mass))
        dx, dv = x - float(e[0]) * m, v - float(e[2]) * m
        return -(-cxv * dx + cxx * dv) / (cxx * cvv - cxv * cxv)
    return score


def run(integrator, steps, n=40000, m=0.5, s2=0.09):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g)
    v = math.sqrt(PROCESS.mass) * torch.randn(n, generator=g)
    out = integrator(PROCESS, gaussian_score(PROCESS, m, s2), x, v, steps, 1e-3, g)
    return float(out.mean()), float(out.var())


def test_samplers_reach_a_known_gaussian_target_and_sscs_beats_euler_maruyama_at_few_steps():
    m, s2 = 0.5, 0.09
    for integrator in (sscs, euler_maruyama):
        mean, var = run(integrator, 400)
        assert abs(mean - m) < 0.01 and abs(var - s2) / s2 < 0.05, integrator.__name__
    # Dockhorn et al., Fig. 5: at few steps the splitting sampler is far closer to the target than EM.
    sscs_mean, sscs_var = run(sscs, 20)
    em_mean, em_var = run(euler_maruyama, 20)
    assert abs(sscs_var - s2) < 0.25 * abs(em_var - s2) and abs(sscs_mean - m) < 0.1


def test_plugin_contract_and_nfe():
    assert "cld" in {ep.name for ep in entry_points(group="trilemma")}
    check_model_contract(CLD, SMALL, expected_nfe={"sscs-5": 5, "sscs-2": 2, "em-4": 4}, samplers=SAMPLERS)
    check_model_contract(CLD, SMALL, channels=3, samplers=SAMPLERS)
