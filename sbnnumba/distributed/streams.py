r"""Random numbers whose values do not depend on how a batch is split across ranks.

Activation noise: the uniforms ``u`` of example ``i`` (its position in the global batch) at training
step ``t`` come from its own Philox stream,

.. math:: \text{key} = \text{SeedSequence}(\text{seed}, \text{salt}, t), \qquad
          \text{counter} = i \cdot 2^{192},

(``i`` in the top 64-bit word of the 256-bit counter, which the stream's own draws never reach), so
each example gets the same noise whichever rank computes it and however many ranks there are: a run's
result depends on ``N`` only through the order of float sums. The per-example draws are the stages'
pre-activation shapes in order, each ``(C, H, W)`` or ``(n_out,)`` of ``float32`` / ``float64``.

The device-resident step draws the same numbers on the GPU from the key (:meth:`KeyedNoise.stream_key`),
``i`` and the unit's index, without uploading them (:mod:`sbnnumba.backends.cuda.keyed_random`, a
stateless Philox-4x64-10 bit-identical to NumPy's; :class:`~sbnnumba.distributed.DeviceKeyedNoise`).

Bernoulli weights: one sample per step shared by the whole global batch, so every rank draws the same
uniforms from one stream keyed by ``(seed, weight salt, t)``.

Estimators that draw their own randomness (the registry's *direct* estimators: ARM, REINFORCE with a
leave-one-out baseline, relaxations, ...) get one generator per example (:meth:`KeyedNoise.example_generator`,
the same key and counter layout, another salt) and draw everything of that example from it.

Evaluation: sample ``s`` of example ``i`` uses the counter ``i \cdot 2^{192} + s \cdot 2^{128}`` under the key
``SeedSequence(seed, evaluation salt)``; its Bernoulli weight sample is one per ``s``, shared by every
example (:meth:`KeyedNoise.evaluation_uniforms`), so the validation figures do not depend on ``N`` either.
"""
from __future__ import annotations

import numpy as np

from ..validation import check_int

ACTIVATION_SALT = 0x5B4E_0001  # separates the activation streams from the weight stream and from others
WEIGHT_SALT = 0x5B4E_0002
EXAMPLE_SALT = 0x5B4E_0003  # direct estimators: one generator per example
EVALUATION_SALT = 0x5B4E_0004
EVALUATION_WEIGHT_SALT = 0x5B4E_0005
_INDEX_SHIFT = 192  # example index in counter word 3
_SAMPLE_SHIFT = 128  # evaluation sample index in counter word 2


def _key(seed, salt, step):
    return int.from_bytes(np.random.SeedSequence([seed, salt, step]).generate_state(2, np.uint64).tobytes(), "little")


def _per_example(stage_shapes, key, lo, hi, dtype, word2=0):
    """One ``(hi - lo, *shape)`` array per stage; example ``i``'s rows from the Philox stream ``key`` at the
    counter ``i * 2^192 + word2``."""
    out = [np.empty((hi - lo,) + tuple(s), dtype=dtype) for s in stage_shapes]
    for j, i in enumerate(range(lo, hi)):
        gen = np.random.Generator(np.random.Philox(key=key, counter=(i << _INDEX_SHIFT) + word2))
        for u in out:
            gen.random(out=u[j], dtype=dtype)
    return out


def _layer_uniforms(net, key):
    gen = np.random.Generator(np.random.Philox(key=key))
    return {prefix: gen.random(layer.latent.eta.shape, dtype=layer.latent.eta.dtype)
            for prefix, layer in net.latent_layers()}


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
        return _per_example(stage_shapes, self.stream_key(ACTIVATION_SALT, step), lo, hi, dtype)

    def weight_uniforms(self, net, step):
        """Uniforms for every Bernoulli weight tensor of ``net`` at step ``step``, the same on every rank.

        Parameters
        ----------
        net : Network
        step : int
            Global step index.

        Returns
        -------
        dict
            prefix -> array of the shape of that layer's ``eta`` (what ``Network.sample`` accepts as
            ``weight_uniforms``).
        """
        return _layer_uniforms(net, self.stream_key(WEIGHT_SALT, step))

    def stream_key(self, salt, step):
        """The 128-bit Philox key of the streams ``salt`` of step ``step``: :data:`ACTIVATION_SALT` (what
        :meth:`activation_uniforms` draws under, counter ``i 2^192`` for example ``i``) or :data:`WEIGHT_SALT`
        (:meth:`weight_uniforms`: counter 0, the layers' draws concatenated). The device draws the same
        numbers from it (:mod:`sbnnumba.backends.cuda.keyed_random`).

        Parameters
        ----------
        salt : int
            One of the module's ``*_SALT`` constants.
        step : int
            Global step index.

        Returns
        -------
        int
            In ``[0, 2^128)``: ``SeedSequence(seed, salt, step)``'s first two 64-bit words.
        """
        return _key(self.seed, check_int(salt, "salt", 0), check_int(step, "step", 0))

    def example_generator(self, step, index):
        """The generator of example ``index`` (its global position in the batch) at step ``step``.

        Parameters
        ----------
        step : int
            Global step index.
        index : int
            Global position of the example in the batch (>= 0).

        Returns
        -------
        numpy.random.Generator
            Philox under the key ``SeedSequence(seed, example salt, step)`` at the counter ``index * 2^192``:
            whatever a direct estimator draws for this example (states, suffix passes, its Bernoulli
            weight sample) comes from it, so no draw depends on which rank computes the example.
        """
        index = check_int(index, "index", 0)
        return np.random.Generator(np.random.Philox(key=_key(self.seed, EXAMPLE_SALT, step),
                                                    counter=index << _INDEX_SHIFT))

    def evaluation_uniforms(self, net, input_shape, sample, lo, hi):
        """Uniforms of evaluation sample ``sample`` for the examples at positions ``lo..hi-1`` of an evaluation set.

        Parameters
        ----------
        net : Network
        input_shape : tuple
            Per-example input shape.
        sample : int
            Index ``s`` of the network sample (``0 <= s < S``).
        lo, hi : int
            Positions in the whole evaluation set.

        Returns
        -------
        uniforms : list of ndarray
            One ``(hi - lo, *stage_shape)`` array per stage (counter ``i 2^192 + s 2^128`` of example ``i``).
        weight_uniforms : dict
            prefix -> uniforms of every Bernoulli weight tensor: one draw per ``s``, shared by every example.
        """
        sample = check_int(sample, "sample", 0)
        key = _key(self.seed, EVALUATION_SALT, 0)
        uniforms = _per_example(net.stage_shapes(input_shape), key, lo, hi, net.dtype, sample << _SAMPLE_SHIFT)
        return uniforms, _layer_uniforms(net, _key(self.seed, EVALUATION_WEIGHT_SALT, sample))

    def __repr__(self):
        return f"KeyedNoise(seed={self.seed})"
