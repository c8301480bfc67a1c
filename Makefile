# The two commands of the README: `make demo` and `make test`.
SHELL := /bin/bash
DEMO_SECONDS ?= 20
PYTEST_ARGS ?=

.PHONY: setup demo test clean

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/run.sh python -m robot_vision_ros.ros.demo --seconds $(DEMO_SECONDS)

test: setup
	@bash scripts/run.sh python -m pytest test $(PYTEST_ARGS)

clean:
	rm -rf build install log
