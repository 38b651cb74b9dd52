r"""Random numbers whose values do not depend on how a batch is split across ranks.

Activation noise: the uniforms ``u`` of example ``i`` (its position in the global batch) at training
step ``t`` come from its own Philox stream,

.. math:: \text{key} = \text{SeedSequence}(\text{seed}, \text{salt}, t), \qquad
          \text{counter} = i \cdot 2^{192},

(``i`` in the top 64-bit word of the 256-bit counter, which the stream's own draws never reach), so
each example gets the same noise whichever rank computes it and however many ranks there are: a run's
result depends on ``N`` only through the order of float sums. The per-example draws are the stages'
pre-activation shapes in order, each ``(C, H, W)`` or ``(n_out,)`` of ``float32`` / ``float64``.

Bernoulli weights: one sample per step shared by the whole global batch, so every rank draws the same
uniforms from one stream keyed by ``(seed, weight salt, t)``.
"""
from __future__ import annotations

import numpy as np

from ..validation import check_int

ACTIVATION_SALT = 0x5B4E_0001  # separates the activation streams from the weight stream and from others
WEIGHT_SALT = 0x5B4E_0002
_INDEX_SHIFT = 192  # example index in counter word 3


def _key(seed, salt, step):
    return int.from_bytes(np.random.SeedSequence([seed, salt, step]).generate_state(2, np.uint64).tobytes(), "little")


class KeyedNoise:
    """Uniforms for activation and weight noise keyed by (seed, step, global example index).

    Parameters
    ----------
    seed : int
        Non-negative; the run's seed.
    """

    def __init__(self, seed):
        self.seed = check_int(seed, "seed", 0)

    def activation_uniforms(self, stage_shapes, step, lo, hi, dtype):
        """Per-stage uniforms for the examples at global positions ``lo..hi-1`` of step ``step``.

        Parameters
        ----------
        stage_shapes : list of tuple
            Per-example pre-activation shape of each stage (:meth:`sbnnumba.Network.stage_shapes`).
        step : int
            Global step index (counts every optimizer step of the run, across epochs).
        lo, hi : int
            Global positions in the batch (this rank's shard, :func:`~sbnnumba.distributed.shard_bounds`).
        dtype : numpy dtype

        Returns
        -------
        list of ndarray
            One ``(hi - lo, *stage_shape)`` array per stage, values in [0, 1): what
            :meth:`sbnnumba.Network.sample` accepts as ``uniforms``.
        """
        out = [np.empty((hi - lo,) + tuple(s), dtype=dtype) for s in stage_shapes]
        key = _key(self.seed, ACTIVATION_SALT, step)
        for j, i in enumerate(range(lo, hi)):
            gen = np.random.Generator(np.random.Philox(key=key, counter=i << _INDEX_SHIFT))
            for u in out:
                gen.random(out=u[j], dtype=dtype)
        return out

    def weight_uniforms(self, net, step):
        """Uniforms for every Bernoulli weight tensor of ``net`` at step ``step``, the same on every rank:
        dict prefix -> array of the shape of that layer's ``eta`` (what ``Network.sample`` accepts as
        ``weight_uniforms``)."""
        gen = np.random.Generator(np.random.Philox(key=_key(self.seed, WEIGHT_SALT, step)))
        return {prefix: gen.random(layer.latent.eta.shape, dtype=layer.latent.eta.dtype) for prefix, layer in net.latent_layers()}

    def __repr__(self):
        return f"KeyedNoise(seed={self.seed})"
