# One set-up path for README, CI and users: `make demo` runs the main job, `make test` runs the tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[ray,dev]"
	# torchaudio 2.11's compiled extension is a CUDA build; without it the transforms raymlc uses still work.
	rm -f $(VENV)/lib/python3*/site-packages/torchaudio/lib/*.so
	touch $@

demo: install
	test -f runs/demo-data/manifest.parquet || $(BIN)/raymlc make-demo --output runs/demo-data
	$(BIN)/raymlc pipeline --config configs/demo.yaml --output runs/demo

test: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs
