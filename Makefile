# loom: `make run` and `make test` are the two commands (README). CMake does the building underneath.
BUILD     ?= build
JOBS      ?= $(shell nproc)
MODEL     ?=
PORT      ?= 8000
FUZZ_SECS ?= 10

.PHONY: all setup build run test unit fuzz-smoke asan e2e clean format

all: build

setup:
	@bash scripts/setup.sh

build: setup
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Serves MODEL (a Hugging Face folder); without MODEL, a small model that the build makes itself.
run: build
	@MODEL="$(MODEL)" PORT="$(PORT)" bash scripts/run.sh

# Everything: unit and golden tests, fuzz smoke runs, the sanitizer build of the tests, the e2e suite.
test: build
	@bash scripts/test.sh

unit: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

fuzz-smoke: setup
	@cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DLOOM_FUZZ=ON -DLOOM_SANITIZE=ON \
	    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build build-fuzz -j $(JOBS)
	@FUZZ_SECS=$(FUZZ_SECS) bash scripts/fuzz_smoke.sh build-fuzz

asan: setup
	@cmake -S . -B build-asan -DLOOM_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build build-asan -j $(JOBS)
	@cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    ctest --output-on-failure -j $(JOBS) -LE slow

e2e: build
	@bash scripts/e2e.sh $(BUILD)

format:
	@clang-format -i $$(git ls-files '*.c' '*.h' '*.cu')

clean:
	rm -rf build build-fuzz build-asan
