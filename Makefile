# vitrine: the two commands are `make demo` and `make test`; the rest are their steps.
PY      := /usr/bin/python3
BUILD   := build
DEMO    := $(BUILD)/demo
THREADS ?= 2
REQUEST ?= train/demo_request.json
MODEL_SRC := train/shop.py train/model.py train/data.py train/vocab.py train/calendar.py train/train.py

.PHONY: all deps configure build demo test bundle bundle-scale golden eval parity bench-cpu \
	check-asan check-valgrind beauty-eval bench-serve bench-sweep gpu-pack fuzz soak audit audit-demo \
	audit-beauty clean

all: build

deps:
	@scripts/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null

build: configure
	@cmake --build $(BUILD) -j2

# ---- the demo model: synthetic shop -> teacher -> distilled student -> bundle + catalogue ----
$(DEMO)/shop.json: train/shop.py
	$(PY) -m train.shop --out $@

$(DEMO)/models/student.pt: $(DEMO)/shop.json $(MODEL_SRC)
	$(PY) -m train.train --shop $(DEMO)/shop.json --out $(DEMO)/models --threads $(THREADS)

$(DEMO)/models/%-ranker.json: $(DEMO)/models/student.pt train/tune.py train/cascade.py
	$(PY) -m train.tune --checkpoint $(DEMO)/models/$*.pt --shop $(DEMO)/shop.json --out $@ \
	  --threads $(THREADS)

$(DEMO)/bundle/manifest.json: $(DEMO)/models/student-ranker.json train/export.py train/bundle.py
	$(PY) -m train.export --checkpoint $(DEMO)/models/student.pt --shop $(DEMO)/shop.json \
	  --bundle $(DEMO)/bundle --catalog $(DEMO)/catalog --ranker $< \
	  --metrics $(DEMO)/models/training.json --force

bundle: deps $(DEMO)/bundle/manifest.json

# a production-sized bundle, catalogue and request file with random weights, for benchmarks
# (train/bundle_scale.py, issue #13): by default the issue's sizes (d_model 512, 8 heads, 4 + 2
# layers, 300k keywords, 20k themes, 1M products); SCALE_ARGS changes them (--help lists them)
SCALE ?= $(BUILD)/scale
SCALE_ARGS ?=
bundle-scale: deps
	$(PY) -m train.bundle_scale --out $(SCALE) $(SCALE_ARGS)

$(DEMO)/golden.safetensors: $(DEMO)/bundle/manifest.json train/golden.py train/cascade.py
	$(PY) -m train.golden --shop $(DEMO)/shop.json --bundle $(DEMO)/bundle \
	  --catalog $(DEMO)/catalog --out $@

golden: bundle $(DEMO)/golden.safetensors

$(DEMO)/eval.json: $(DEMO)/bundle/manifest.json $(DEMO)/models/teacher-ranker.json \
		train/evaluate.py train/cascade.py
	$(PY) -m train.evaluate --shop $(DEMO)/shop.json --bundle $(DEMO)/bundle \
	  --catalog $(DEMO)/catalog --teacher $(DEMO)/models/teacher.pt \
	  --teacher-ranker $(DEMO)/models/teacher-ranker.json --out $@ --quiet

eval: bundle $(DEMO)/eval.json
	@$(PY) -c "import json,sys; from train.evaluate import print_table; print_table(json.load(open('$(DEMO)/eval.json')))"

# the main job: `vitrine serve` on the demo bundle answers the demo request (and a few more) from a
# real gRPC client, then drains on SIGTERM (deploy/demo.sh)
demo: bundle build
	BUILD=$(BUILD) DEMO=$(DEMO) REQUEST=$(REQUEST) deploy/demo.sh

test: build
	cd $(BUILD) && ctest --output-on-failure

# C parity against the demo bundle's golden file (the fixture's runs in `make test`)
parity: build golden
	VT_FIXTURE=$(DEMO) $(BUILD)/test_parity --jobs 1 --verbose

bench-cpu: build bundle
	bench/run_cpu.sh 1

# the scale sweep (bench/sweep.py, issue #13): one dimension at a time around a generated base
# bundle (history, sections, keywords and products per section, catalogue, width), the C engine
# against batched PyTorch at the same threads, the time per phase and the GEMMs' GFLOP/s against
# OpenBLAS's SGEMM; bundles cached in $(BUILD)/sweep, tables and plots in $(BUILD)/bench/sweep.
# `make bench-sweep SWEEP_ARGS="--dims history --quick"` for a part or a tiny version
SWEEP_ARGS ?=
bench-sweep: build
	$(PY) bench/sweep.py --build $(BUILD) --out $(BUILD)/bench/sweep --cache $(BUILD)/sweep \
	  $(SWEEP_ARGS)

# the serving side-by-side: vitrine serve against the Python grpcio + PyTorch peer, both swept by
# build/vitrine-bench (closed-loop concurrency and open-loop Poisson rates); bench/README.md
bench-serve: build bundle
	bench/run_serve.sh

# real data (optional; skipped with the reason where the folder is absent): Amazon Beauty, the
# leave-one-out protocol, the served student through the C engine against the baselines
BEAUTY_DATA ?= ../shared/data/amazon-beauty
beauty-eval: build
	scripts/beauty.sh $(BEAUTY_DATA)

# the bias and exposure audit (train/audit.py, docs/AUDIT.md): the demo's test shoppers answered
# by the C engine at each calibration strength beside the co-occurrence and popularity baselines;
# tables in $(DEMO)/audit.md. Then Amazon Beauty where its data, test shop and baselines.json are
# (scripts/beauty.sh makes them; else skipped with the reason): the baselines, and the cascade
# where a Beauty system is (bundle/, catalog/, ranker.json); tables in $(BUILD)/beauty/audit.md.
# AUDIT_ARGS adds options (e.g. --limit 2000)
AUDIT_STRENGTHS ?= 0,0.1,0.3,0.5,0.9,0.99,1
AUDIT_ARGS ?=
BEAUTY_SYSTEM ?= $(BUILD)/beauty/systems/student
BEAUTY_SHOP ?= $(BUILD)/beauty/shop.json
BEAUTY_BASELINES ?= $(BUILD)/beauty/baselines.json
audit: audit-demo audit-beauty

audit-demo: build bundle
	$(PY) -m train.audit --shop $(DEMO)/shop.json --bundle $(DEMO)/bundle --catalog $(DEMO)/catalog \
	  --ranker $(DEMO)/models/student-ranker.json --vitrine $(BUILD)/vitrine \
	  --strengths $(AUDIT_STRENGTHS) --out $(DEMO)/audit.json --markdown $(DEMO)/audit.md $(AUDIT_ARGS)

audit-beauty: build
	@if [ ! -f "$(BEAUTY_DATA)/items.csv.gz" ]; then echo "audit: Beauty skipped: no $(BEAUTY_DATA)"; \
	elif [ ! -f "$(BEAUTY_SHOP)" ] || [ ! -f "$(BEAUTY_BASELINES)" ]; then \
	  echo "audit: Beauty skipped: no $(BEAUTY_SHOP) or $(BEAUTY_BASELINES)" \
	    "(make beauty-eval makes them)"; \
	else S=$(BEAUTY_SYSTEM); \
	  if [ -f "$$S/bundle/manifest.json" ]; then \
	    SYS="--bundle $$S/bundle --catalog $$S/catalog --ranker $$S/ranker.json"; \
	  else echo "audit: Beauty: no $$S/bundle, the baselines only"; SYS=""; fi; \
	  mkdir -p $(BUILD)/beauty; set -x; \
	  $(PY) -m train.audit --shop $(BEAUTY_SHOP) $$SYS --vitrine $(BUILD)/vitrine \
	    --beauty-data $(BEAUTY_DATA) --strengths $(AUDIT_STRENGTHS) \
	    --cooc-from $(BEAUTY_BASELINES) --out $(BUILD)/beauty/audit.json \
	    --markdown $(BUILD)/beauty/audit.md $(AUDIT_ARGS); fi

# the C tests under AddressSanitizer + UndefinedBehaviorSanitizer (a separate build tree), the
# CUDA emulator's (*_emu: every CUDA op and the whole cascade on an emulated device) included; any
# sanitizer report in the log fails the target, as a report inside a Criterion worker may not.
# The server's pytest suite runs too, against the sanitized `vitrine serve` (cmake/server.cmake
# sets VT_SANITIZED, ASAN_OPTIONS with leak detection and UBSAN_OPTIONS for it; Python itself is
# not sanitized): a report in a server's stderr fails its test (tests/server/conftest.py), and the
# valgrind test skips with its reason (valgrind cannot run an ASan binary). The GPU pack's test is
# left out (it packs binaries, it runs none).
check-asan: deps
	@cmake -S . -B $(BUILD)-asan -DVITRINE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
	@cmake --build $(BUILD)-asan -j2
	cd $(BUILD)-asan && ctest --output-on-failure -E "reference_model|gpu_pack"
	@! grep -E "ERROR: (Address|Leak)Sanitizer|runtime error:" $(BUILD)-asan/Testing/Temporary/LastTest.log

# libFuzzer on the parsers (tests/fuzz/README.md): a clang build with ASan+UBSan in
# $(BUILD)-fuzz, then each target for FUZZ_SECONDS; a finding is written to
# tests/fuzz/regressions/<target>/ (replayed by `make test`) and fails the target.
# `make fuzz FUZZ_TARGETS="wire request"` for some only.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= request wire safetensors bundle catalog rules
fuzz: deps
	@cmake -S . -B $(BUILD)-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
	  -DVITRINE_FUZZ=ON -DVITRINE_CUDA=OFF -DVITRINE_CUDA_EMU=OFF \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(BUILD)-fuzz -j2 --target $(FUZZ_TARGETS:%=fuzz_%)
	@[ -f $(BUILD)-fuzz/fixture/bundle/manifest.json ] || \
	  $(PY) -m train.fixture --out $(BUILD)-fuzz/fixture >/dev/null
	FUZZ_SECONDS=$(FUZZ_SECONDS) tests/fuzz/run.sh $(BUILD)-fuzz $(FUZZ_TARGETS)

# soak and overload (bench/soak.py, issue #12; not in `make test`): a real `vitrine serve` on the
# demo bundle, its capacity measured by vitrine-bench in closed loop, then SOAK_MIN minutes at 70% of it
# with good, bad and cancelled calls and a SIGHUP reload a minute, then 5x capacity for 2 minutes
# and the recovery; checks and figures in $(BUILD)/soak/soak.json (bench/RESULTS.md)
SOAK_MIN ?= 30
soak: build bundle
	@[ -f $(DEMO)/requests.jsonl ] || $(PY) -m train.requests --shop $(DEMO)/shop.json \
	  --out $(DEMO)/requests.jsonl --n 512
	$(PY) bench/soak.py --vitrine $(BUILD)/vitrine --bench $(BUILD)/vitrine-bench \
	  --bundle $(DEMO)/bundle \
	  --catalog $(DEMO)/catalog --requests $(DEMO)/requests.jsonl --soak-min $(SOAK_MIN) \
	  --out $(BUILD)/soak

# valgrind on the CLI, for a storefront and for a refused request: no errors, no leaks
check-valgrind: build bundle
	valgrind --leak-check=full --suppressions=tests/valgrind.supp --error-exitcode=1 -q \
	  $(BUILD)/vitrine recommend --bundle $(DEMO)/bundle --catalog $(DEMO)/catalog \
	  --request $(REQUEST) >/dev/null
	echo '{"now": 5, "region": "eu"}' | valgrind --leak-check=full --suppressions=tests/valgrind.supp \
	  --error-exitcode=99 -q $(BUILD)/vitrine recommend --bundle $(DEMO)/bundle \
	  --catalog $(DEMO)/catalog --request - 2>$(BUILD)/valgrind-refused.log; test $$? -eq 2
	grep -q "sections is missing" $(BUILD)/valgrind-refused.log

# What a lent GPU machine runs (tests/gpu/run.sh), prebuilt here: it has CUDA but none of the
# project's Debian libraries. The binaries with CUDA for sm_90 (the H100/H200), every library they
# need outside glibc/libstdc++/CUDA, the fixture and the demo bundle with its golden file and
# requests, in one file under 48 MiB (tests/gpu/pack.py). Run it there as
#   run(command="tests/gpu/run.sh gpu-pack/vitrine-gpu.tar.xz", carry=["gpu-pack"])
GPU_BUILD := $(BUILD)-gpu
gpu-pack: deps golden
	@cmake -S . -B $(GPU_BUILD) -DCMAKE_BUILD_TYPE=Release -DVITRINE_CUDA=ON \
	  -DCMAKE_CUDA_ARCHITECTURES=90 -DVITRINE_CUDA_EMU=OFF >/dev/null
	@cmake --build $(GPU_BUILD) -j2 --target vitrine vitrine-bench bench_engine bench_cuda_kernels \
	  test_cuda_ops test_backend test_decode_ops test_device_parity test_parity test_rules
	@[ -f $(GPU_BUILD)/fixture/golden.safetensors ] || $(PY) -m train.fixture --out $(GPU_BUILD)/fixture
	@[ -f $(DEMO)/requests.jsonl ] || $(PY) -m train.requests --shop $(DEMO)/shop.json \
	  --out $(DEMO)/requests.jsonl --n 512
	$(PY) tests/gpu/pack.py --build $(GPU_BUILD) --fixture $(GPU_BUILD)/fixture --demo $(DEMO) \
	  --out gpu-pack/vitrine-gpu.tar.xz

clean:
	rm -rf $(BUILD) $(BUILD)-asan $(GPU_BUILD) gpu-pack
