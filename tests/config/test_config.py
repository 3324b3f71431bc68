"""Config (CONTRACT.md §6): partial files are valid, errors name key, value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from detector.cli import EXIT_CONFIG, EXIT_OK, main
from detector.config import load_config, restart_needed
from detector.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_a_file_with_only_campaigns_is_valid_and_fills_defaults(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "campaigns:\n  NY-2013:\n    kind: personal\n  W:\n    kind: public\n")
    )
    assert cfg.campaigns["NY-2013"].kind == "personal"
    assert cfg.rules.code_shared.min_accounts == 3
    assert cfg.windows.bucket_s == 60


def test_unknown_key_is_an_error_naming_it_and_the_allowed_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "rules:\n  code_shared:\n    min_acounts: 4\n"))
    msg = str(e.value)
    assert "rules.code_shared.min_acounts" in msg
    assert "min_accounts" in msg  # the allowed keys are listed


def test_wrong_choice_names_key_value_and_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "campaigns:\n  X:\n    kind: secret\n"))
    msg = str(e.value)
    assert "campaigns.X.kind" in msg and "'secret'" in msg
    assert "personal" in msg and "public" in msg


def test_threshold_above_the_exact_distinct_cap_is_refused(tmp_path: Path) -> None:
    text = "windows:\n  distinct_exact_cap: 10\nrules:\n  code_shared:\n    min_accounts: 50\n"
    with pytest.raises(ConfigError, match="distinct_exact_cap"):
        load_config(write(tmp_path, text))


def test_fresh_accounts_older_than_new_ones_are_refused(tmp_path: Path) -> None:
    text = "windows:\n  new_account_age_s: 3600\n  fresh_account_age_s: 7200\n"
    with pytest.raises(ConfigError, match=r"windows\.fresh_account_age_s'=7200.*3600"):
        load_config(write(tmp_path, text))


def test_a_fresh_share_above_one_names_the_key_and_the_range(tmp_path: Path) -> None:
    text = "rules:\n  bot_farm:\n    min_fresh_share: 1.5\n"
    with pytest.raises(ConfigError, match=r"rules\.bot_farm\.min_fresh_share.*1\.5.*less than"):
        load_config(write(tmp_path, text))


def test_a_zero_fresh_pvalue_names_the_key_and_the_range(tmp_path: Path) -> None:
    text = "rules:\n  bot_farm:\n    max_fresh_pvalue: 0\n"
    with pytest.raises(ConfigError, match=r"rules\.bot_farm\.max_fresh_pvalue.*0.*greater than 0"):
        load_config(write(tmp_path, text))


def test_per_campaign_overrides_apply_only_to_that_campaign(tmp_path: Path) -> None:
    text = (
        "campaigns:\n  NY:\n    kind: personal\n    rules:\n"
        "      code_shared:\n        min_accounts: 5\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.rule_for("code_shared", "NY").min_accounts == 5
    assert cfg.rule_for("code_shared", "OTHER").min_accounts == 3


def test_invalid_override_value_is_refused_with_its_path(tmp_path: Path) -> None:
    text = "campaigns:\n  NY:\n    rules:\n      code_shared:\n        min_accounts: one\n"
    with pytest.raises(ConfigError, match=r"campaigns\.NY\.rules\.code_shared\.min_accounts"):
        load_config(write(tmp_path, text))


def test_env_overrides_the_file_and_secrets_stay_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DETECTOR_REDIS__PASSWORD", "hunter2-secret")
    monkeypatch.setenv("DETECTOR_KAFKA__GROUP_ID", "from-env")
    cfg = load_config(write(tmp_path, "kafka:\n  group_id: from-file\n"))
    assert cfg.kafka.group_id == "from-env"
    assert cfg.redis.password is not None
    assert cfg.redis.password.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in cfg.effective_json()
    assert "hunter2-secret" not in repr(cfg)


def test_window_changes_need_a_restart_but_thresholds_do_not(tmp_path: Path) -> None:
    a = load_config(None)
    b = load_config(None, {"rules": {"code_shared": {"min_accounts": 4}}})
    c = load_config(None, {"windows": {"short_s": 300}})
    assert restart_needed(a, b) == []
    assert restart_needed(a, c) == ["windows"]


def test_check_config_prints_effective_values_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(write(tmp_path, "allow_list: [VIP]\n"))]) == EXIT_OK
    out = capsys.readouterr().out
    assert '"allow_list": [\n    "VIP"\n  ]' in out
    assert '"min_accounts": 3' in out


def test_check_config_exits_3_on_an_invalid_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "alerts:\n  max_firing: -1\n")
    assert main(["check-config", str(bad)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "alerts.max_firing" in err and "-1" in err


def test_missing_or_non_mapping_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_every_config_key_is_documented() -> None:
    import json

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()

    def walk(prefix: str, v: object) -> list[str]:
        if isinstance(v, dict) and v:
            return [k for key, x in v.items() for k in walk(f"{prefix}.{key}".strip("."), x)]
        return [prefix]

    keys = walk("", json.loads(load_config(None).effective_json()))
    missing = [k for k in keys if f"`{k}`" not in doc]
    assert missing == []
