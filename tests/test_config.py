"""Config loading with command-line overrides (`raymlc.config.load_with_overrides`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raymlc.config import ConfigError, DemoConfig, RelabelConfig, load_with_overrides


def test_overrides_replace_the_files_values_and_none_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "relabel.yaml"
    path.write_text(yaml.safe_dump({"batch_size": 16, "rows_per_part": 64, "max_actors": 3}))
    config = load_with_overrides(path, RelabelConfig, max_actors=4, rows_per_part=None)
    assert (config.batch_size, config.rows_per_part, config.max_actors) == (16, 64, 4)
    assert load_with_overrides(None, DemoConfig, seed=7) == DemoConfig(seed=7)


def test_a_bad_override_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "relabel.yaml"
    path.write_text(yaml.safe_dump({"batch_size": 16}))
    with pytest.raises(ConfigError, match=r"(?s)relabel.yaml: invalid override:.*rows_per_part"):
        load_with_overrides(path, RelabelConfig, rows_per_part=24)  # not a multiple of batch_size
    with pytest.raises(ConfigError, match=r"(?s)DemoConfig: invalid override:.*drop_fraction"):
        load_with_overrides(None, DemoConfig, drop_fraction=1.5)
