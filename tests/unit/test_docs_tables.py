"""Docs tables generated from the code: README.md's ``CLASSIFIER_*`` table from
``ServingSettings`` (``python -m devtools.settings_table``), checked in-process."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr

from devtools import settings_table as docs
from serving.settings import ServingSettings

from ..conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"


def test_readme_settings_table_is_the_generated_one():
    assert docs.current_table(README.read_text()) == docs.settings_table(), (
        "README.md's CLASSIFIER_* table is out of date: run `python -m devtools.settings_table`"
    )


def test_the_table_documents_every_setting_once_in_order():
    rows = docs.settings_table().splitlines()[2:]
    names = [row.split("|")[1].strip().strip("`") for row in rows]
    assert names == [f"CLASSIFIER_{name.upper()}" for name in ServingSettings.model_fields]
    assert all(row.count("|") - row.count("\\|") == 4 for row in rows), "one cell each"


def test_defaults_are_written_as_the_variable_takes_them():
    table = docs.settings_table()
    defaults = {row.split("|")[1].strip(): row.split("|")[2].strip() for row in table.splitlines()}
    assert defaults["`CLASSIFIER_BATCHING`"] == "`true`"
    assert defaults["`CLASSIFIER_MAX_REQUEST_BYTES`"] == f"`{64 * 1024 * 1024}`"
    assert defaults["`CLASSIFIER_MAX_BATCH_SIZE`"] == "unset"
    assert defaults["`CLASSIFIER_API_KEYS`"] == "unset"


def test_a_secret_default_is_never_rendered():
    class WithSecret(BaseModel):
        token: SecretStr | None = Field(SecretStr("s3cret-value-0123456789"), description="key")
        plain: SecretStr = Field(SecretStr("other-secret-value-987"), description="key")

    for info in WithSecret.model_fields.values():
        rendered = docs.render_default(info)
        assert "s3cret" not in rendered and "other-secret" not in rendered
        assert rendered == "(set, hidden)"


def test_check_reports_a_stale_table_and_the_default_rewrites_it(tmp_path, capsys):
    readme = tmp_path / "README.md"
    stale = f"# title\n\n{docs.START}\n| old | table |\n{docs.END}\n\nafter\n"
    readme.write_text(stale)
    assert docs.main(["--check", "--readme", str(readme)]) == 1
    assert readme.read_text() == stale
    assert docs.main(["--readme", str(readme)]) == 0
    rewritten = readme.read_text()
    assert rewritten.startswith("# title\n\n") and rewritten.endswith(f"{docs.END}\n\nafter\n")
    assert docs.current_table(rewritten) == docs.settings_table()
    assert docs.main(["--check", "--readme", str(readme)]) == 0
    assert docs.with_table(rewritten) == rewritten  # idempotent


def test_missing_markers_are_an_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert docs.main(["--check", "--readme", str(readme)]) == 2
    assert "settings-table:start" in capsys.readouterr().err
