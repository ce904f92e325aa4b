"""BatchNormalization over the last (channel) axis, with Keras's defaults."""

from __future__ import annotations

import math

from nbcnn.errors import ConfigError
from nbcnn.layers.args import Arg, boolean, choice, integer, number
from nbcnn.layers.base import Layer, ParamSpec, Shape


class BatchNormalization(Layer):
    """Normalise each channel by batch statistics while training, by moving averages at
    inference: ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta``.

    Weights in Keras's order: gamma, beta (trainable), moving_mean, moving_variance (not).
    Moving averages: ``moving = moving * momentum + batch * (1 - momentum)``.
    """

    arguments = {
        "axis": Arg(integer(None), -1, "only the last axis (-1) is supported"),
        "momentum": Arg(number(0.0, 1.0), 0.99, "moving-average momentum"),
        "epsilon": Arg(number(0.0, min_open=True), 0.001, "added to the variance"),
        "center": Arg(boolean, True, "learn an offset beta"),
        "scale": Arg(boolean, True, "learn a scale gamma"),
        "beta_initializer": Arg(choice("zeros", "ones"), "zeros", "beta init"),
        "gamma_initializer": Arg(choice("zeros", "ones"), "ones", "gamma init"),
    }

    def validate(self) -> None:
        if self.axis != -1:
            raise ConfigError(
                f"only axis=-1 (channels-last) is supported, got {self.axis}", where="axis"
            )

    def output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape)

    def param_shapes(self, input_shape: Shape) -> list[ParamSpec]:
        c = (input_shape[-1],)
        params = []
        if self.scale:
            params.append(ParamSpec("gamma", c))
        if self.center:
            params.append(ParamSpec("beta", c))
        params += [ParamSpec("moving_mean", c, False), ParamSpec("moving_variance", c, False)]
        return params

    def macs(self, input_shape: Shape) -> int:
        # Folded into one multiply-add per value at inference.
        from math import prod

        return prod(input_shape)

    def explain(self, input_shape: Shape) -> str:
        params = self.param_shapes(input_shape)
        trainable = [p.name for p in params if p.trainable]
        c = input_shape[-1]
        total = len(params) * c
        learned = f"{', '.join(trainable)} trainable; " if trainable else ""
        return (
            f"{len(params)} x {c} channels ({learned}moving_mean, moving_variance "
            f"not trainable) = {total:,}"
        )

    def build(self, input_shape, rng):
        import numpy as np

        super().build(input_shape, rng)
        c = input_shape[-1]
        init = {"zeros": np.zeros, "ones": np.ones}
        if self.scale:
            self.params["gamma"] = init[self.gamma_initializer](c, np.float32)
        if self.center:
            self.params["beta"] = init[self.beta_initializer](c, np.float32)
        self.params["moving_mean"] = np.zeros(c, np.float32)
        self.params["moving_variance"] = np.ones(c, np.float32)

    def forward(self, x, training=False, relu=False):
        """``relu``: also apply the ReLU of the Activation layer after this one, in the same
        pass (nbcnn/fusion.py ConvBatchNorm; the backward then takes ``relu=True`` too)."""
        import numpy as np

        from nbcnn.kernels import batchnorm

        c = x.shape[-1]
        gamma = self.params.get("gamma", np.ones(c, np.float32))
        beta = self.params.get("beta", np.zeros(c, np.float32))
        x2 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, c)
        eps = np.float32(self.epsilon)
        if not training:
            inv = gamma / np.sqrt(self.params["moving_variance"] + eps)
            y2 = batchnorm.normalize(x2, self.params["moving_mean"], inv, beta, relu)
            return y2.reshape(x.shape)
        from nbcnn.distributed import active

        group = active()  # data-parallel: the statistics of the whole global batch
        mean64, var64 = group.batch_statistics(x2) if group else batchnorm.batch_statistics(x2)
        mean, var = mean64.astype(np.float32), var64.astype(np.float32)
        inv_std = np.float32(1.0) / np.sqrt(var + eps)
        m = np.float32(self.momentum)
        self.params["moving_mean"] *= m
        self.params["moving_mean"] += (1 - m) * mean
        self.params["moving_variance"] *= m
        self.params["moving_variance"] += (1 - m) * var
        # The backward recomputes the normalised x from these rather than keeping it.
        self._x2, self._mean, self._inv_std, self._gamma = x2, mean, inv_std, gamma
        y2 = batchnorm.normalize(x2, mean, inv_std * gamma, beta, relu)
        self._relu_y2 = y2 if relu else None  # ReLU's mask is read off it in the backward
        return y2.reshape(x.shape)

    def backward(self, dy, relu=False):
        """``relu``: dy is the gradient w.r.t. the ReLU fused in the forward's output."""
        import numpy as np

        from nbcnn.kernels import batchnorm

        dy2 = np.ascontiguousarray(dy, dtype=np.float32).reshape(self._x2.shape)
        # Standard batch-norm backward (Ioffe & Szegedy 2015, eq. after Alg. 1):
        # dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)).
        dx2, dgamma, dbeta = batchnorm.batchnorm_backward(
            dy2, self._x2, self._mean, self._inv_std, self._gamma,
            self._relu_y2 if relu else None, _global_sums(),
        )  # fmt: skip
        self.grads = {}
        if self.scale:
            self.grads["gamma"] = dgamma
        if self.center:
            self.grads["beta"] = dbeta
        return dx2.reshape(dy.shape)


def _global_sums():
    """In data-parallel training, the hook that sums the backward's per-channel sums over the
    ranks (synchronized batch norm: nbcnn/distributed.py); None otherwise."""
    from nbcnn.distributed import active

    group = active()
    return None if group is None else group.sum_channels


#: Largest share of its initial value (moving_mean 0, moving_variance 1) that a moving average
#: may still hold when training ends before nbcnn warns: e^-3, about 5%.
MOVING_RESIDUAL = 0.05


def moving_statistics_warning(model, steps: int) -> str | None:
    """A warning when a BatchNormalization's moving statistics saw too few updates.

    After n updates ``moving = m**n * initial + (1 - m) * sum(m**(n - k) * batch_k)``: the
    initial value keeps the weight ``m**n`` (the bias that Adam's ``1 - beta**t`` correction
    removes, Kingma & Ba 2015, section 3). Inference uses the moving statistics, so while
    ``m**n`` is large evaluate and predict normalise with mostly 0 and 1, not the data's
    statistics (configs/vgg_cifar.yaml: 24 steps at Keras's momentum 0.99 left 79%, and test
    accuracy was 0.19 after 0.998 in training). Warn above :data:`MOVING_RESIDUAL`, i.e. below
    ``ln(0.05) / ln(m)``, about ``3 / (1 - m)`` steps: 299 at 0.99, 29 at 0.9.
    """
    layers = [la for la in model.layers if isinstance(la, BatchNormalization)]
    if not layers or steps <= 0:
        return None
    worst = max(layers, key=lambda la: la.momentum)
    m = worst.momentum
    residual = m**steps
    if residual <= MOVING_RESIDUAL:
        return None
    others = len([la for la in layers if la.momentum**steps > MOVING_RESIDUAL]) - 1
    who = f"{worst.name!r}" + (f" and {others} other(s)" if others else "")
    if m >= 1:
        advice = "momentum 1 never updates them: lower it"
    else:
        advice = (
            f"train for at least {_steps_needed(m)} steps (more epochs, more data or smaller "
            f"batches) or lower momentum (0.9 needs {_steps_needed(0.9)})"
        )
    return (
        f"BatchNormalization {who} (momentum {m:g}) saw {steps} training step(s): its moving "
        f"mean and variance, which evaluate and predict use, are still {residual:.0%} their "
        f"initial 0 and 1, so inference will not behave as training did; {advice}"
    )


def _steps_needed(momentum: float) -> int:
    """Fewest updates after which ``momentum**n <= MOVING_RESIDUAL`` (0 < momentum < 1)."""
    return math.ceil(math.log(MOVING_RESIDUAL) / math.log(momentum))
