"""Gateway settings from the environment (gateway/config.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from dataclasses import fields
from unittest import mock

import pytest

import gateway.__main__ as gateway_main
from devtools.process import REPO
from gateway.config import LIMITS, Config


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


# --- Every range in README's configuration table, on both sides -------------------------------------------

def _readme_ranges() -> list[tuple[str, str]]:
    """(variable, accepted) for each variable in README's configuration table."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| Variable | Default | Accepted | Meaning |"):].split("\n\n")[0].splitlines()[2:]
    pairs = []
    for row in table:
        names, _default, accepted = (cell.strip() for cell in row.strip("|").split(" | ")[:3])
        names = [n.strip().strip("`") for n in names.split(" / ")]
        ranges = [a.strip() for a in accepted.split(" / ")]
        pairs += zip(names, ranges * len(names) if len(ranges) == 1 else ranges, strict=True)
    return pairs


def _samples(name: str, accepted: str) -> tuple[list[str], list[str]]:
    """Values that must pass and values one past each edge that must fail, from the table's wording."""
    whole = isinstance(getattr(Config, name.lower(), 0), int) or name.startswith("GATEWAY_")
    step = 1 if whole else 0.001
    text = str
    if m := re.fullmatch(r"≥ `?(\w+)`?", accepted):  # a number, or another setting (its default)
        low = int(m[1]) if m[1].isdigit() else int(getattr(Config, m[1].lower()))
        return [text(low), text(low + 7)], [text(low - step), "nan" if not whole else "x"]
    if m := re.fullmatch(r"> (\d+)", accepted):
        low = int(m[1])
        return [text(low + step), "86400"], [text(low), text(low - 1), "inf"]
    if m := re.fullmatch(r"(\d+)–`?(\w+)`?", accepted):
        low, high = int(m[1]), int(getattr(Config, m[2].lower())) if not m[2].isdigit() else int(m[2])
        return [text(low), text(high)], [text(low - step), text(high + step)]
    if accepted == "a flag":
        return ["1", "true", " Yes ", "on", "0", "false", "NO", "off"], ["tru", "2", ""]
    if accepted == "CIDRs":
        return ["10.0.0.0/8", "10.0.0.0/8, fd00::/8", "192.168.1.7"], ["10.0.0.0/33", "intranet"]
    if accepted.startswith("`"):
        return re.findall(r"`(\w+)`", accepted), ["faiss"]
    return [], []  # text, folders, URLs: no range


def _load(name: str, value: str) -> object:
    if name.startswith("GATEWAY_") and name.lower() not in {f.name for f in dataclasses.fields(Config)}:
        with mock.patch.dict(os.environ, {name: value}):
            return vars(gateway_main.parse_args([]))
    extra = {"MILVUS_URI": "x.db"} if name == "SEARCH_BACKEND" else {}
    return Config.from_env({name: value, **extra})


BOUNDARIES = [(name, accepted, value, ok) for name, accepted in _readme_ranges()
              for values, ok in zip(_samples(name, accepted), (True, False), strict=True) for value in values]


@pytest.mark.parametrize(("name", "accepted", "value", "ok"), BOUNDARIES)
def test_each_documented_range_holds_on_both_sides(name, accepted, value, ok, capsys):
    if ok:
        _load(name, value)
        return
    with pytest.raises((ValueError, SystemExit)) as refused:
        _load(name, value)
    said = str(refused.value) if refused.type is ValueError else capsys.readouterr().err
    assert name in said  # the refusal names the variable


def test_the_table_states_a_range_for_every_checked_setting():
    documented = {name.lower() for name, accepted in _readme_ranges() if any(_samples(name, accepted))}
    checked = {name for name, *_ in LIMITS} | {"search_backend", "allowed_image_networks"}
    checked |= {f.name for f in fields(Config) if isinstance(f.default, bool)}
    assert checked <= documented
    assert {"gateway_port", "gateway_workers", "gateway_threads"} <= documented


def test_an_out_of_range_setting_names_its_variable_and_range():
    with pytest.raises(ValueError, match=r"MAX_UPLOAD_MB=0\.0 is out of range: it must be more than 0"):
        Config.from_env({"MAX_UPLOAD_MB": "0"})
    with pytest.raises(ValueError, match=r"DEFAULT_THRESHOLD=100\.5 is out of range: it must be between 0 and 100"):
        Config.from_env({"DEFAULT_THRESHOLD": "100.5"})
    with pytest.raises(ValueError, match="DEFAULT_TOP_K=13 must be at most MAX_TOP_K=12"):
        Config.from_env({"DEFAULT_TOP_K": "13", "MAX_TOP_K": "12"})
    with pytest.raises(ValueError, match="CATEGORY_FIRST='ture': use one of 1, true"):
        Config.from_env({"CATEGORY_FIRST": "ture"})
    with pytest.raises(ValueError, match="ALLOWED_IMAGE_NETWORKS: 'intranet' is not a network"):
        Config.from_env({"ALLOWED_IMAGE_NETWORKS": "10.0.0.0/8,intranet"})


def test_python_m_gateway_refuses_a_bad_setting_before_starting_workers():
    env = {**os.environ, "MAX_TOP_K": "0"}
    done = subprocess.run([sys.executable, "-m", "gateway", "--port", "1"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "gateway: MAX_TOP_K=0 is out of range: it must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr
    bad_port = subprocess.run([sys.executable, "-m", "gateway", "--port", "65536"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert bad_port.returncode == 2 and "'65536' is not a whole number 1–65535 (GATEWAY_PORT)" in bad_port.stderr


def test_refusals_of_choices_word_for_word():
    with pytest.raises(ValueError) as refused:
        Config.from_env({"SEARCH_BACKEND": "faiss"})
    assert str(refused.value) == "SEARCH_BACKEND='faiss': use one of auto, exact, ann, milvus"
    with pytest.raises(ValueError) as refused:
        Config.from_env({"SEARCH_BACKEND": "milvus"})
    assert str(refused.value) == "SEARCH_BACKEND=milvus needs MILVUS_URI (a Milvus address, or a file for Milvus Lite)"
    with pytest.raises(ValueError) as refused:
        Config.from_env({"MAX_TOP_K": "0"})
    assert str(refused.value) == "MAX_TOP_K=0 is out of range: it must be at least 1"


def test_a_network_written_with_its_host_bits_is_accepted():
    assert Config.from_env({"ALLOWED_IMAGE_NETWORKS": "10.1.2.3/8"}).image_networks == ("10.1.2.3/8",)


def test_from_env_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("DEFAULT_TOP_K", "7")
    assert Config.from_env().default_top_k == 7


#: The only production modules that touch the environment, and why each must.
ENVIRONMENT_READERS = {
    "gateway/config.py": "the one reading of every setting (Config.from_env)",
    "gateway/__main__.py": "gunicorn's own options (GATEWAY_*) and handing workers one token key and metrics folder",
    "gateway/lambda_handler.py": "hands the process environment to Config.from_env with Lambda's defaults",
    "gateway/metrics.py": "prometheus-client's PROMETHEUS_MULTIPROC_DIR, a variable of that library",
    "search/milvus.py": "hides MILVUS_URI from pymilvus's import, which would read it as its own default",
    "handlers/runtimes.py": "the model archive's thread count (PHOTO_THREADS), read in TorchServe's worker",
    "devtools/process.py": "starts a development TorchServe with this environment and its own log folder",
}


def test_libraries_take_settings_as_arguments_and_read_no_variable():
    readers = set()
    for folder in ("catalog", "search", "ranking", "gateway", "handlers", "modelserver", "evaluation"):
        for path in (REPO / folder).rglob("*.py"):
            if re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text()):
                readers.add(str(path.relative_to(REPO)))
    assert readers - set(ENVIRONMENT_READERS) == set(), "modules reading the environment besides Config.from_env"


@pytest.mark.parametrize(("threads", "fetches", "ok"), [(4, 3, True), (4, 4, False), (2, 1, True), (2, 2, False)])
def test_image_links_always_leave_a_thread_free(threads, fetches, ok):
    """URL_FETCH_CONCURRENCY below GATEWAY_THREADS passes; equal is refused, naming both settings."""
    settings = Config.from_env({"URL_FETCH_CONCURRENCY": str(fetches)})
    if ok:
        gateway_main.check_threads(threads, settings)
        return
    with pytest.raises(ValueError, match="URL_FETCH_CONCURRENCY=.* must be below GATEWAY_THREADS"):
        gateway_main.check_threads(threads, settings)


def test_the_defaults_leave_a_thread_free():
    gateway_main.check_threads(vars(gateway_main.parse_args([]))["threads"], Config())
