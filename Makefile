# Two commands for a new user: `make demo` and `make test` (both set up what they need).
PYTHON ?= python3
CORES ?= 2
VENV := .venv
UV := $(VENV)/bootstrap/bin/uv
MAIN := $(VENV)/main/bin/python
N2V := $(VENV)/n2v/bin/python
BASE_PY := $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
SNAKEMAKE := $(MAIN) -m snakemake

.PHONY: setup demo test lint format bench models clean

# uv installs the pinned lock files exactly; a second `make setup` finds the stamps and
# does nothing until a lock file changes.
$(UV):
	$(BASE_PY) -m venv $(VENV)/bootstrap
	$(VENV)/bootstrap/bin/pip install --quiet uv==0.13.8

$(VENV)/%/.synced: envs/locks/%.txt | $(UV)
	$(UV) venv --quiet --allow-existing --python $(BASE_PY) $(VENV)/$*
	VIRTUAL_ENV=$(VENV)/$* $(UV) pip sync --quiet envs/locks/$*.txt
	touch $@

setup: $(VENV)/main/.synced $(VENV)/n2v/.synced

resources/demo/.done: src/snakescope/demo.py src/snakescope/synthetic.py | setup
	$(MAIN) scripts/make_demo_data.py resources/demo
	touch $@

# The summary (results/summary.md: key figures, time per stage) is printed at the end, and
# the wall time of the whole run; results/report.html is the page to open.
demo: setup resources/demo/.done
	@start=$$(date +%s); \
	$(SNAKEMAKE) --profile profiles/local --configfile config/demo.yaml --cores $(CORES); status=$$?; \
	echo; cat results/summary.md; \
	echo "Report: results/report.html"; \
	echo "Demo run: $$(( $$(date +%s) - start )) s of wall time on $(CORES) cores"; \
	exit $$status

# .venv/check holds other projects' readers and validators (napari-ome-zarr, bioio,
# ome-zarr-models, ...): the tests open what the workflow writes with them.
test: setup $(VENV)/check/.synced
	$(MAIN) -m pytest

lint: setup resources/demo/.done
	$(SNAKEMAKE) --lint
	$(MAIN) -m snakefmt --check workflow

format: setup
	$(MAIN) -m snakefmt workflow

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(MAIN) $$b | tail -n 1; done

# The models shipped in models/ (see each MODEL_CARD.md), rebuilt from ../shared/data and the
# synthetic generator: about an hour on 2 CPU cores. CI does not run this.
models: setup
	nice -n 10 $(MAIN) scripts/make_models.py

clean:
	rm -rf results logs benchmarks .snakemake resources/demo
