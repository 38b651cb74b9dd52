"""One input convention (#41): uint8 images give the same answer as their floats x / 255 at every prediction
entry point, and a network trained on images records that and refuses pixel values passed as floats."""
import numpy as np
import pytest

import sbnnumba as sb
from sbnnumba import datasets, inputs, training
from sbnnumba.packed import PackedNetwork
from sbnnumba.training.fit import check_resume


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A fully binary 784-32 MLP trained one epoch on 300 uint8 images, saved; and 100 uint8 test images."""
    ds = datasets.load_embedded()
    net = sb.Network.dense([784, 32], 10, rng=0, weight="bernoulli")
    out = tmp_path_factory.mktemp("run")
    training.fit(net, (ds.x_train[:300].reshape(300, -1), ds.y_train[:300]), out=out, epochs=1, batch_size=50,
                 progress=False, plots=False, eval_samples=2, train_eval_size=0)
    return net, out, ds.x_test[:100].reshape(100, -1)


def test_fit_records_the_convention_in_the_network_checkpoint_and_packed_form(trained, tmp_path):
    net, out, _ = trained
    assert net.input_convention == inputs.PIXELS
    loaded = training.load_network(out / training.CHECKPOINT_NAME)
    assert loaded.input_convention == inputs.PIXELS
    packed = PackedNetwork.from_network(loaded)
    assert PackedNetwork.load(packed.save(tmp_path / "p.npz")).input_convention == inputs.PIXELS
    raw = sb.Network.dense([6, 4], 2, rng=0)
    training.fit(raw, (np.random.default_rng(0).random((40, 6)), np.arange(40) % 2), epochs=1, batch_size=20,
                 progress=False, eval_samples=2, train_eval_size=0)
    assert raw.input_convention is None  # trained on floats: nothing recorded


def _entry_points(net):
    packed = PackedNetwork.from_network(net)
    quantized = PackedNetwork.from_network(net, input_quantization=(1 / 255, 8))
    return {
        "Network.predict": lambda x: net.predict(x, samples=3, rng=5),
        "Network.predict deterministic": lambda x: net.predict(x, mode="deterministic"),
        "Network.forward_deterministic": net.forward_deterministic,
        "Network.sample": lambda x: net.sample(x, rng=3).logits,
        "PackedNetwork.predict": packed.predict_logits,
        "PackedNetwork.predict quantized": quantized.predict_logits,
    }


def test_uint8_and_float_forms_give_the_same_answer_everywhere(trained):
    net, _, x = trained
    floats = datasets.normalize(x)
    for name, call in _entry_points(net).items():
        np.testing.assert_array_equal(call(x), call(floats), err_msg=name)


@pytest.mark.parametrize("bad", ["pixels as floats", "negative"])
def test_values_outside_the_recorded_range_are_refused_saying_what_to_pass(trained, bad):
    net, _, x = trained
    values = x.astype(np.float32) if bad == "pixels as floats" else datasets.normalize(x) - 0.5
    for name, call in _entry_points(net).items():
        with pytest.raises(ValueError, match=r"x: .*pass the uint8 images, or floats x / 255 in \[0, 1\]"):
            call(values)


def test_off_grid_floats_on_a_quantized_network_say_what_to_pass(trained):
    net, _, x = trained
    quantized = PackedNetwork.from_network(net, input_quantization=(1 / 255, 8))
    with pytest.raises(ValueError, match="pass the integer codes q"):
        quantized.predict(datasets.normalize(x) * 0.999)


def test_a_network_without_a_record_takes_uint8_as_images_too():
    net = sb.Network.dense([4, 3], 2, rng=0)
    x = np.arange(8, dtype=np.uint8).reshape(2, 4) * 30
    np.testing.assert_array_equal(net.forward_deterministic(x), net.forward_deterministic(datasets.normalize(x)))
    np.testing.assert_array_equal(net.forward_deterministic(x.astype(np.float32) * 7),  # floats as they are
                                  net.forward_deterministic(np.float32(7) * x.astype(np.float32)))


def test_checkpoints_without_the_record_still_resume(trained):
    net, out, _ = trained
    saved = training.load_checkpoint(out / training.CHECKPOINT_NAME).config
    assert saved["network"]["input"] == inputs.PIXELS
    older = {**saved, "network": {k: v for k, v in saved["network"].items() if k != "input"}}
    check_resume(older, saved, "older.npz")  # no error: the record does not change the trajectory
    with pytest.raises(ValueError, match="description: input"):
        training.network_from_description({**saved["network"], "input": "celsius"})
