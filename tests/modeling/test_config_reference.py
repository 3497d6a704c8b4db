"""docs/CONFIG.md is what the generator makes from the code now, and lists every key."""

import os
import subprocess
import sys

import pytest
from _detectron import ROOT

from rpanoptic.modeling import config_reference
from rpanoptic.modeling.recurrent_config import config_keys

DOC = os.path.join(ROOT, "docs", "CONFIG.md")


@pytest.fixture(scope="module")
def generated():
    return config_reference.render()


def test_config_doc_is_up_to_date(generated):
    with open(DOC, encoding="utf-8") as f:
        committed = f.read()
    assert committed == generated, "docs/CONFIG.md is stale: run `make config-doc`"


def test_every_key_appears_with_its_default_rule_argument_and_comment(generated):
    defaults, comments = config_reference.added_keys(), config_reference.descriptions()
    assert {"MODEL.RECURRENT.GRAD", "MODEL.HGRU.NORM", "MODEL.RFPN.LEVELS"} <= set(defaults)
    assert set(defaults) == set(config_keys()) == set(comments)
    rows = {
        line.split("|")[1].strip(): line for line in generated.splitlines() if "| `MODEL." in line
    }
    assert set(rows) == {f"`{key}`" for key in defaults}
    for key, (rule, target) in config_keys().items():
        row = rows[f"`{key}`"]
        assert f"`{defaults[key]!r}`" in row and rule.allowed.replace("|", "\\|") in row, key
        assert all(f"`{t}`" in row for t in target.split(", ")), key
        assert comments[key] and comments[key].replace("|", "\\|") in row, key
    assert "| `MODEL.RECURRENT.GRAD` | `'crbp'` | 'bptt', 'cbptt', 'rbp', 'crbp' |" in generated
    assert "`Recurrence(lcp_tau)`" in rows["`MODEL.RECURRENT.LCP_TAU`"]


def test_defaults_satisfy_their_own_rules():
    from detectron2.config import get_cfg

    from rpanoptic import add_rpanoptic_config
    from rpanoptic.modeling.recurrent_config import check_key

    cfg = add_rpanoptic_config(get_cfg())
    for key in config_keys():
        check_key(cfg, key)


def test_the_doc_quotes_the_live_error_message(generated):
    assert (
        "Config MODEL.RECURRENT.GRAD = 'bogus' is invalid; allowed: 'bptt', 'cbptt', 'rbp', "
        "'crbp'." in generated
    )


def test_a_key_without_a_comment_stops_the_generator(monkeypatch):
    comments = config_reference.descriptions()
    comments["MODEL.HGRU.NORM"] = ""
    monkeypatch.setattr(config_reference, "descriptions", lambda: comments)
    with pytest.raises(ValueError, match="MODEL.HGRU.NORM has no comment"):
        config_reference.render()


def test_check_exits_non_zero_on_a_stale_file(tmp_path, generated):
    fresh, stale = tmp_path / "fresh.md", tmp_path / "stale.md"
    fresh.write_text(generated, encoding="utf-8")
    stale.write_text(generated.replace("`20`", "`10`"), encoding="utf-8")
    assert config_reference.main(["--check", "--output", str(fresh)]) == 0
    assert config_reference.main(["--check", "--output", str(stale)]) == 1
    assert config_reference.main(["--check", "--output", str(tmp_path / "missing.md")]) == 1
    written = tmp_path / "out" / "CONFIG.md"
    assert config_reference.main(["--output", str(written)]) == 0
    assert written.read_text(encoding="utf-8") == generated
    cli = [sys.executable, "-m", "rpanoptic.modeling.config_reference", "--check", "--output"]
    run = subprocess.run([*cli, str(stale)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and "stale" in run.stderr and "make config-doc" in run.stderr
