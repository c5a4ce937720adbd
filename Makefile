# tfhalo: `make test` and `make demo` work from a bare clone: they create
# .venv and install the package with its test extras first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tfhalo-installed
DEMO   ?= runs/demo
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

.PHONY: install test test-tf test-tf-studies test-tf-rest test-jax demo demo-field bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# tfp-nightly (setup.cfg) and tensorflow-probability share one package directory.
	$(BIN)/python -m pip uninstall -y -q tensorflow-probability 2>/dev/null || true
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The whole suite on TensorFlow and, beside it, on JAX the backend-agnostic parts: layers, device-side
# sub-boxes, the sampler, the neural bias model and the field-level inference (TFP's JAX substrate).
# They run at once, the TensorFlow suite as two processes (the studies, and the rest): no one process
# keeps two cores busy (much of a test is tracing and compiling, on one thread), and the TensorFlow
# suite alone is the longest. Each one's output is printed whole when it ends; any failing fails the target.
# Each process computes its operations on one thread (BLAS, TensorFlow's intra-op pool, XLA's Eigen pool;
# TensorFlow keeps two inter-op threads to schedule them): three processes whose pools each want every core
# would fight over the two cores (measured: 15% longer in all).
test: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=2 \
	XLA_FLAGS="--xla_cpu_multi_thread_eigen=false $(XLA_FLAGS)" \
	$(MAKE) --no-print-directory -j3 --output-sync=target test-tf-studies test-tf-rest test-jax

test-tf: test-tf-studies test-tf-rest

test-tf-studies: $(STAMP)
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest -q tests/studies

test-tf-rest: $(STAMP)
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest -q tests --ignore=tests/studies

test-jax: $(STAMP)
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q tests/layers tests/data/test_device_subboxes.py tests/inference \
		tests/bias tests/field tests/studies/test_field_level_config.py tests/studies/test_neural_bias_config.py

# The three quick studies: deep halos and the neural bias model (the paper's
# 17-parameter model) on one suite, then the field-level inference (initial
# conditions sampled with the bias model; its demo preset, the quick preset with
# 300 instead of 600 kept sweeps, the mock and N-body settings at once, one
# process each) on its own simulation.
demo: $(STAMP)
	$(BIN)/python experiments/deep_halos.py --preset quick --suite $(DEMO)/suite --out $(DEMO)/deep_halos
	$(BIN)/python experiments/neural_bias.py --preset quick --suite $(DEMO)/suite --out $(DEMO)/neural_bias
	$(BIN)/python experiments/field_level.py --preset demo --suite $(DEMO)/field_suite --out $(DEMO)/field_level
	@echo "Reports: $(DEMO)/deep_halos/report.md, $(DEMO)/neural_bias/report.md and $(DEMO)/field_level/report.md"

# The field-level study alone, its quick preset (about 11 minutes on 2 cores, install included).
demo-field: $(STAMP)
	$(BIN)/python experiments/field_level.py --preset quick --suite $(DEMO)/field_suite --out $(DEMO)/field_level
	@echo "Report: $(DEMO)/field_level/report.md"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_layers.py
	$(BIN)/python benchmarks/bench_sim.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_bias.py
	$(BIN)/python benchmarks/bench_field.py
	$(BIN)/python benchmarks/bench_chain_memory.py
	$(BIN)/python benchmarks/bench_startup.py
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_forward.py
	KERAS_BACKEND=jax $(BIN)/python benchmarks/bench_forward.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
