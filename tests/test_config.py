"""Composition of every group option, the schema and the value checks."""

import itertools

import pytest
from omegaconf import OmegaConf

from conftest import CONF, compose_cfg
from vla_ablate.config import ConfigError, validate


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_its_options():
    assert {"learned", "none", "rope", "sinusoidal"} <= set(options("pos"))
    assert options("mask") == ["causal", "none"]
    assert options("cache") == ["off", "on"]
    assert options("logger") == ["csv", "none", "wandb"]
    assert "smoke" in options("debug") and "ablation" in options("experiment")
    assert options("tokenizer") == ["quantile", "uniform"]
    assert options("data") == ["default", "lerobot"]


@pytest.mark.parametrize("pos,mask,cache", list(itertools.product(options("pos"), options("mask"),
                                                                   options("cache"))))
def test_compose_every_ablation_combination(pos, mask, cache):
    cfg = compose_cfg([f"pos={pos}", f"mask={mask}", f"cache={cache}"])
    assert cfg.pos.name == pos and cfg.mask.name == mask
    assert cfg.cache.enabled is (cache == "on")
    validate(cfg)


@pytest.mark.parametrize("group", ["logger", "debug", "data", "model", "train"])
def test_compose_every_other_option(group):
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}"] if group not in ("debug",) else [f"debug={option}"])
        if (group, option) == ("data", "lerobot"):  # a dataset to read: test_lerobot_runs.py
            with pytest.raises(ConfigError, match="data=lerobot needs data.root=DIR"):
                validate(cfg)
            continue
        validate(cfg)
        if group == "logger":
            assert cfg.logger.name == option


def test_defaults_are_the_assignment():
    cfg = compose_cfg()
    assert (cfg.model.dim, cfg.model.num_layers, cfg.model.num_heads,
            cfg.model.ff_hidden_dim) == (256, 4, 8, 1024)
    assert cfg.model.max_seq_len >= 4 * cfg.data.seq_length
    assert cfg.pos.name == "rope" and cfg.mask.name == "causal" and cfg.cache.enabled
    assert cfg.train.grad_clip == 1.0 and cfg.train.checkpoint_every == 1000
    assert (cfg.data.num_trajectories, cfg.data.seq_length, cfg.data.seed) == (10000, 50, 42)
    assert cfg.logger.name == "csv" and cfg.logger.wandb.mode == "offline"


def test_smoke_preset_is_tiny():
    cfg = compose_cfg(["debug=smoke"])
    assert cfg.train.steps <= 50 and cfg.model.dim <= 32 and cfg.data.num_trajectories <= 100
    # generation timing dominated a smoke run (35 of 38 s on a busy 2-core host): decode steps
    # per cache setting, the per-cell warm-up included, stay few
    e = cfg.eval
    decode_steps = sum(b * (1 + e.gen_repeats) * sum(e.gen_new_tokens) for b in e.gen_batch_sizes)
    assert decode_steps <= 120, decode_steps
    assert e.gen_repeats % 2 == 0  # a balanced order: as many on-off pairs as off-on


def test_ablation_experiment_declares_the_full_sweep():
    cfg = compose_cfg(["experiment=ablation"], hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert set(params) == {"pos", "mask", "cache", "seed"}
    assert len(str(params["seed"]).split(",")) == 3
    assert set(params["mask"].split(",")) == {"causal", "none"}
    assert set(params["cache"].split(",")) == {"on", "off"}
    assert list(params)[0] == "cache"  # outermost: every model's first job comes first
    assert cfg.hydra.mode.name == "MULTIRUN"  # a sweep without -m


def test_unified_experiment_declares_the_token_comparison():
    cfg = compose_cfg(["experiment=unified"], hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params == {"tokens": "action,state_action", "seed": "1,2,3"}
    assert cfg.pos.name == "rope" and cfg.mask.name == "causal"
    assert cfg.hydra.mode.name == "MULTIRUN"
    # its action-token jobs reuse the ablation's RoPE/causal models: the same training config
    from vla_ablate.config import model_key

    ablation = compose_cfg(["experiment=ablation", "seed=2"])
    assert model_key(compose_cfg(["experiment=unified", "tokens=action", "seed=2"])) == \
        model_key(ablation)


def test_sweep_job_folders_are_named_by_their_overrides():
    from vla_ablate.config import job_dir_name

    cfg = compose_cfg(hydra_config=True)
    assert "vla_job_dir:${hydra.job.override_dirname}" in OmegaConf.to_container(
        cfg.hydra.sweep)["subdir"]
    assert {"data.cache_dir", "experiment"} <= set(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert job_dir_name("mask=none,pos=rope,seed=1", 3) == "mask=none,pos=rope,seed=1"
    assert job_dir_name("", 3) == "job3"
    assert "/" not in job_dir_name("data.path=/a/b.pkl", 0)
    long = job_dir_name("x=" + "a" * 400, 0)
    assert len(long) <= 200 and long != job_dir_name("x=" + "a" * 399 + "b", 0)


def test_hydra_settings():
    cfg = compose_cfg(hydra_config=True)
    assert cfg.hydra.job.name == "vla_ablate"
    assert cfg.hydra.run.dir.startswith("outputs/runs/")
    assert cfg.hydra.sweep.dir.startswith("outputs/multirun/")
    # smoke runs land apart, where nothing looks for the newest real sweep
    smoke = compose_cfg(["debug=smoke"], hydra_config=True)
    assert smoke.hydra.run.dir.startswith("outputs/debug/runs/")
    assert smoke.hydra.sweep.dir.startswith("outputs/debug/multirun/")


def test_optional_groups_take_no_plus():
    """``experiment``, ``debug`` and ``hparams_search`` are in the defaults list (as null), so
    ``experiment=ablation`` composes as ``debug=smoke`` does."""
    cfg = compose_cfg(["experiment=ablation", "debug=smoke"], hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.runtime.choices.experiment == "ablation"
    assert cfg.model.dim == 32  # debug applies after the experiment


@pytest.mark.parametrize("override,fragment", [
    ("pos=spiral", "pos/spiral"),
    ("model.dim=abc", "model.dim"),
    ("model.colour=red", "colour"),
    ("train.steps=1.5", "train.steps"),
])
def test_schema_rejects_at_composition(override, fragment):
    with pytest.raises(Exception) as info:
        compose_cfg([override])
    assert fragment in str(info.value)


@pytest.mark.parametrize("override,message", [
    ("model.dim=0", "model.dim must be positive"),
    ("model.num_layers=-1", "model.num_layers must be positive"),
    ("train.batch_size=0", "train.batch_size must be positive"),
    ("data.num_trajectories=0", "data.num_trajectories must be positive"),
    ("model.num_heads=7", "divisible"),
    ("train.optimizer=sgd", "train.optimizer must be adamw or muon, got 'sgd'"),
    ("train.lr=0", "train.lr must be > 0"),
    ("train.lr=-1e-3", "train.lr must be > 0"),
    ("model.dropout=1.0", "model.dropout must lie in [0, 1)"),
    ("model.dropout=-0.1", "model.dropout must lie in [0, 1)"),
    ("data.seq_length=1", "data.seq_length must be >= 2"),
    ("data.seq_length=300", "exceeds model.max_seq_len"),
    ("data.num_trajectories=1", "empty train or validation split"),
    ("data.num_trajectories=20", "train.batch_size (64) exceeds the 18 training trajectories"),
    ("data.path=/nonexistent/file.pkl", "data.path does not exist"),
    ("model.max_seq_len=100", "extrapolation"),
    ("train.device=tpu", "train.device"),
    ("pos.base=-1", "pos.base must be > 0, got -1.0"),
    ("train.max_minutes=-1", "train.max_minutes must be >= 0"),
    ("train.checkpoint_minutes=-1", "train.checkpoint_minutes must be >= 0"),
])
def test_value_checks_one_line(override, message):
    cfg = compose_cfg([override])
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_recipe_keys_leave_the_published_models_keys_as_they_were(monkeypatch):
    """The study of 2026-11-29 (docs/results/2026-11-29/runs.csv) trained before train.schedule,
    decay_frac, embed_lr, head_lr and muon_momentum existed: at the values that reproduce its
    recipe they are left out of the training configuration, so its model keys still match."""
    import torch

    import vla_ablate.config as config
    from vla_ablate.config import identity

    monkeypatch.setattr(identity, "newton_schulz_precision", lambda device: "bf16")
    old = ["experiment=ablation", "seed=1", "pos=rope", "mask=causal", "train.steps=2400",
           "train.schedule=cosine", "train.lr=3e-3", "train.min_lr=1e-4", "train.warmup_steps=60",
           "train.embed_lr=null", "train.head_lr=null", "train.muon_momentum=0.95",
           "train.weight_decay=0.1", "train.batch_size=64"]
    cfg = compose_cfg(old)
    training = config.training_config(cfg, device=torch.device("cpu"), precision="bf16")
    assert config.model_key(cfg, training) == "rope-causal-seed1-c84e757159"
    # any of them away from that recipe is part of the model's identity
    for extra in ["train.schedule=wsd", "train.embed_lr=0.01", "train.head_lr=0.01",
                  "train.muon_momentum=0.9"]:
        changed = compose_cfg(old + [extra])
        key = config.model_key(changed, config.training_config(
            changed, device=torch.device("cpu"), precision="bf16"))
        assert key != "rope-causal-seed1-c84e757159", extra
    # the preset of that recipe trains the same models (whatever the default recipe is)
    preset = compose_cfg(["experiment=ablation", "seed=1", "pos=rope", "mask=causal",
                          "train=cosine_2400"])
    assert config.model_key(preset, config.training_config(
        preset, device=torch.device("cpu"), precision="bf16")) == "rope-causal-seed1-c84e757159"
    # a rate equal to lr trains exactly as null does: the same model
    same = compose_cfg(old + ["train.embed_lr=3e-3", "train.head_lr=3e-3"])
    assert config.model_key(same, config.training_config(
        same, device=torch.device("cpu"), precision="bf16")) == "rope-causal-seed1-c84e757159"
