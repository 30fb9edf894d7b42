"""Gateway settings from the environment (gateway/config.py)."""

from __future__ import annotations

import pytest

from gateway.config import Config


def test_defaults_and_environment_names():
    assert Config.from_env({}) == Config()
    cfg = Config.from_env({"INDEX_URI": "s3://b/p", "MAX_UPLOAD_MB": "2.5", "DEFAULT_TOP_K": "7",
                           "CATEGORY_FIRST": "no", "ALLOW_PRIVATE_URLS": " YES "})
    assert (cfg.index_uri, cfg.max_upload_mb, cfg.default_top_k) == ("s3://b/p", 2.5, 7)
    assert cfg.category_first is False and cfg.allow_private_urls is True


def test_a_bad_number_names_the_variable():
    with pytest.raises(ValueError, match="DEFAULT_TOP_K='many' is not a valid int"):
        Config.from_env({"DEFAULT_TOP_K": "many"})


def test_overrides_win_and_networks_are_split():
    cfg = Config.from_env({"INDEX_URI": "a"}, index_uri="b", allowed_image_networks=" 10.0.0.0/8, ,fd00::/8")
    assert cfg.index_uri == "b" and cfg.image_networks == ("10.0.0.0/8", "fd00::/8")


@pytest.mark.parametrize(("env", "message"), [
    ({"SEARCH_BACKEND": "faiss"}, "SEARCH_BACKEND='faiss'"),
    ({"SEARCH_BACKEND": "milvus"}, "needs MILVUS_URI"),
    ({"ANN_MIN_PRODUCTS": "-1"}, "ANN_MIN_PRODUCTS"),
    ({"ANN_EXPANSION": "0"}, "ANN_EXPANSION"),
])
def test_search_backend_settings_are_checked(env, message):
    with pytest.raises(ValueError, match=message):
        Config.from_env(env)


def test_search_backend_limits_pass():
    config = Config.from_env({"SEARCH_BACKEND": "milvus", "MILVUS_URI": "x.db", "ANN_MIN_PRODUCTS": "0",
                              "ANN_EXPANSION": "1"})
    assert (config.search_backend, config.ann_min_products, config.ann_expansion) == ("milvus", 0, 1)


@pytest.mark.parametrize(("ttl", "ok"), [("1", True), ("0.001", True), ("0", False), ("-5", False)])
def test_query_token_lifetime_must_be_positive(ttl, ok):
    if ok:
        assert Config.from_env({"QUERY_TOKEN_TTL_S": ttl}).query_token_ttl_s == float(ttl)
    else:
        with pytest.raises(ValueError, match="QUERY_TOKEN_TTL_S"):
            Config.from_env({"QUERY_TOKEN_TTL_S": ttl})
