"""The device-resident training step of the ``cuda`` backend (:class:`sbnnumba.training.resident.CudaTrainer`)
against the host estimators and optimizers, from the same uniforms. The device step runs the host's
layer methods and the registry's estimator function on a device copy of the network, so these tests
check the ``cuda`` backend's training-step operations in place, and that nothing else differs.

Ordinary tests, in numba's CUDA simulator without a GPU (tests/conftest.py), on the device where one
is present.
"""
import numpy as np
import pytest
from cuda_checks import close, equal

pytestmark = pytest.mark.usefixtures("cuda_backend")


def _device_problem(noise="logistic", seed=0, sizes=(6, 5, 7, 4), n_classes=3, batch=3):
    import sbnnumba as sb
    rng = np.random.default_rng(seed)
    net = sb.Network.dense(list(sizes), n_classes, noise=noise, rng=seed)
    x = rng.normal(size=(batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, n_classes, size=batch)
    uniforms = [rng.random((batch, n)).astype(np.float32) for n in sizes[1:]]
    return net, x, y, uniforms


def _host_path_gradient(net, x, y, uniforms, method, weight_uniforms=None):
    from sbnnumba.estimators.psa import psa_path_gradient
    from sbnnumba.estimators.st import st_path_gradient
    path = net.sample(x, uniforms=uniforms, weight_uniforms=weight_uniforms)
    weights = np.full(x.shape[0], 1 / x.shape[0], np.float32)
    fn = psa_path_gradient if method == "psa" else st_path_gradient
    return fn(net, path, y, weights)


def test_device_step_gradients():
    """CudaTrainer (the device-resident step) gives the host PSA / ST gradients from the same uniforms,
    for logistic (ratio form) and normal (generic form) noise; the trainer does not touch net.params."""
    import sbnnumba as sb
    from sbnnumba.training.resident import CudaTrainer
    for noise in ("logistic", "normal"):
        for method in ("psa", "st"):
            net, x, y, uniforms = _device_problem(noise, seed=3)
            before = {k: p.copy() for k, p in net.params.items()}
            trainer = CudaTrainer(net, method, sb.optim.Adam(lr=1e-2), max_batch=4)
            loss, grads = trainer.gradients(x, y, uniforms=uniforms)
            loss_host, grads_host = _host_path_gradient(net, x, y, uniforms, method)
            close(loss, loss_host, f"device {noise} {method} loss", rtol=1e-5, atol=1e-6)
            for key in grads_host:
                scale = np.abs(grads_host[key]).max() + 1e-3
                close(grads[key] / scale, grads_host[key] / scale, f"device {noise} {method} {key}",
                      rtol=1e-4, atol=1e-5)
            for key, p in net.params.items():
                equal(p, before[key], f"device {noise} {method}: net.params[{key!r}] unchanged")


def test_device_step_runs_the_registry_estimator():
    """An estimator registered with device_step=True runs on the device with no code of its own there: PSA
    with the sampled head (head="sample", registered under a test name) equals the host's."""
    import sbnnumba as sb
    from sbnnumba.estimators import registry
    from sbnnumba.estimators.psa import psa_path_gradient
    from sbnnumba.training.resident import CudaTrainer
    registry.register_path_estimator("test-psa-sample", psa_path_gradient, device_step=True, head="sample")
    try:
        net, x, y, uniforms = _device_problem(seed=8)
        trainer = CudaTrainer(net, "test-psa-sample", sb.optim.Adam(lr=1e-2), max_batch=4)
        loss, grads = trainer.gradients(x, y, uniforms=uniforms)
    finally:
        registry.PATH_ESTIMATORS.pop("test-psa-sample")
        registry.DEVICE_STEPS.discard("test-psa-sample")
    path = net.sample(x, uniforms=uniforms)
    loss_host, grads_host = psa_path_gradient(net, path, y, np.full(3, 1 / 3, np.float32), head="sample")
    close(loss, loss_host, "device psa head=sample loss", rtol=1e-5, atol=1e-6)
    for key in grads_host:
        scale = np.abs(grads_host[key]).max() + 1e-3
        close(grads[key] / scale, grads_host[key] / scale, f"device psa head=sample {key}", rtol=1e-4, atol=1e-5)


def test_device_step_updates():
    """Three steps of CudaTrainer equal three host steps (same uniforms): Adam with a cosine schedule,
    coupled weight decay and element-wise clipping; AdamW; SGD with Nesterov momentum. sync() writes
    the parameters and the optimizer state back."""
    import sbnnumba as sb
    from sbnnumba.training.resident import CudaTrainer
    makers = {
        "adam": lambda: sb.optim.Adam(lr=0.05, weight_decay=1e-3, clip_value=0.05, schedule=sb.optim.CosineLR(5)),
        "adamw": lambda: sb.optim.Adam(lr=0.05, weight_decay=0.1, decoupled=True),
        "sgd": lambda: sb.optim.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    }
    for name, method in (("adam", "psa"), ("adam", "st"), ("adamw", "psa"), ("sgd", "st")):
        make = makers[name]
        net_host, x, y, _ = _device_problem(seed=4)
        net_dev, _, _, _ = _device_problem(seed=4)
        rng = np.random.default_rng(9)
        steps = [[rng.random((3, n)).astype(np.float32) for n in (5, 7, 4)] for _ in range(3)]
        opt_host, opt_dev = make(), make()
        trainer = CudaTrainer(net_dev, method, opt_dev, max_batch=3)
        for uniforms in steps:
            _, grads = _host_path_gradient(net_host, x, y, uniforms, method)
            opt_host.update(net_host.params, grads)
            trainer.step(x, y, uniforms=uniforms)
        trainer.sync()
        if opt_dev.step_count != 3:
            raise AssertionError(f"{name} {method}: step_count {opt_dev.step_count} != 3")
        for key, p in net_host.params.items():
            close(net_dev.params[key], p, f"{name} {method} {key} after 3 steps", rtol=1e-4, atol=1e-5)
        for key, bufs in opt_host.state.items():
            for b, v in bufs.items():
                close(opt_dev.state[key][b], v, f"{name} {method} state {key}.{b}", rtol=1e-4, atol=1e-6)


def test_device_step_resident():
    """A device-resident step makes no host-to-device copy and no download (the ratio form's saturation
    count stays on the device, #40); an epoch over an uploaded dataset (device batches, device
    generators) lowers the loss of a learnable toy problem."""
    from numba import cuda

    import sbnnumba as sb
    from sbnnumba.training.resident import CudaTrainer
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    net = sb.Network.dense([4, 6, 5], 2, rng=2)
    trainer = CudaTrainer(net, "psa", sb.optim.Adam(lr=0.05), seed=1, max_batch=8)
    x_dev, y_dev = trainer.upload(x, y)
    counts = {"up": 0, "down": 0}
    fake = type(x_dev)  # the simulator's FakeCUDAArray or a real DeviceNDArray
    orig_to_device, orig_copy = cuda.to_device, fake.copy_to_host

    def to_device(*args, **kwargs):
        counts["up"] += 1
        return orig_to_device(*args, **kwargs)

    def copy_to_host(self, *args, **kwargs):
        counts["down"] += 1
        return orig_copy(self, *args, **kwargs)

    import warnings
    cuda.to_device, fake.copy_to_host = to_device, copy_to_host
    try:
        with warnings.catch_warnings():  # on a GPU, a host array passed to a kernel is an implicit copy
            warnings.filterwarnings("error", message=".*[Hh]ost array.*")
            trainer.step(x_dev[:8], y_dev[:8])
    finally:
        cuda.to_device, fake.copy_to_host = orig_to_device, orig_copy
    if counts["up"] != 0 or counts["down"] != 0:
        raise AssertionError(f"transfers in one device-resident step: {counts}")
    losses = [trainer.train_epoch(x_dev, y_dev, 8, rng=np.random.default_rng(e)) for e in range(3)]
    if not all(np.isfinite(losses)) or not losses[-1] < losses[0]:
        raise AssertionError(f"device epochs did not lower the loss: {losses}")
    trainer.sync()
    acc = float(np.mean(net.predict(x, samples=10, rng=0) == y))
    if acc < 0.6:
        raise AssertionError(f"after 3 device epochs, host accuracy {acc}")


def test_device_fit():
    """sbnnumba.training.fit on backend 'cuda' uses the device-resident step for a dense network: it trains
    (finite history), writes the trained parameters back to the host network, and a run resumed
    after epoch 1 ends with the parameters of an uninterrupted 2-epoch run."""
    import tempfile

    import sbnnumba as sb
    from sbnnumba import training
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    options = dict(estimator="psa", batch_size=8, optimizer="adam", lr=0.05, seed=3, val_fraction=0.2,
                   eval_samples=2, train_eval_size=0, progress=False, plots=False)

    def make():
        return sb.architectures.build("mlp", (4,), 2, rng=1, backend="cuda", hidden=(5,))

    from sbnnumba.training.resident import CudaTrainer
    calls = []
    original = CudaTrainer.train_epoch

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    net_full = make()
    before = {k: p.copy() for k, p in net_full.params.items()}
    CudaTrainer.train_epoch = counting
    try:
        res = training.fit(net_full, (x, y), epochs=2, **options)
    finally:
        CudaTrainer.train_epoch = original
    if len(calls) != 2:
        raise AssertionError(f"fit on backend 'cuda' ran {len(calls)} device epochs, expected 2")
    if len(res.history) != 2 or not all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"])
                                        for r in res.history):
        raise AssertionError(f"device fit history: {res.history}")
    if all(np.array_equal(p, before[k]) for k, p in net_full.params.items()):
        raise AssertionError("device fit did not change the host parameters")
    with tempfile.TemporaryDirectory() as tmp:
        net_a = make()
        training.fit(net_a, (x, y), epochs=1, out=tmp, **options)
        net_b = make()
        training.fit(net_b, (x, y), epochs=2, out=tmp, resume=True, **options)
    for key, p in net_full.params.items():
        close(net_b.params[key], p, f"resumed device fit {key}", rtol=1e-6, atol=1e-7)
    # Bernoulli weights and batch normalization are device-resident too: the running statistics and eta
    # come back to the host after the epoch
    net_bin = sb.architectures.build("mlp", (4,), 2, rng=1, backend="cuda", hidden=(5, 5), weight="hidden",
                                     normalize=True)
    eta0 = net_bin.params["stages.1.eta"].copy()
    calls.clear()
    CudaTrainer.train_epoch = counting
    try:
        res = training.fit(net_bin, (x, y), epochs=1, **{**options, "data_init": False})
    finally:
        CudaTrainer.train_epoch = original
    mean, var = net_bin.stages[1].running["stochastic"]
    if len(calls) != 1 or not np.isfinite(res.history[-1]["val_loss"]):
        raise AssertionError(f"binary device fit: {len(calls)} device epochs, history {res.history}")
    if np.array_equal(net_bin.params["stages.1.eta"], eta0) or np.all(mean == 0) or np.all(var == 1):
        raise AssertionError("binary device fit: eta or the running statistics were not written back")


def test_device_step_conv():
    """CudaTrainer on a conv network (padding, stride (2, 1), a rectangular kernel, then a dense stage):
    PSA / ST gradients equal the host estimators' from the same uniforms (logistic: ratio form; normal:
    generic form), and one Adam step equals the host's."""
    import sbnnumba as sb
    from sbnnumba.training.resident import CudaTrainer

    def make(noise):
        rng = np.random.default_rng(0)
        stages = [sb.Conv2d(3, 4, 3, padding=1, rng=rng, in_shape=(3, 5, 4)),
                  sb.Conv2d(4, 3, (2, 3), stride=(2, 1), rng=rng), sb.Linear(3 * 2 * 2, 5, rng=rng)]
        return sb.Network(stages, sb.Linear(5, 3, rng=rng), noise=noise)

    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=2)
    for noise in ("logistic", "normal"):
        net = make(noise)
        uniforms = [rng.random((2,) + shape).astype(np.float32) for shape in net.stage_shapes((3, 5, 4))]
        for method in ("psa", "st"):
            trainer = CudaTrainer(net, method, sb.optim.Adam(lr=0.01), max_batch=2)
            loss, grads = trainer.gradients(x, y, uniforms=uniforms)
            loss_host, grads_host = _host_path_gradient(net, x, y, uniforms, method)
            close(loss, loss_host, f"conv {noise} {method} loss", rtol=1e-5, atol=1e-6)
            for key in grads_host:
                scale = np.abs(grads_host[key]).max() + 1e-3
                close(grads[key] / scale, grads_host[key] / scale, f"conv {noise} {method} {key}", rtol=1e-4,
                      atol=1e-5)
    net_host, net_dev = make("logistic"), make("logistic")
    uniforms = [rng.random((2,) + shape).astype(np.float32) for shape in net_host.stage_shapes((3, 5, 4))]
    opt_host, opt_dev = sb.optim.Adam(lr=0.05), sb.optim.Adam(lr=0.05)
    _, grads = _host_path_gradient(net_host, x, y, uniforms, "psa")
    opt_host.update(net_host.params, grads)
    trainer = CudaTrainer(net_dev, "psa", opt_dev, max_batch=2)
    trainer.step(x, y, uniforms=uniforms)
    trainer.sync()
    for key, p in net_host.params.items():
        close(net_dev.params[key], p, f"conv Adam step {key}", rtol=1e-4, atol=1e-5)


def _binary_nets():
    """Small networks with Bernoulli weights and batch normalization: dense (hidden binary stages) and conv
    (all stages binary; padding, stride 2), with the weight rules and noises of spec st.md."""
    import sbnnumba as sb

    def dense(noise="logistic", weight_noise="logistic", rule="md"):
        return sb.Network.dense([6, 5, 7, 4], 3, noise=noise, rng=2, weight="hidden", weight_noise=weight_noise,
                                weight_grad=rule, normalize=True)

    def conv(noise="logistic", weight_noise="logistic", rule="md"):
        rng = np.random.default_rng(1)
        kw = dict(rng=rng, weight="bernoulli", weight_noise=weight_noise, weight_grad=rule)
        stages = [sb.Normalized(sb.Conv2d(2, 4, 3, padding=1, in_shape=(2, 5, 4), **kw)),
                  sb.Normalized(sb.Conv2d(4, 3, 3, stride=2, **kw))]
        return sb.Network(stages, sb.Linear(3 * 2 * 1, 3, rng=rng), noise=noise)

    return {"dense": (dense, (6,)), "conv": (conv, (2, 5, 4))}


def test_device_step_binary():
    """CudaTrainer with Bernoulli weights and batch normalization: from the same activation and weight
    uniforms, the PSA / ST loss and the gradients of eta (mirror descent and latent rules), bias, gamma
    and beta equal the host's (dense and conv; logistic ratio form and normal generic form); the running
    statistics follow the host's; SGD steps with the projection of uniform-noise latent weights onto
    [-1, 1] equal the host's."""
    import sbnnumba as sb
    from sbnnumba.training.resident import CudaTrainer
    rng = np.random.default_rng(21)
    nets = _binary_nets()
    # (the simulator runs every thread of the conv GEMMs and reductions as a Python thread: few conv cases)
    cases = [("dense", noise, weight_noise, rule, method)
             for noise, weight_noise, rule in (("logistic", "logistic", "md"), ("normal", "triangular", "latent"))
             for method in ("psa", "st")]
    cases += [("conv", "logistic", "logistic", "md", "psa"), ("conv", "normal", "triangular", "latent", "st")]
    for name, noise, weight_noise, rule, method in cases:
        make, shape = nets[name]
        x = rng.normal(size=(4,) + shape).astype(np.float32)
        y = rng.integers(0, 3, size=4)
        net_host, net_dev = make(noise, weight_noise, rule), make(noise, weight_noise, rule)
        uniforms = [rng.random((4,) + s).astype(np.float32) for s in net_host.stage_shapes(shape)]
        wu = {p: rng.random(layer.latent.eta.shape).astype(np.float32) for p, layer in net_host.latent_layers()}
        trainer = CudaTrainer(net_dev, method, sb.optim.Adam(lr=1e-2), max_batch=4, input_shape=shape)
        loss, grads = trainer.gradients(x, y, uniforms=uniforms, weight_uniforms=wu)
        loss_host, grads_host = _host_path_gradient(net_host, x, y, uniforms, method, wu)
        tag = f"binary {name} {noise}/{weight_noise} {rule} {method}"
        close(loss, loss_host, f"{tag} loss", rtol=1e-5, atol=1e-6)
        if set(grads) != set(grads_host) or not any(k.endswith(".eta") for k in grads):
            raise AssertionError(f"{tag}: keys {sorted(grads)} vs {sorted(grads_host)}")
        for key in grads_host:
            scale = np.abs(grads_host[key]).max() + 1e-3
            if key.endswith(".bias") and key.replace(".bias", ".beta") in grads_host:
                # a bias in front of a normalization: its gradient is 0 up to rounding on both sides
                scale = np.abs(grads_host[key.replace(".bias", ".beta")]).max() + 1e-3
                if max(np.abs(grads[key]).max(), np.abs(grads_host[key]).max()) > 1e-5 * scale:
                    raise AssertionError(f"{tag} {key}: expected 0 up to rounding, got {grads[key]}")
                continue
            close(grads[key] / scale, grads_host[key] / scale, f"{tag} {key}", rtol=1e-4, atol=1e-5)
        trainer.sync()
        for k, norm in enumerate(net_host.normalizations()):
            for got, want, what in zip(net_dev.normalizations()[k].running["stochastic"],
                                       norm.running["stochastic"], ("mean", "var")):
                close(got, want, f"{tag} running {what} {k}", rtol=1e-5, atol=1e-6)
    # Updates with uniform weight noise: eta is clipped to [-1, 1] after every step. SGD, not Adam: the bias
    # in front of a normalization has a gradient that is 0 up to rounding, which Adam would blow up into
    # steps of +-lr of arbitrary sign (the Adam kernel itself is checked in device_step_updates).
    for name, (make, shape) in nets.items():
        net_host, net_dev = make("logistic", "uniform"), make("logistic", "uniform")
        x = rng.normal(size=(4,) + shape).astype(np.float32)
        y = rng.integers(0, 3, size=4)
        opt_host, opt_dev = (sb.optim.SGD(lr=2.0, momentum=0.9) for _ in range(2))
        trainer = CudaTrainer(net_dev, "psa", opt_dev, max_batch=4, input_shape=shape)
        for _ in range(2):
            uniforms = [rng.random((4,) + s).astype(np.float32) for s in net_host.stage_shapes(shape)]
            wu = {p: rng.random(layer.latent.eta.shape).astype(np.float32) for p, layer in net_host.latent_layers()}
            _, grads = _host_path_gradient(net_host, x, y, uniforms, "psa", wu)
            opt_host.update(net_host.params, grads)
            net_host.apply_constraints()
            trainer.step(x, y, uniforms=uniforms, weight_uniforms=wu)
        trainer.sync()
        for key, p in net_host.params.items():
            close(net_dev.params[key], p, f"binary {name} uniform SGD {key}", rtol=1e-4, atol=1e-5)
        etas = [layer.latent.eta for _, layer in net_dev.latent_layers()]
        if max(np.abs(e).max() for e in etas) > 1 or not any(np.abs(e).max() == 1 for e in etas):
            raise AssertionError(f"binary {name}: uniform-noise eta not projected onto [-1, 1]")


def test_device_step_scope():
    """Networks and settings outside the device step's scope are refused with a clear error."""
    import sbnnumba as sb

    class _Unsupported(sb.Linear):  # a stage type the device step does not know
        pass

    from sbnnumba.training.resident import CudaTrainer
    cases = [
        (lambda: CudaTrainer(sb.Network([_Unsupported(4, 3, rng=0)], sb.Linear(3, 2, rng=0)), "psa"),
         NotImplementedError,
         "_Unsupported"),
        (lambda: CudaTrainer(sb.Network([sb.Conv2d(1, 2, 3, rng=0)], sb.Linear(2 * 2 * 2, 2, rng=0)), "psa"),
         ValueError, "input_shape"),
        (lambda: CudaTrainer(sb.Network.dense([4, 3], 2, rng=0), "arm"), ValueError, "method"),
        (lambda: CudaTrainer(sb.Network.dense([4, 3], 2, rng=0), "psa", sb.optim.Adam(clip_norm=1.0)),
         NotImplementedError, "clip_norm"),
    ]
    for make, exc_type, words in cases:
        try:
            make()
        except exc_type as exc:
            if words not in str(exc):
                raise AssertionError(f"message {exc!r} does not name {words!r}")
        else:
            raise AssertionError(f"expected {exc_type.__name__} naming {words!r}")
    # fit's choice: a network outside the scope warns and keeps the per-call routing
    import warnings

    from sbnnumba.training import FitConfig
    from sbnnumba.training.device import device_epochs

    x, y = np.zeros((8, 4), np.float32), np.zeros(8, np.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = device_epochs(sb.Network.dense([4, 3], 2, rng=0, backend="cuda"), FitConfig(batch_size=8),
                               sb.optim.Adam(clip_norm=1.0), x, y)
    if chosen is not None or not any("not device-resident" in str(w.message) for w in caught):
        messages = [str(w.message) for w in caught]
        raise AssertionError(f"expected no device trainer and a warning, got {chosen!r}, {messages}")
    if device_epochs(sb.Network.dense([4, 3], 2, rng=0, backend="cuda"), FitConfig(estimator="concrete", batch_size=8),
                     sb.optim.Adam(), x, y) is not None:
        raise AssertionError("estimator 'concrete' must keep the per-call routing")
