# ppo-pipeline: every target creates .venv (python3 -m venv + pip) when missing and reinstalls only
# when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# an empty PPO_HOME (PPO_HOME= make run) counts as unset, like in ppo/config.py
ifeq ($(strip $(PPO_HOME)),)
override PPO_HOME := $(CURDIR)/.ppo
endif
export PPO_HOME
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: run test test-fast bench lint install clean serve stop print-home

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,ray,postgres,brax,video]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/ppo pipeline --config configs/cartpole.yaml

test: $(STAMP)
	@bash scripts/system-deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# unit tests only (no servers, no flows, no learning runs): under a minute
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not integration and not reliability" \
		--ignore=tests/test_flow.py --ignore=tests/test_sweep.py --ignore=tests/test_report.py \
		--ignore=tests/test_served_numpy.py --ignore=tests/test_tracking.py $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/train_speed.py --seeds 8
	$(BIN)/python bench/tracking_overhead.py
	$(BIN)/python bench/scale.py --out $(PPO_HOME)/scale.png

serve: $(STAMP)
	scripts/serve.sh

stop:
	scripts/stop.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy ppo

print-home:  # where state goes ($$PPO_HOME)
	@echo $(PPO_HOME)

clean:
	rm -rf $(VENV) .ppo .pytest_cache
