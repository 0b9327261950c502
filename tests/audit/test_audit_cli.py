"""`grpo-check audit`: exit codes, formats, --explain, --list-rules, SARIF structure."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from grpo_check.audit import audit
from grpo_check.audit.rules import RULES
from grpo_check.audit.sarif import to_sarif
from grpo_check.cli import audit as audit_cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audit"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    application = typer.Typer()
    audit_cli.register(application)

    @application.callback()
    def _root() -> None:
        """Test root (keeps `audit` a subcommand)."""

    return application


def run(app, *args):
    return CliRunner().invoke(app, ["audit", *map(str, args)], catch_exceptions=False)


def test_clean_example_exits_0(app):
    result = run(app, EXAMPLES / "clean.yaml", "--trl-version", "1.16", "--strict", "--format", "text")
    assert result.exit_code == 0, result.output
    assert "0 error(s), 0 warning(s)" in result.output


def test_bad_example_exits_1_and_points_at_lines(app):
    result = run(app, EXAMPLES / "bad.yaml", "--trl-version", "1.16", "--format", "text")
    assert result.exit_code == 1
    assert "GA001" in result.output and "bad.yaml:14: GA306 error epsilon = 0.0001" in result.output
    assert "fields under `training`" in result.output


def test_text_output_is_one_linter_line_per_finding(app):
    """`path:line: CODE severity message` per finding, each distinct fix once, the summary last."""
    result = run(app, EXAMPLES / "bad.yaml", "--trl-version", "1.16")  # text is the default
    lines = result.output.rstrip("\n").split("\n")
    audited = audit(EXAMPLES / "bad.yaml", trl_version="1.16")
    finding_lines = [line for line in lines if line.startswith(str(EXAMPLES / "bad.yaml") + ":")]
    assert len(finding_lines) == len(audited.findings)
    pattern = re.compile(r"^(?P<path>.+):(?P<line>\d+): (?P<code>GA\d{3}) (?P<sev>error|warning|info) \S")
    parsed = [pattern.match(line) for line in finding_lines]
    assert all(parsed), [line for line, m in zip(finding_lines, parsed, strict=True) if not m]
    numbers = [int(m["line"]) for m in parsed]
    assert numbers == sorted(numbers)
    assert {m["code"] for m in parsed} == {f.check_id for f in audited}
    # GA401 fires for five unset fields with the same fix: the fix is said once.
    assert sum(m["code"] == "GA401" for m in parsed) == 5
    fix_lines = [line for line in lines if line.startswith("fix ")]
    assert sum("GA401" in line for line in fix_lines) == 1
    assert "fix GA401 (5 findings): Write the value you mean" in result.output
    assert len(fix_lines) == len({f.fix for f in audited if f.fix})
    assert lines[-1].startswith(str(EXAMPLES / "bad.yaml")) and "4 error(s)" in lines[-1]


def test_text_output_of_a_clean_file_is_the_summary_only(app):
    result = run(app, EXAMPLES / "clean.yaml", "--trl-version", "1.16", "--min-severity", "warning")
    assert result.exit_code == 0
    assert result.output.strip().count("\n") == 0 and "0 error(s), 0 warning(s)" in result.output


def test_warnings_exit_0_unless_strict(app, tmp_path):
    path = tmp_path / "warn.yaml"
    path.write_text(
        (EXAMPLES / "clean.yaml").read_text().replace("learning_rate: 1.0e-6", "learning_rate: 5.0e-5")
    )
    assert run(app, path, "--trl-version", "1.16", "--format", "text").exit_code == 0
    strict = run(app, path, "--trl-version", "1.16", "--format", "text", "--strict")
    assert strict.exit_code == 1 and "GA301" in strict.output


def test_table_format(app):
    result = run(app, EXAMPLES / "bad.yaml", "--trl-version", "1.16", "--format", "table")
    assert result.exit_code == 1 and "GA001" in result.output and "error" in result.output
    assert "┃" in result.output or "|" in result.output


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        ('num_generations: 8\nbeta: "unterminated\n', "bad.yaml", "invalid YAML at line 3"),
        ('{"beta": }', "bad.json", "invalid JSON at line 1"),
    ],
)
def test_malformed_exits_2(app, tmp_path, content, name, expected):
    path = tmp_path / name
    path.write_text(content)
    result = CliRunner().invoke(app, ["audit", str(path)])
    assert result.exit_code == 2
    assert str(path) in result.output and expected in result.output
    assert "Traceback" not in result.output


def test_pickle_refused_exits_2(app, tmp_path):
    path = tmp_path / "training_args.bin"
    path.write_bytes(pickle.dumps({"beta": 0.1}))
    result = CliRunner().invoke(app, ["audit", str(path)])
    assert result.exit_code == 2 and "json.dump(trainer.args.to_dict()" in result.output


def test_a_pipe_in_place_of_the_config_exits_2_instead_of_waiting(app, tmp_path):
    import os

    pipe = tmp_path / "config.yaml"
    os.mkfifo(pipe)
    result = CliRunner().invoke(app, ["audit", str(pipe)])
    assert result.exit_code == 2 and "not a regular file" in result.output


def test_an_output_that_is_the_config_and_a_config_with_list_rules_are_refused(app, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text((EXAMPLES / "bad.yaml").read_text())
    before = config.read_text()
    result = CliRunner().invoke(app, ["audit", str(config), "-f", "json", "-o", str(config)])
    assert result.exit_code == 2 and "is the config being audited" in result.output
    assert config.read_text() == before
    for mode in (["--list-rules"], ["--explain", "GA001"]):
        result = CliRunner().invoke(app, ["audit", str(config), *mode])
        assert result.exit_code == 2 and "audit nothing" in result.output
    assert (
        CliRunner()
        .invoke(app, ["audit", str(config), "-f", "json", "-o", str(tmp_path / "r.json")])
        .exit_code
        == 1
    )


def test_missing_file_and_bad_options_exit_2(app, tmp_path):
    assert CliRunner().invoke(app, ["audit", str(tmp_path / "nope.yaml")]).exit_code == 2
    assert CliRunner().invoke(app, ["audit"]).exit_code == 2
    clean = EXAMPLES / "clean.yaml"
    assert CliRunner().invoke(app, ["audit", str(clean), "--format", "xml"]).exit_code == 2
    assert CliRunner().invoke(app, ["audit", str(clean), "--trl-version", "banana"]).exit_code == 2


def test_explain(app):
    result = run(app, "--explain", "GA101")
    assert result.exit_code == 0
    assert "2503.20783" in result.output and "Fix:" in result.output and "Why:" in result.output
    unknown = CliRunner().invoke(app, ["audit", "--explain", "GA999"])
    assert unknown.exit_code == 2 and "no audit rule" in unknown.output


def test_list_rules(app):
    result = run(app, "--list-rules")
    assert result.exit_code == 0
    assert all(rule_id in result.output for rule_id in RULES)
    as_json = json.loads(run(app, "--list-rules", "--format", "json").output)
    assert {r["id"] for r in as_json} == set(RULES)


def test_explain_honours_json_and_refuses_formats_it_cannot_give(app, tmp_path):
    """`--explain ID -f json` used to print the text; md and sarif make no sense for one rule: exit 2."""
    record = json.loads(run(app, "--explain", "GA201", "-f", "json").output)
    assert record["id"] == "GA201" and record["fix"] == RULES["GA201"].fix and record["catalog_id"] == "3"
    assert run(app, "--explain", "GA201", "-f", "text").output.startswith("GA201 [warning]")
    for fmt in ("md", "sarif"):
        refused = CliRunner().invoke(app, ["audit", "--explain", "GA201", "-f", fmt])
        assert refused.exit_code == 2, refused.output
        assert f"--format {fmt} does not apply to --explain" in refused.output
    out = tmp_path / "ga201.json"
    assert run(app, "--explain", "GA201", "-f", "json", "-o", out).exit_code == 0
    assert json.loads(out.read_text())["id"] == "GA201"


def test_list_rules_honours_md_and_refuses_sarif(app, tmp_path):
    """`--list-rules -f sarif` used to print the text table silently."""
    refused = CliRunner().invoke(app, ["audit", "--list-rules", "-f", "sarif"])
    assert refused.exit_code == 2 and "--format sarif does not apply to --list-rules" in refused.output
    table = run(app, "--list-rules", "-f", "md").output.splitlines()
    assert table[0] == "| id | severity | category | title |" and len(table) == len(RULES) + 2
    out = tmp_path / "rules.json"
    assert run(app, "--list-rules", "-f", "json", "-o", out).exit_code == 0
    assert [r["id"] for r in json.loads(out.read_text())] == list(RULES)


@pytest.mark.parametrize(("key", "rule_id"), [("betta: 0.1", "GA404"), ("my_own_setting: 1", "GA411")])
def test_unknown_keys_fail_as_trl_refuses_them(app, tmp_path, key, rule_id):
    """A key GRPOConfig does not declare is an error (GRPOConfig and TRL's CLI refuse it), typo or not."""
    path = tmp_path / "cfg.yaml"
    path.write_text((EXAMPLES / "clean.yaml").read_text() + key + "\n")
    result = run(app, path, "--trl-version", "1.16", "--format", "text")
    assert result.exit_code == 1, result.output
    assert rule_id in result.output
    assert run(app, EXAMPLES / "clean.yaml", "--trl-version", "1.16", "--strict").exit_code == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("num_generations: 2.5\n", "num_generations = 2.5 is not a whole number"),
        ("num_generations: true\n", "num_generations = True is a boolean"),
        ("reward_weights: 5\n", "reward_weights = 5 is not a list of numbers"),
        ("generation_kwargs: temperature=0.7\n", "generation_kwargs = 'temperature=0.7' is not a mapping"),
    ],
)
def test_wrong_value_types_exit_1(app, tmp_path, content, message):
    path = tmp_path / "cfg.yaml"
    path.write_text(content)
    result = run(app, path, "--trl-version", "1.16", "--format", "text", "--num-reward-funcs", "3")
    assert result.exit_code == 1 and "GA410" in result.output and message in result.output


def test_json_and_md_formats(app, tmp_path):
    result = run(app, EXAMPLES / "bad.yaml", "--trl-version", "1.16", "--format", "json")
    data = json.loads(result.output)
    assert data["format"] == "grpo-check-result"
    assert {f["kind"] for f in data["findings"]} == {"audit"}
    out = tmp_path / "report.md"
    run(app, EXAMPLES / "bad.yaml", "--trl-version", "1.16", "--format", "md", "--output", out)
    assert out.read_text().startswith("| severity | rule |")


def test_sarif_structure(app, tmp_path):
    out = tmp_path / "audit.sarif"
    result = run(app, EXAMPLES / "bad.yaml", "--trl-version", "1.16", "--format", "sarif", "-o", out)
    assert result.exit_code == 1
    log = json.loads(out.read_text())
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (run_,) = log["runs"]
    driver = run_["tool"]["driver"]
    assert driver["name"] == "grpo-check"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert rule_ids == list(RULES)
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"]
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
        assert rule["name"].isalnum()
    assert run_["results"]
    for entry in run_["results"]:
        assert entry["level"] in ("error", "warning", "note")
        assert driver["rules"][entry["ruleIndex"]]["id"] == entry["ruleId"]
        assert entry["message"]["text"]
        physical = entry["locations"][0]["physicalLocation"]
        assert physical["artifactLocation"]["uri"].endswith("examples/audit/bad.yaml")
        assert physical["artifactLocation"]["index"] == 0
        if "region" in physical:
            assert physical["region"]["startLine"] >= 1
    by_rule = {e["ruleId"]: e for e in run_["results"]}
    assert by_rule["GA306"]["level"] == "error"
    assert by_rule["GA306"]["locations"][0]["physicalLocation"]["region"]["startLine"] == 14
    assert by_rule["GA306"]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == "training.epsilon"
    assert run_["artifacts"][0]["location"]["uri"].endswith("bad.yaml")


def test_sarif_for_an_in_memory_config_has_no_physical_location():
    log = to_sarif(audit({"num_generations": 1}, trl_version="1.16", rules=["GA004"]))
    (entry,) = log["runs"][0]["results"]
    assert "physicalLocation" not in entry["locations"][0]
    assert entry["locations"][0]["logicalLocations"][0]["name"] == "num_generations"


def test_registered_in_the_root_app():
    from grpo_check.cli import app as root

    result = CliRunner().invoke(root, ["audit", "--explain", "GA004"])
    assert result.exit_code == 0 and "GA004" in result.output


def test_sarif_with_nan_value_is_strict_json(app, tmp_path):
    """Python's json writes NaN, which SARIF consumers (GitHub code scanning) reject."""
    path = tmp_path / "nan.json"
    path.write_text('{"learning_rate": NaN}')
    out = tmp_path / "audit.sarif"
    assert run(app, path, "--format", "sarif", "-o", out).exit_code == 1

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    log = json.loads(out.read_text(), parse_constant=reject)
    assert any(r["ruleId"] == "GA409" for r in log["runs"][0]["results"])


@pytest.mark.parametrize("where", ["directory", "under_a_file"])
def test_unwritable_output_exits_2_without_traceback(app, tmp_path, where):
    target = tmp_path if where == "directory" else EXAMPLES / "clean.yaml" / "out.json"
    result = CliRunner().invoke(app, ["audit", str(EXAMPLES / "clean.yaml"), "-f", "json", "-o", str(target)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert str(target) in result.output


def test_negative_reward_func_count_is_a_usage_error(app):
    result = run(app, EXAMPLES / "clean.yaml", "--num-reward-funcs", "-1")
    assert result.exit_code == 2 and "num_reward_funcs" in result.output


@pytest.mark.parametrize(
    ("name", "text", "lines"),
    [
        ("cfg.yaml", "beta: 0.0\nnum_generations: 8\nbeta: 0.5\n", "(lines 1, 3)"),
        ("cfg.json", '{"beta": 0.0,\n "beta": 0.5}', "(lines 1, 2)"),
    ],
)
def test_duplicate_key_is_a_finding_on_that_key(app, tmp_path, name, text, lines):
    """A repeated key is reported on its line with both values; the rest of the file is audited with the
    value TRL keeps (the last)."""
    path = tmp_path / name
    path.write_text(text)
    result = run(app, path, "--format", "text", "--strict")
    assert result.exit_code == 1
    assert f"{path}:{lines[-2]}: GA413 warning beta is written more than once {lines}" in result.output
    assert "keep 0.5" in result.output or "keep '0.5'" in result.output
    assert audit(path).metadata["config"]["beta"] == 0.5


def test_text_lines_are_sorted_by_the_line_they_print(app, tmp_path):
    """Unset fields print at their section's line; a finding above the section comes first."""
    path = tmp_path / "order.yaml"
    path.write_text(
        "model:\n  name: x\n  name: y\ntraining:\n  num_generations: 3\n  per_device_train_batch_size: 4\n"
    )
    result = run(app, path, "--trl-version", "1.16", "--min-severity", "warning")
    numbers = [int(line.split(":")[1]) for line in result.output.splitlines() if line.startswith(f"{path}:")]
    assert numbers == sorted(numbers) and numbers[0] == 3 and 4 in numbers
