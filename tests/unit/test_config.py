from __future__ import annotations

from pathlib import Path

import pytest

from neurohw.config import describe, load_config, loads, to_toml, valid_keys
from neurohw.errors import ConfigError

CARDS = sorted(Path(__file__).resolve().parents[2].joinpath("models").glob("*.toml"))


def test_every_card_loads_and_round_trips_through_toml():
    assert {c.stem for c in CARDS} >= {
        "mnist_ep_fc1", "mnist_ep_fc2", "mnist_cep_fc1", "mnist_cvf_fc1", "mnist_ep_conv", "cifar10_ep_vgg",
    }
    for card in CARDS:
        cfg = load_config(card)
        assert loads(to_toml(cfg)) == cfg
        assert cfg.reference.paper and cfg.reference.published and cfg.reference.source, card


def test_overrides_are_typed_toml_values():
    cfg = load_config(None, ["train.epochs=3", "net.hidden=[64, 32]", "net.activation=tanh", "learner.beta=1", "data.augment=true"])
    assert cfg.train.epochs == 3 and cfg.net.hidden == (64, 32) and cfg.net.activation == "tanh"
    assert cfg.learner.beta == 1.0 and isinstance(cfg.learner.beta, float) and cfg.data.augment is True


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.epoch=3", ["train.epoch", "did you mean 'train.epochs'"]),
        ("lerner.beta=0.1", ["lerner.beta", "did you mean 'learner.beta'"]),
        ("train.epochs=abc", ["train.epochs", "expected int", "'abc'"]),
        ("net.hidden=[1.5]", ["net.hidden", "expected int"]),
        ("net.activation=tanhh", ["net.activation", "did you mean 'tanh'"]),
        ("learner.estimator=symetric", ["learner.estimator", "did you mean 'symmetric'"]),
        ("learner.beta=0", ["learner.beta", "> 0"]),
        ("train.lrs=[]", ["train.lrs"]),
        ("net.architecture=conv", ["net.channels"]),
        ("dtype=float16", ["dtype"]),
        ("epochs", ["key=value"]),
    ],
)
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


def test_bad_card_names_the_file_and_key(tmp_path):
    card = tmp_path / "bad.toml"
    card.write_text("[train]\nepochs = 2\nbatchsize = 3\n")
    with pytest.raises(ConfigError, match=r"train.batchsize.*did you mean 'train.batch_size'.*bad.toml"):
        load_config(card)
    card.write_text("[train\nepochs = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(card)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_conv_lists_must_match_the_number_of_conv_layers():
    with pytest.raises(ConfigError, match="net.kernel_sizes needs 2 entries"):
        load_config(None, ["net.architecture=conv", "net.channels=[4, 8]", "net.kernel_sizes=[3]"])
    with pytest.raises(ConfigError, match="net.pools"):
        load_config(None, ["net.architecture=conv", "net.channels=[4]", "net.kernel_sizes=[3]", "net.pools=['max3']"])


def test_every_key_is_documented():
    text = describe()
    for key in valid_keys():
        assert key in text
