import pytest

from beha2vec.config import ConfigError, load_config


def test_defaults_and_overrides(tmp_path):
    conf_file = tmp_path / "c.yaml"
    conf_file.write_text("sessionize:\n  gap_minutes: 20\nlake:\n  root: /data/lake\n")
    overrides = ["sessionize.gap_minutes=45", "sessionize.visit_events=[page_view]"]
    config = load_config([conf_file], overrides, lake_root="/tmp/other")
    assert config.sessionize.gap_minutes == 45.0
    assert config.sessionize.visit_events == ["page_view"]
    assert config.lake.root == "/tmp/other"
    assert config.ingest.max_line_bytes == 1_000_000


def test_int_widens_to_float_but_bool_is_not_int(tmp_path):
    assert load_config(overrides=["sessionize.max_hours=12"]).sessionize.max_hours == 12.0
    with pytest.raises(ConfigError, match="max_events' must be an integer"):
        load_config(overrides=["sessionize.max_events=true"])


def test_unknown_key_names_key_and_file(tmp_path):
    conf_file = tmp_path / "bad.yaml"
    conf_file.write_text("sessionize:\n  gap_minuts: 20\n")
    with pytest.raises(ConfigError) as err:
        load_config([conf_file])
    assert str(conf_file) in str(err.value)
    assert "sessionize.gap_minuts" in str(err.value)
    assert "did you mean 'sessionize.gap_minutes'" in str(err.value)


def test_wrong_type_names_key_and_origin(tmp_path):
    conf_file = tmp_path / "bad.yaml"
    conf_file.write_text("ingest:\n  max_line_bytes: lots\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: 'ingest.max_line_bytes' must be an integer, got 'lots"):
        load_config([conf_file])
    with pytest.raises(ConfigError, match=r"--set sessionize.merge_repeats: .* must be true or false"):
        load_config(overrides=["sessionize.merge_repeats=maybe"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(overrides=["sessionize.gap_minutes"])
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    with pytest.raises(ConfigError, match="'spark' must be a mapping"):
        load_config(overrides=["spark=3"])


def test_repository_conf_files_are_valid():
    from conftest import ROOT

    for path in sorted((ROOT / "conf").glob("*.yaml")):
        load_config([path])


def test_config_hash_is_stable_and_sensitive():
    a, b = load_config(), load_config()
    assert a.hash() == b.hash()
    assert a.hash() != load_config(overrides=["sessionize.gap_minutes=31"]).hash()


def test_mappings_merge_with_defaults():
    config = load_config(overrides=["embed.openai.price_per_million_tokens.my-model=0.5"])
    prices = config.embed.openai.price_per_million_tokens
    assert prices["my-model"] == 0.5 and prices["text-embedding-3-small"] == 0.02


def test_combine_is_replaced_not_merged(tmp_path):
    conf = tmp_path / "a.yaml"
    conf.write_text("user_vectors:\n  combine: {encoder: 0.5, tfidf: 0.5}\nspark:\n  extra: {a: '1'}\n")
    config = load_config([conf], ["user_vectors.combine={tfidf: 1.0}", "spark.extra={b: '2'}"])
    assert config.user_vectors.combine == {"tfidf": 1.0}
    assert config.spark.extra == {"a": "1", "b": "2"}
