# ds01.infra: every target is a thin call to a script in scripts/ (the logic lives there, where
# `bash -n` and shellcheck can check it). `make test` is what CI runs (.ci/run).
#
#   make test          system-deps docker images venv lint sanity unit integration molecule,
#                      then a timing summary; non-zero when any stage failed
#   make demo          deploy into $(DEMO_ROOT) and show the ds01 CLI's view of it
#   make clean         generated trees (keeps .venv and the image rootfs; clean-all drops them)

SHELL := /bin/bash
.DEFAULT_GOAL := help
.SUFFIXES:

SCRIPTS := $(CURDIR)/scripts
DEMO_ROOT ?= $(CURDIR)/.demo/root

export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/.collections
export DEMO_ROOT

.PHONY: help venv system-deps docker images lint sanity unit integration molecule test demo clean clean-all

help: ## list the targets
	@awk -F ':.*## ' '/^[a-z-]+:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

venv: ## .venv with the pinned tools, ds01 editable, .collections link
	@$(SCRIPTS)/venv.sh

system-deps: ## apt-get install the missing Debian packages (docker.io, debootstrap, promtool, ...)
	@$(SCRIPTS)/system-deps.sh

docker: ## make sure a Docker engine answers (starts dockerd without network)
	@$(SCRIPTS)/docker.sh

images: ## build local/debian-systemd:bookworm, local/debian-slurm:bookworm, local/empty, local/debian-min:bookworm
	@$(SCRIPTS)/images.sh

lint: ## ruff check + format --check, ansible-lint (production), shellcheck
	@$(SCRIPTS)/lint.sh

sanity: ## ansible-test sanity --python 3.11 --requirements on a clean copy
	@$(SCRIPTS)/sanity.sh

unit: ## pytest tests/unit
	@$(SCRIPTS)/pytest.sh unit

integration: ## pytest tests/integration (real Docker engine)
	@$(SCRIPTS)/pytest.sh integration

molecule: ## molecule test for each molecule/<scenario>
	@$(SCRIPTS)/molecule.sh

test: ## every stage above in order, with a timing summary
	@$(SCRIPTS)/test.sh

demo: system-deps venv docker ## ansible-playbook -i inventory/demo playbooks/site.yml into DEMO_ROOT, then the ds01 CLI
	@$(SCRIPTS)/demo.sh

clean: ## remove generated trees (keeps .venv, the image rootfs, the wheelhouse)
	@$(SCRIPTS)/clean.sh

clean-all: ## clean, plus .venv, .cache and the local/* images
	@$(SCRIPTS)/clean.sh --all
