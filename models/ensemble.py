"""N independent MLP heads evaluated as one batched network (torch only).

Every weight carries a leading ensemble dimension N: member ``i``'s Linear layer is
``weight[i]`` (in, out) and ``bias[i]`` (1, out), and a forward is one ``torch.baddbmm`` per layer
over inputs (N, B, in). Members share no parameter, so the gradient of ``sum_i loss_i`` with
respect to member ``i``'s weights is the gradient of ``loss_i`` alone, and an element-wise
optimiser (Adam) over the stacked tensors steps each member exactly as its own optimiser would.

The heads are built from ordinary modules (:class:`models.actor.Actor`, :class:`models.critic.Critic`)
by stacking their weights (:meth:`EnsembleMLP.from_mlps`), so each member starts where the
single-agent code would have put it, and :meth:`EnsembleMLP.member` hands one back.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class EnsembleMLP(nn.Module):
    """``N`` MLPs of one shape: Linear layers with ReLU between them (the layout of :func:`models.layers.mlp`).

    Args:
        weights: per layer, an (N, in, out) tensor (the transposes of the members' ``nn.Linear.weight``).
        biases: per layer, an (N, 1, out) tensor.
    """

    def __init__(self, weights: list[Tensor], biases: list[Tensor]) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(w.detach().clone()) for w in weights)
        self.biases = nn.ParameterList(nn.Parameter(b.detach().clone()) for b in biases)

    @classmethod
    def from_mlps(cls, mlps: list[nn.Sequential]) -> EnsembleMLP:
        """Stack the ``nn.Linear`` layers of equally shaped ``mlps`` (ReLU between them)."""
        layers = [[m for m in mlp if isinstance(m, nn.Linear)] for mlp in mlps]
        if len({len(ls) for ls in layers}) != 1:
            raise ValueError("the MLPs to stack differ in depth")
        weights = [torch.stack([ls[j].weight.t() for ls in layers]) for j in range(len(layers[0]))]
        biases = [torch.stack([ls[j].bias[None] for ls in layers]) for j in range(len(layers[0]))]
        return cls(weights, biases)

    @property
    def n(self) -> int:
        return int(self.weights[0].shape[0])

    def forward(self, x: Tensor) -> Tensor:
        """(N, B, in) float32 -> (N, B, out) float32."""
        last = len(self.weights) - 1
        for j, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(bias, x, weight)
            if j < last:
                x = F.relu(x)
        return x

    def member(self, i: int) -> nn.Sequential:
        """Member ``i`` as an ordinary ``nn.Sequential`` of Linear and ReLU layers (a copy)."""
        layers: list[nn.Module] = []
        for j, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if j:
                layers.append(nn.ReLU(inplace=True))
            linear = nn.Linear(weight.shape[1], weight.shape[2])
            with torch.no_grad():
                linear.weight.copy_(weight[i].t())
                linear.bias.copy_(bias[i, 0])
            layers.append(linear)
        return nn.Sequential(*layers)


class EnsembleActor(nn.Module):
    """N squashed-Gaussian policy heads (:class:`models.actor.Actor`'s equations, batched).

    The Gaussian noise is an argument, so that each member can draw it from its own generator.
    """

    def __init__(self, net: EnsembleMLP, log_std_min: float, log_std_max: float) -> None:
        super().__init__()
        self.net = net
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    @classmethod
    def from_actors(cls, actors: list[nn.Module]) -> EnsembleActor:
        """Stack :class:`models.actor.Actor` modules of one shape and log-std range."""
        ranges = {(a.log_std_min, a.log_std_max) for a in actors}
        if len(ranges) != 1:
            raise ValueError(f"the actors differ in their log-std range: {sorted(ranges)}")
        return cls(EnsembleMLP.from_mlps([a.net for a in actors]), *ranges.pop())

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """(N, B, F) -> pre-tanh mean (N, B, A) and log std (N, B, A)."""
        mean, log_std = self.net(features).chunk(2, dim=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(log_std) + 1.0)
        return mean, log_std

    def sample(self, features: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterised actions in [-1, 1] (N, B, A) for standard normal ``noise`` (N, B, A), and their
        log-probabilities (N, B, 1), tanh change of variables included."""
        mean, log_std = self(features)
        pre_tanh = mean + noise * log_std.exp()
        gaussian = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        squash = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))  # log(1 - tanh(u)^2), stably
        return torch.tanh(pre_tanh), (gaussian - squash).sum(-1, keepdim=True)

    def deterministic(self, features: Tensor) -> Tensor:
        """The policies' modes tanh(mean): (N, B, A)."""
        return torch.tanh(self(features)[0])


class EnsembleCritic(nn.Module):
    """N twin Q-function pairs (:class:`models.critic.Critic`, batched)."""

    def __init__(self, q1: EnsembleMLP, q2: EnsembleMLP) -> None:
        super().__init__()
        self.q1, self.q2 = q1, q2

    @classmethod
    def from_critics(cls, critics: list[nn.Module]) -> EnsembleCritic:
        return cls(EnsembleMLP.from_mlps([c.q1 for c in critics]), EnsembleMLP.from_mlps([c.q2 for c in critics]))

    def forward(self, features: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """(N, B, F), (N, B, A) -> Q1, Q2 each (N, B, 1)."""
        x = torch.cat([features, action], dim=-1)
        return self.q1(x), self.q2(x)
