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


# ------------------------------------------------------------------- no silently ignored option
MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize(
    "card, overrides, key, used_by",
    [
        ("mnist_ep_fc1", ["learner.algorithm=bptt", "learner.estimator=symmetric"], "learner.estimator", "EP learners"),
        ("mnist_ep_fc1", ["learner.algorithm=bp", "learner.beta=0.2"], "learner.beta", "DTP learners"),
        ("mnist_ep_fc1", ["learner.algorithm=bp", "learner.T_free=50"], "learner.T_free", "bptt"),
        ("mnist_dtp_mlp", ["learner.T_free=50"], "learner.T_free", "bptt"),
        ("mnist_dtp_mlp", ["learner.estimator=symmetric"], "learner.estimator", "EP learners"),
        ("mnist_dtp_mlp", ["learner.psi_deg=10"], "learner.psi_deg", "'cvf'"),
        ("mnist_ep_fc1", ["learner.vf_rule=vector-field"], "learner.vf_rule", "'cvf'"),
        ("mnist_cep_fc1", ["learner.feedback_lr_ratio=0.5"], "learner.feedback_lr_ratio", "'cvf'"),
        ("mnist_ep_fc1", ["learner.fb_iters=[5]"], "learner.fb_iters", "DTP learners"),
        ("mnist_ep_fc1", ["learner.T_backprop=3"], "learner.T_backprop", "'bptt'"),
        ("mnist_ep_fc1", ["learner.algorithm=bp", "train.optimizer=adam", "train.momentum=0.9"], "train.momentum", "'sgd'"),
        ("mnist_ep_fc1", ["train.scheduler=none", "train.lr_min=0.01"], "train.lr_min", "'cosine'"),
        ("mnist_ep_fc1", ["data.crop_padding=2"], "data.crop_padding", "data.augment"),
        ("mnist_ep_fc1", ["net.pools=['avg2']"], "net.pools", "'conv'"),
    ],
)
def test_an_override_the_run_does_not_use_is_refused(card, overrides, key, used_by):
    with pytest.raises(ConfigError) as e:
        load_config(MODELS / f"{card}.toml", overrides)
    msg = str(e.value)
    assert msg.startswith(key) and "not used by this run" in msg and used_by in msg and "drop the override" in msg


def test_a_card_key_its_own_algorithm_does_not_use_is_refused(tmp_path):
    card = tmp_path / "card.toml"
    card.write_text('[learner]\nalgorithm = "bp"\nT_nudge = 4\n')
    with pytest.raises(ConfigError, match=r"learner.T_nudge = 4 .*not used.*remove it from the card in '.*card.toml'"):
        load_config(card)
    card.write_text('[learner]\nalgorithm = "bp"\nT_nudge = 10\n')  # the default value: nothing is ignored
    assert load_config(card).learner.T_nudge == 10
    card.write_text('[train]\noptimizer = "adam"\nmomentum = 0.9\n')
    with pytest.raises(ConfigError, match="train.momentum = 0.9"):
        load_config(card)


def test_an_algorithm_override_lists_the_card_keys_it_leaves_unused():
    """As scripts/compare.py and sweeps do: a warning per key, not a refusal."""
    notes: list[str] = []
    cfg = load_config(MODELS / "mnist_cvf_fc1.toml", ["learner.algorithm=dtp"], notes=notes)
    assert cfg.learner.algorithm == "dtp"
    keys = sorted(n.split(" ")[0] for n in notes)
    assert keys == ["learner.T_free", "learner.T_nudge", "learner.estimator", "learner.feedback_lr_ratio", "net.nudge"]
    assert all("overrides made it unused" in n for n in notes)
    notes.clear()
    load_config(MODELS / "cifar10_ep_vgg.toml", ["train.optimizer=adam"], notes=notes)  # the card's momentum 0.9
    assert [n.split(" ")[0] for n in notes] == ["train.momentum"]


def test_a_resolved_config_lists_every_key_and_loads(tmp_path):
    notes: list[str] = []
    cfg = load_config(MODELS / "mnist_ep_fc1.toml", ["learner.algorithm=bp"], notes=notes)
    (tmp_path / "config.toml").write_text(to_toml(cfg))
    assert load_config(tmp_path / "config.toml") == cfg  # the card's nudge is kept, not refused, on resume
    with pytest.raises(ConfigError, match="learner.beta"):  # but a new override is still checked
        load_config(tmp_path / "config.toml", ["learner.beta=0.3"])


def test_an_unknown_override_is_not_said_to_be_in_the_card():
    with pytest.raises(ConfigError) as e:
        load_config(MODELS / "mnist_ep_fc1.toml", ["train.epoch=3"])
    assert "in the override 'train.epoch=3'" in str(e.value) and "mnist_ep_fc1.toml" not in str(e.value)
