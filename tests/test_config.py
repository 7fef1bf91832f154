"""ZoomRConfig: defaults validate, every bad setting is rejected with a message naming it, round trips."""

import argparse

import pytest

from zoomr_sgl.config import ENV_VAR, ZoomRConfig, ZoomRConfigError, request_enables_zoomr


def test_defaults_validate_and_round_trip_through_env():
    config = ZoomRConfig()
    assert ZoomRConfig.from_env({ENV_VAR: config.to_env()}) == config
    assert ZoomRConfig.from_env({}) is None


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"zoom_budget": 0}, "zoom_budget"),
        ({"zoom_budget": -5}, "zoom_budget"),
        ({"zoom_topk": 0}, "zoom_topk"),
        ({"zoom_interval": 0}, "zoom_interval"),
        ({"host_store_tokens": -1}, "host_store_tokens"),
        ({"sentence_budget": 0}, "sentence_budget"),
        ({"sentence_min_tokens": 0}, "sentence_min_tokens"),
        ({"max_summary_tokens": -1}, "max_summary_tokens"),
        ({"policy": "magic"}, "policy"),
        ({"summary_open": ""}, "markers"),
        ({"summary_close": "  "}, "markers"),
        ({"summary_open": "<s>", "summary_close": "<s>"}, "differ"),
        ({"min_thought_tokens": 600, "max_thought_tokens": 500}, "min_thought_tokens"),
        ({"zoom_budget": "10"}, "integer"),
        ({"zoom_budget": True}, "integer"),
        ({"wait_for_recall": 1}, "true or false"),
        ({"scoring_layers": "1,x"}, "scoring_layers"),
        ({"host_full_fallback": "ignore"}, "host_full_fallback"),
        ({"beacon": "   "}, "beacon"),
        ({"beacon": "</think>"}, "beacon"),
    ],
)
def test_bad_settings_are_rejected_naming_the_setting(changes, needle):
    with pytest.raises(ZoomRConfigError, match=needle):
        ZoomRConfig(**changes)


def test_cli_flags_map_to_fields():
    parser = argparse.ArgumentParser()
    ZoomRConfig.add_cli_args(parser)
    args = parser.parse_args(["--zoomr-zoom-budget", "256", "--zoomr-policy", "quest", "--zoomr-wait-for-recall"])
    config = ZoomRConfig.from_cli_args(args)
    assert (config.zoom_budget, config.policy, config.wait_for_recall) == (256, "quest", True)


def test_request_overrides():
    base = ZoomRConfig()
    assert base.with_request_overrides(None) is base
    assert base.with_request_overrides({"other_key": 1}) is base
    assert base.with_request_overrides({"zoomr_zoom_topk": 2}).zoom_topk == 2
    with pytest.raises(ZoomRConfigError, match="zoomr_zoom_topk"):
        base.with_request_overrides({"zoomr_zoom_topk": -2})
    with pytest.raises(ZoomRConfigError, match="unknown"):
        base.with_request_overrides({"zoomr_nonsense": 1})
    with pytest.raises(ZoomRConfigError, match="server-wide"):
        base.with_request_overrides({"zoomr_host_store_tokens": 10})
    assert request_enables_zoomr({"zoomr_enable": False}) is False
    with pytest.raises(ZoomRConfigError):
        request_enables_zoomr({"zoomr_enable": "yes"})


def test_scoring_layers_auto_spreads_over_upper_half():
    assert ZoomRConfig().scoring_layer_ids(36) == (18, 23, 29, 35)
    assert ZoomRConfig().scoring_layer_ids(4) == (2, 3)
    assert ZoomRConfig(scoring_layers="0, 3").scoring_layer_ids(4) == (0, 3)
    with pytest.raises(ZoomRConfigError):
        ZoomRConfig(scoring_layers="7").scoring_layer_ids(4)
