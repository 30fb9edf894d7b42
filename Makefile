# photo: `make demo` runs the whole system on the sample catalog; `make test` runs the test suite.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help venv mar demo axe test test-blas lint bench bench-search infra-check infra-run lock screenshots mutate clean

help:
	@echo "make demo   - build the model archive, start TorchServe, index the sample catalog, serve http://127.0.0.1:5000"
	@echo "make test   - install what the tests need and run them (starts its own TorchServe)"
	@echo "make mar    - build model_store/embedding.mar"
	@echo "make test-blas - the fast tests again under a second OpenBLAS kernel (BLAS_CORETYPE, default Haswell)"
	@echo "make lint   - ruff"
	@echo "make bench  - speed figures as ratios within one run (build/bench.json), checked against targets"
	@echo "make bench-search - ANN / exact / Milvus Lite at 1M vectors, gateway memory, build peak memory at 1M (build/bench_search.json)"
	@echo "make infra-check - lint and validate every deployment file in infra/, then make infra-run"
	@echo "make infra-run   - run each image's start command as its platform does (part of infra-check)"
	@echo "make lock        - regenerate the gateway image's hashed lock (infra/docker/requirements-gateway.lock)"
	@echo "make screenshots - the page's main states, from the browser tests, into docs/screenshots/"
	@echo "make mutate - mutation testing of the modules in [tool.mutmut] (build/mutation.md)"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	@command -v java >/dev/null || { echo "need Java 17 for TorchServe (apt-get install openjdk-17-jre-headless)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

venv: $(STAMP)

mar: venv
	$(BIN)/python scripts/build_mar.py --backbone auto --output model_store

demo: venv
	$(BIN)/python scripts/demo.py

# axe-core (npm), which the browser tests inject to check the page's accessibility; pinned by its lock file.
AXE := devtools/axe/node_modules/axe-core/axe.min.js
$(AXE): devtools/axe/package-lock.json
	@command -v npm >/dev/null || { echo "note: npm not found: the accessibility checks will be skipped (CI fails)"; exit 0; }
	npm ci --prefix devtools/axe --no-audit --no-fund --silent

axe: $(AXE)

# pytest exit code 5 means "no tests collected": that is a failure here, never a silent pass.
test: venv axe
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The fast (no TorchServe, no browser) tests again under another OpenBLAS kernel: OpenBLAS picks its kernels per
# CPU and per matrix shape, so a float compared to the bit passes on one CPU and fails on another (issue: AMD EPYC
# rounds a block-wise score differently). Haswell's kernels run on every x86-64-v3 CPU (AVX2, FMA); SkylakeX's
# would crash where there is no AVX-512. A machine that sets OPENBLAS_CORETYPE itself (to work around a CPU) keeps
# its setting: it is not overridden here.
BLAS_CORETYPE ?= Haswell
test-blas: venv
	@if [ -n "$${OPENBLAS_CORETYPE:-}" ]; then \
		echo "test-blas: OPENBLAS_CORETYPE=$$OPENBLAS_CORETYPE is set by this machine; not overridden, not run"; exit 0; fi; \
	if ! grep -qw avx2 /proc/cpuinfo; then echo "test-blas: no AVX2 on this CPU; $(BLAS_CORETYPE) not run"; exit 0; fi; \
	OPENBLAS_CORETYPE=$(BLAS_CORETYPE) $(BIN)/python -c \
		"import numpy; from threadpoolctl import threadpool_info as t; print('test-blas: OpenBLAS kernel', [i.get('architecture') for i in t() if i.get('internal_api') == 'openblas'])"; \
	OPENBLAS_CORETYPE=$(BLAS_CORETYPE) $(BIN)/python -m pytest -q -m "not integration" \
		--ignore tests/test_browser.py --ignore tests/test_e2e.py $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: venv
	$(BIN)/ruff check .

# Speed figures as ratios measured in one run (scripts/bench.py), then checked against their targets.
bench: venv
	$(BIN)/python scripts/bench.py
	$(BIN)/python scripts/check_bench.py build/bench.json

# Search at catalog scale (scripts/bench_search.py; reuses build/bench-search/ between runs).
bench-search: venv
	$(BIN)/python scripts/bench_search.py
	$(BIN)/python scripts/check_bench.py build/bench_search.json

# Every deployment file, validated offline: Dockerfiles (hadolint), CloudFormation/SAM (cfn-lint, which
# expands SAM), Kubernetes (kustomize build, then the 1.37 schemas, strict), compose (the compose spec),
# YAML style (yamllint), then the cross-file consistency tests. Any finding fails.
# The gateway and indexer images' hashed locks (infra/docker/requirements-*.lock).
lock: venv
	$(BIN)/python -m piptools compile --quiet --allow-unsafe --generate-hashes --no-emit-index-url --no-emit-find-links \
		--strip-extras --output-file=infra/docker/requirements-gateway.lock infra/docker/requirements-gateway.txt
	$(BIN)/python -m piptools compile --quiet --allow-unsafe --generate-hashes --no-emit-index-url --no-emit-find-links \
		--strip-extras --output-file=infra/docker/requirements-indexer.lock infra/docker/requirements-indexer.in

infra-check: venv
	@mkdir -p build
	$(BIN)/hadolint infra/docker/*.Dockerfile
	$(BIN)/cfn-lint infra/aws/*.yaml
	$(BIN)/kubectl kustomize infra/k8s > build/k8s.yaml
	$(BIN)/kubernetes-validate --strict --kubernetes-version 1.37 build/k8s.yaml
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec infra/compose.yaml
	$(BIN)/yamllint --strict -c infra/yamllint.yaml infra
	$(BIN)/python -m pytest -q tests/test_infra.py -m "not integration"
	$(MAKE) infra-run

# Each image's real start command, read from its Dockerfile, run the way its platform runs it (no Docker
# engine here: processes on loopback, with /home/model-server, /opt/ml and the Lambda events in temporary
# folders): TorchServe as a container and as SageMaker's `serve`, the gateway's CMD and HEALTHCHECK, the
# indexer's ENTRYPOINT, the Lambda handler under REST, HTTP API and Function URL events; and each image's
# requirements resolved as binary wheels for its base.
infra-run: venv
	$(BIN)/python -m pytest -q tests/test_infra.py tests/test_lambda_handler.py tests/test_lambda_stage.py \
		tests/test_publish_key.py; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# Mutation testing of the modules listed in [tool.mutmut] (pyproject.toml) against their tests, then the score
# per module and the survivors (build/mutation.md). A few minutes per module on 2 cores. One OpenMP thread:
# FAISS's OpenMP pool, started by the clean run, deadlocks every forked mutant run (a hang, not a kill).
mutate: venv
	rm -rf mutants
	OMP_NUM_THREADS=1 $(BIN)/mutmut run || true
	$(BIN)/python scripts/mutation_report.py --out build/mutation

# The page's main states, captured by the browser tests that drive them (README and docs/ show them).
screenshots: venv
	@mkdir -p docs/screenshots
	SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q tests/test_browser.py \
		-k "refine_reruns or show_more or crop_searches or no_close_match or phone_width or error_keeps or other_item_has_a_dot"

clean:
	rm -rf $(VENV) index logs model_store/*.mar .pytest_cache
