# ChimeraX-DEFMap: every target creates the environment it needs (once), so a fresh clone needs only `make demo` / `make test`.
PY      := .venv/bin/python
SITE     = $(shell $(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
WHEEL   := dist/ChimeraX_DEFMap-0.1.0-py3-none-any.whl
SOURCES := $(wildcard src/*.py) bundle_info.xml $(wildcard onnx_models/*) $(wildcard onnx_models/prior/*) $(wildcard docs/user/commands/*.html)
export PYOPENGL_PLATFORM ?= osmesa
export PYTHONIOENCODING ?= utf-8

.PHONY: env install test test-quick demo run bench lint train-env train-smoke clean

env: .venv/.defmap-env-v2
.venv/.defmap-env-v2: tools/setup_venv.sh tools/requirements-venv.txt tools/requirements-chimerax.txt tools/constraints.txt
	bash tools/setup_venv.sh

# Build the wheel with ChimeraX's bundle builder from bundle_info.xml and install it (as `toolshed install` would).
$(WHEEL): .venv/.defmap-env-v2 $(SOURCES) tools/build_bundle.py
	$(PY) tools/build_bundle.py

.venv/.defmap-installed: $(WHEEL)
	@if [ -L "$(SITE)/chimerax/defmap" ]; then \
	  echo "note: $(SITE)/chimerax/defmap is a development symlink to src/; only the wheel's METADATA is installed"; \
	  unzip -o -q $(WHEEL) '*.dist-info/METADATA' -d $(SITE); \
	else \
	  .venv/bin/pip install -q --no-deps --force-reinstall $(WHEEL); \
	fi
	touch $@

install: .venv/.defmap-installed

train-env: .venv/.defmap-train-env
.venv/.defmap-train-env: .venv/.defmap-env-v2 training/requirements.txt training/pyproject.toml
	.venv/bin/pip install -q --prefer-binary -c tools/constraints.txt -r training/requirements.txt
	@# torch pulls a newer setuptools; the bundle builder needs 69.x (pkg_resources, wheel names)
	.venv/bin/pip install -q setuptools==69.5.1 wheel==0.42.0
	.venv/bin/pip install -q --no-deps -e training
	touch $@

# The training smoke run (tiny data; every stage of the recipe at a few steps): training/README.md, "Smoke test"
train-smoke: train-env
	cd training && ../$(PY) -m defmap_train smoke --out runs/smoke

# Two processes: torch importing inside a process that holds a ChimeraX session segfaulted in garbage collection.
# -X faulthandler: should a test process ever crash (also at exit), its Python stack is printed.
test: install train-env
	$(PY) -X faulthandler -m pytest -q training/tests
	$(PY) -X faulthandler -m pytest -q tests

demo: install
	$(PY) tools/demo.py

run: install
	@test -n "$(SCRIPT)" || (echo "usage: make run SCRIPT=file.cxc" && exit 2)
	$(PY) tools/headless.py $(SCRIPT)

bench: install
	$(PY) tests/benchmarks/bench.py

lint: env
	.venv/bin/ruff check src tests training tools

clean:
	rm -rf build dist src/onnx_models .venv/.defmap-installed
