# curvd - plain Makefile. `make test` installs missing packages, builds and
# runs every check; `make run` starts the daemon; `make bench` benchmarks.

CC      ?= cc
BUILD   ?= build
PKGS    := openblas lapacke
# pkg-config is installed by scripts/install-deps; evaluate lazily so a
# first `make test` on a bare machine can install it before use.
DEP_CFLAGS = $(shell pkg-config --cflags $(PKGS))
DEP_LIBS   = $(shell pkg-config --libs $(PKGS)) -lm
TEST_LIBS  = $(shell pkg-config --libs cmocka)
SRV_PKGS  := libmicrohttpd jansson sqlite3 libpq
SRV_CFLAGS = $(shell pkg-config --cflags $(SRV_PKGS))
SRV_LIBS   = $(shell pkg-config --libs $(SRV_PKGS)) -lpthread
CURL_LIBS  = $(shell pkg-config --libs libcurl)

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wvla -Wformat=2
STD     := -std=c11 -D_POSIX_C_SOURCE=200809L
OPT     ?= -O2 -g
# The library never reads errno from libm, and without this flag GCC will not
# vectorize loops that call sqrt. Vectorization is on at -O2 only with the
# "very cheap" cost model; ask for it explicitly.
NUMFLAGS := -fno-math-errno -ftree-vectorize -fvect-cost-model=dynamic
CFLAGS_BASE = $(STD) $(WARN) $(OPT) $(NUMFLAGS) -fPIC -fvisibility=hidden -Ilib/include \
              $(DEP_CFLAGS) $(EXTRA_CFLAGS)
# The library's internal headers (lib/src) are for the library and the
# tests; the daemon sees lib/include only.
CFLAGS_ALL = $(CFLAGS_BASE) -Ilib/src
LDFLAGS_ALL = $(EXTRA_LDFLAGS)

LIB_SRCS   := $(sort $(wildcard lib/src/*.c))
LIB_OBJS   := $(LIB_SRCS:lib/src/%.c=$(BUILD)/lib/%.o)
TEST_SRCS  := $(sort $(wildcard tests/lib/test_*.c))
TEST_BINS  := $(TEST_SRCS:tests/lib/%.c=$(BUILD)/tests/%)
TEST_UTIL  := tests/lib/testutil.c
# The daemon's parts live in an internal archive so tests can link them;
# main.c only becomes the curvd binary. One folder per layer (server/README.md):
# http, wire, api, session, store; daemon.c wires them. Migrations are compiled in.
SRV_SRCS   := server/daemon.c $(sort $(wildcard server/*/*.c))
SRV_OBJS   := $(SRV_SRCS:server/%.c=$(BUILD)/server/%.o) $(BUILD)/server/migrations_sql.o \
              $(BUILD)/server/pg_migrations_sql.o \
              $(BUILD)/server/build_info.o \
              $(BUILD)/server/ui_files.o
MIGRATIONS := $(sort $(wildcard migrations/*.sql))
PG_MIGRATIONS := $(sort $(wildcard migrations/pg/*.sql))
# The dashboard (/ui): plain files compiled into the daemon, no build step.
UI_FILES   := $(sort $(wildcard server/ui/*.html server/ui/*.css server/ui/*.js))
STEST_SRCS := $(sort $(wildcard tests/server/test_*.c tests/server/*/test_*.c))
STEST_BINS := $(STEST_SRCS:tests/server/%.c=$(BUILD)/tests/server/%)
BENCH_SRCS := $(sort $(wildcard tests/bench/*.c))
BENCH_BINS := $(BENCH_SRCS:tests/bench/%.c=$(BUILD)/bench/%)
FMT_FILES  := $(sort $(wildcard lib/include/*.h lib/include/curv/*.h lib/src/*.[ch] \
                tests/lib/*.[ch] tests/server/*.[ch] tests/server/*/*.[ch] tests/bench/*.[ch] \
                tests/fuzz/*.[ch] server/*.[ch] server/*/*.[ch] clients/c/*/*.[ch]))

# V=1 prints full compiler lines.
Q := $(if $(V),,@)

SANITIZE := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

.PHONY: all lib deps test test-pg test-clients test-ui test-cluster check-docker test-unit asan tsan check-symbols check-format check-layers \
        readme-example readme-walkthrough check-openapi spec-check spec-types fuzz fuzz-smoke \
        bench run clean format reproduce FORCE

all: lib

deps:
	@scripts/install-deps

lib: $(BUILD)/libcurv.a $(BUILD)/libcurv.so

$(BUILD)/lib/%.o: lib/src/%.c
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<",:)
	$(Q)$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(BUILD)/libcurv.a: $(LIB_OBJS)
	@rm -f $@
	$(Q)ar rcs $@ $^

# The soname changes with every ABI break: .1 since curv_layer_stats gained
# f32 (libcurv 0.2.0).
$(BUILD)/libcurv.so: $(LIB_OBJS)
	$(Q)$(CC) -shared -Wl,-soname,libcurv.so.1 -o $@ $^ $(LDFLAGS_ALL) $(DEP_LIBS)

$(BUILD)/tests/%: tests/lib/%.c $(TEST_UTIL) tests/lib/testutil.h $(BUILD)/libcurv.a
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $@",:)
	$(Q)$(CC) $(CFLAGS_ALL) -Itests/lib $< $(TEST_UTIL) -o $@ $(BUILD)/libcurv.a \
	    $(LDFLAGS_ALL) $(TEST_LDFLAGS) $(TEST_LIBS) $(DEP_LIBS)

$(BUILD)/server/%.o: server/%.c
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $<",:)
	$(Q)$(CC) $(CFLAGS_BASE) $(SRV_CFLAGS) -Iserver -MMD -MP -c $< -o $@

$(BUILD)/server/migrations_sql.c: $(MIGRATIONS) scripts/embed-migrations
	@mkdir -p $(@D)
	$(Q)scripts/embed-migrations $(MIGRATIONS) > $@

$(BUILD)/server/migrations_sql.o: $(BUILD)/server/migrations_sql.c
	$(Q)$(CC) $(CFLAGS_BASE) -Iserver -c $< -o $@

$(BUILD)/server/pg_migrations_sql.c: $(PG_MIGRATIONS) scripts/embed-migrations
	@mkdir -p $(@D)
	$(Q)scripts/embed-migrations --prefix pg $(PG_MIGRATIONS) > $@

$(BUILD)/server/pg_migrations_sql.o: $(BUILD)/server/pg_migrations_sql.c
	$(Q)$(CC) $(CFLAGS_BASE) -Iserver -c $< -o $@

# The commit for curvd_build_info and --version: regenerated on every make,
# rewritten (and recompiled) only when the commit changes.
$(BUILD)/server/build_info.c: FORCE
	@mkdir -p $(@D)
	$(Q)scripts/build-info $@

$(BUILD)/server/build_info.o: $(BUILD)/server/build_info.c
	$(Q)$(CC) $(CFLAGS_BASE) -Iserver -c $< -o $@

FORCE:

$(BUILD)/server/ui_files.c: $(UI_FILES) scripts/embed-files
	@mkdir -p $(@D)
	$(Q)scripts/embed-files $(UI_FILES) > $@

$(BUILD)/server/ui_files.o: $(BUILD)/server/ui_files.c
	$(Q)$(CC) $(CFLAGS_BASE) -Iserver -c $< -o $@

$(BUILD)/curvd: server/main.c $(BUILD)/libcurvd.a $(BUILD)/libcurv.a
	@$(if $(Q),echo "  LD      $@",:)
	$(Q)$(CC) $(CFLAGS_BASE) $(SRV_CFLAGS) -Iserver $< -o $@ $(BUILD)/libcurvd.a \
	    $(BUILD)/libcurv.a $(LDFLAGS_ALL) $(SRV_LIBS) $(DEP_LIBS)

$(BUILD)/libcurvd.a: $(SRV_OBJS)
	@rm -f $@
	$(Q)ar rcs $@ $^

STEST_UTIL := tests/server/srvutil.c tests/server/pgutil.c

# The tests that kill and restart the daemon process run its binary: keep
# it current. The daemon process and callback trainer are in crash_util.c.
CRASH_TESTS := $(BUILD)/tests/server/test_crash $(BUILD)/tests/server/test_stale_callback \
               $(BUILD)/tests/server/test_lease $(BUILD)/tests/server/test_pg_daemon
$(CRASH_TESTS): $(BUILD)/curvd tests/server/crash_util.c tests/server/crash_util.h
$(CRASH_TESTS): STEST_UTIL += tests/server/crash_util.c

$(BUILD)/tests/server/%: tests/server/%.c $(TEST_UTIL) $(STEST_UTIL) tests/lib/testutil.h \
		tests/server/srvutil.h $(BUILD)/libcurvd.a $(BUILD)/libcurv.a
	@mkdir -p $(@D)
	@$(if $(Q),echo "  CC      $@",:)
	$(Q)$(CC) $(CFLAGS_ALL) $(SRV_CFLAGS) -Iserver -Itests/lib -Itests/server $< $(TEST_UTIL) \
	    $(STEST_UTIL) -o $@ \
	    $(BUILD)/libcurvd.a $(BUILD)/libcurv.a $(LDFLAGS_ALL) $(TEST_LDFLAGS) $(TEST_LIBS) $(SRV_LIBS) \
	    $(CURL_LIBS) $(DEP_LIBS)

$(BUILD)/bench/%: tests/bench/%.c $(BUILD)/libcurv.a
	@mkdir -p $(@D)
	$(Q)$(CC) $(CFLAGS_ALL) -O3 -march=native $< -o $@ $(BUILD)/libcurv.a $(LDFLAGS_ALL) $(DEP_LIBS)

# bench_kfac steps sessions at once on the daemon's worker pool (server/http/pool.c).
$(BUILD)/bench/bench_kfac: tests/bench/bench_kfac.c tests/lib/tu_pool.h $(BUILD)/libcurvd.a \
		$(BUILD)/libcurv.a
	@mkdir -p $(@D)
	$(Q)$(CC) $(CFLAGS_ALL) -Iserver -O3 -march=native $< -o $@ $(BUILD)/libcurvd.a \
	    $(BUILD)/libcurv.a $(LDFLAGS_ALL) -lpthread $(DEP_LIBS)

# bench_commit times the daemon's store: it links the server archive and SQLite.
$(BUILD)/bench/bench_commit: tests/bench/bench_commit.c $(BUILD)/libcurvd.a $(BUILD)/libcurv.a
	@mkdir -p $(@D)
	$(Q)$(CC) $(CFLAGS_ALL) $(SRV_CFLAGS) -Iserver -O3 -march=native $< -o $@ \
	    $(BUILD)/libcurvd.a $(BUILD)/libcurv.a $(LDFLAGS_ALL) $(SRV_LIBS) $(DEP_LIBS)

# The failing-allocator suite wraps the allocator for the library code it links.
$(BUILD)/tests/test_alloc: TEST_LDFLAGS = -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup
$(BUILD)/tests/test_state_bytes: TEST_LDFLAGS = -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=free
# So does the step record's suite, for the records' allocations (wire/step_record.c).
$(BUILD)/tests/server/wire/test_step_record: TEST_LDFLAGS = -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc
# The library's threaded suites (a pool of pthreads lent through curv_executor).
THREAD_TESTS := test_exec test_kfac_defer test_kfac_fold
# The daemon's concurrency suites: its worker pool and the executor it lends,
# whole daemons stepping K-FAC sessions on it, many sessions from many threads.
SRV_THREAD_TESTS := http/test_pool test_parallel test_concurrency session/test_steplog
$(BUILD)/tests/test_exec $(BUILD)/tests/test_kfac_defer $(BUILD)/tests/test_kfac_fold: \
  TEST_LDFLAGS = -pthread

test-unit: $(TEST_BINS) $(STEST_BINS)
	@tests/run-tests.sh $(TEST_BINS) $(STEST_BINS)

# The store's suites again on PostgreSQL, each test in a schema of its own
# in a throw-away cluster (tests/pg/), and what PostgreSQL has of its own
# (test_store_pg, test_pg_daemon); skipped, saying so, when no cluster
# can be started.
PG_TESTS := store/test_store store/test_store_parts store/test_store_log store/test_history \
            store/test_expire store/test_store_pg test_pg_daemon
PG_TEST_BINS = $(PG_TESTS:%=$(BUILD)/tests/server/%)
test-pg: $(PG_TEST_BINS)
	@tests/pg/with-cluster tests/run-tests.sh $(PG_TEST_BINS)

# The whole suite again under AddressSanitizer (with LeakSanitizer) and
# UndefinedBehaviorSanitizer, in its own build tree.
asan:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/asan OPT="-O1 -g" \
	    EXTRA_CFLAGS="$(SANITIZE)" EXTRA_LDFLAGS="$(SANITIZE)" test-unit test-pg

# The threaded suites, the library's and the daemon's, again under
# ThreadSanitizer (clang), in their own build tree.
TSAN_BINS = $(THREAD_TESTS:%=$(BUILD)/tsan/tests/%) $(SRV_THREAD_TESTS:%=$(BUILD)/tsan/tests/server/%)
tsan:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/tsan CC=clang OPT="-O1 -g" \
	    NUMFLAGS=-fno-math-errno EXTRA_CFLAGS=-fsanitize=thread EXTRA_LDFLAGS=-fsanitize=thread \
	    $(TSAN_BINS)
	@TSAN_OPTIONS=halt_on_error=1 tests/run-tests.sh $(TSAN_BINS)

# The shared library must export curv_* and nothing else.
check-symbols: $(BUILD)/libcurv.so
	@bad=$$(nm -D --defined-only $< | awk '{print $$3}' | grep -v '^curv_[a-z]' || true); \
	if [ -n "$$bad" ]; then echo "check-symbols: unexpected exports:"; echo "$$bad"; exit 1; fi; \
	echo "check-symbols: $$(nm -D --defined-only $< | wc -l) exports, all curv_*"

# Layers the compiler cannot see: SQLite and libpq are the store's alone.
check-layers:
	@bad=$$(grep -rlE '#include <(sqlite3|libpq-fe)\.h>' server | grep -v '^server/store/' || true); \
	if [ -n "$$bad" ]; then echo "check-layers: <sqlite3.h> or <libpq-fe.h> outside server/store/:"; echo "$$bad"; exit 1; fi; \
	echo "check-layers: SQLite and libpq only in server/store/, lib/src only for the library and tests"

check-format:
	@clang-format --dry-run --Werror $(FMT_FILES) && echo "check-format: $(words $(FMT_FILES)) files clean"

format:
	clang-format -i $(FMT_FILES)

# The C example in README.md is compiled and run exactly as printed.
readme-example: $(BUILD)/libcurv.a
	@mkdir -p $(BUILD)/readme
	@awk '/^```c$$/{on=1;next} /^```$$/{on=0} on' README.md > $(BUILD)/readme/example.c
	$(Q)$(CC) $(STD) $(WARN) -Ilib/include $(BUILD)/readme/example.c -o $(BUILD)/readme/example \
	    $(BUILD)/libcurv.a $(DEP_LIBS)
	@$(BUILD)/readme/example

# api/openapi.yaml through Redocly's linter, pinned by api/lint/package-lock.json
# (installed from the npm registry only when the lock file changes).
LINT_DIR := api/lint
$(LINT_DIR)/node_modules/.installed: $(LINT_DIR)/package-lock.json
	@cd $(LINT_DIR) && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

check-openapi: $(LINT_DIR)/node_modules/.installed
	@cd $(LINT_DIR) && npx --no-install redocly lint ../openapi.yaml --config redocly.yaml \
	    --format=summary

# Every response of a live daemon validates against api/openapi.yaml
# (Debian's python3-yaml and python3-jsonschema, hence /usr/bin/python3).
spec-check: $(BUILD)/curvd
	@/usr/bin/python3 tests/server/spec_check.py $(BUILD)/curvd > $(BUILD)/spec-check.log \
	    || { grep -A4 '^FAIL' $(BUILD)/spec-check.log; tail -n 1 $(BUILD)/spec-check.log; exit 1; }
	@tail -n 3 $(BUILD)/spec-check.log

# Strict JSON types, generated from api/openapi.yaml: every property of every
# JSON request body with each wrong JSON type, every closed object with an
# unknown member; each must be refused naming the member and change nothing.
spec-types: $(BUILD)/curvd
	@/usr/bin/python3 tests/server/spec_types.py $(BUILD)/curvd > $(BUILD)/spec-types.log \
	    || { grep -A4 '^FAIL' $(BUILD)/spec-types.log; tail -n 1 $(BUILD)/spec-types.log; exit 1; }
	@tail -n 1 $(BUILD)/spec-types.log

# libFuzzer + ASan/UBSan under clang, built in $(BUILD)/fuzz by tests/fuzz/run.sh:
# step bodies (the daemon's decoding path) and state blobs (curv_opt_load).
# `make fuzz` runs each for FUZZ_SECONDS; make test runs a short smoke.
FUZZ_TARGETS := fuzz_step_body fuzz_state_blob fuzz_step_extremes
FUZZ_SECONDS ?= 300

fuzz: deps
	@for t in $(FUZZ_TARGETS); do BUILD=$(BUILD) tests/fuzz/run.sh $$t $(FUZZ_SECONDS) || exit 1; done

fuzz-smoke:
	@for t in $(FUZZ_TARGETS); do \
	    BUILD=$(BUILD) tests/fuzz/run.sh $$t 10 > $(BUILD)/fuzz-$$t.log 2>&1 \
	        || { tail -n 40 $(BUILD)/fuzz-$$t.log; exit 1; }; \
	    tail -n 1 $(BUILD)/fuzz-$$t.log; \
	done

# The README's curl walkthrough, run against a live daemon.
readme-walkthrough: $(BUILD)/curvd
	@tests/server/readme-walkthrough.sh $(BUILD)/curvd

# The dashboard (/ui) in Debian's headless Chromium against a live daemon,
# a screenshot in $(BUILD)/ui-dashboard.png; skipped, saying why, when no
# browser is installed (exit 77).
test-ui: $(BUILD)/curvd
	@/usr/bin/python3 tests/ui/dashboard_check.py $(BUILD)/curvd $(BUILD)/ui-dashboard.png; \
	    rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 77 ]

# The cluster test (issue 24, tests/cluster/): HAProxy running
# deploy/haproxy.cfg and three daemons on one database, eight trainers, one
# daemon SIGKILLed; skipped, saying why, when haproxy cannot be installed
# (exit 77). The database: a throw-away PostgreSQL cluster (tests/pg/pg-cluster)
# where the tree has one, else one SQLite file; CLUSTER_DB=sqlite|pg|URL picks.
CLUSTER_DB ?= $(if $(wildcard tests/pg/pg-cluster),pg,sqlite)
test-cluster: $(BUILD)/curvd
	@/usr/bin/python3 tests/cluster/test_cluster.py $(BUILD)/curvd --db '$(CLUSTER_DB)'; \
	    rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 77 ]

# The Dockerfile's build stage run in a clean copy of the tree, and its
# runtime stage checked against the binary (no Docker engine runs here).
check-docker:
	@tests/docker/check-dockerfile.sh

# The Python client (pytest) and the C client (cmocka + the MLP example),
# each against a real daemon.
test-clients: $(BUILD)/curvd
	@CURVD_BIN=$(BUILD)/curvd clients/python/run-tests.sh
	@$(MAKE) --no-print-directory -C clients/c test CURVD=$(abspath $(BUILD))/curvd \
	    BUILD=$(abspath $(BUILD))/clients/c

test: deps
	@$(MAKE) --no-print-directory check-format
	@$(MAKE) --no-print-directory check-layers
	@$(MAKE) --no-print-directory check-openapi
	@$(MAKE) --no-print-directory lib $(BUILD)/curvd
	@$(MAKE) --no-print-directory check-symbols
	@$(MAKE) --no-print-directory readme-example
	@$(MAKE) --no-print-directory readme-walkthrough
	@$(MAKE) --no-print-directory spec-check
	@$(MAKE) --no-print-directory spec-types
	@$(MAKE) --no-print-directory test-clients
	@$(MAKE) --no-print-directory test-ui
	@$(MAKE) --no-print-directory test-cluster
	@$(MAKE) --no-print-directory check-docker
	@$(MAKE) --no-print-directory asan
	@$(MAKE) --no-print-directory tsan
	@$(MAKE) --no-print-directory fuzz-smoke
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-pg

bench: deps
	@$(MAKE) --no-print-directory $(BENCH_BINS) $(BUILD)/curvd
	@for b in $(BENCH_BINS); do CURVD_BIN=$(BUILD)/curvd $$b || exit 1; done

# Start the daemon on 127.0.0.1:8080 with ./var/curvd.db; Ctrl-C stops it.
run: deps
	@$(MAKE) --no-print-directory $(BUILD)/curvd
	$(BUILD)/curvd $(ARGS)

# The papers' experiments through the Python client and a daemon of their
# own (about an hour on 2 cores), written to docs/results/. ARGS go to the
# driver: make reproduce ARGS="--full" (see python3 -m experiments --help).
reproduce:
	@scripts/install-deps reproduce
	@$(MAKE) --no-print-directory $(BUILD)/curvd
	@REPRODUCE_VIA='make reproduce$(if $(ARGS), ARGS="$(ARGS)")' PYTHONPATH=clients/python \
	    /usr/bin/python3 -m experiments --curvd $(BUILD)/curvd --out docs/results $(ARGS)

clean:
	rm -rf $(BUILD)

-include $(wildcard $(BUILD)/lib/*.d $(BUILD)/asan/lib/*.d $(BUILD)/server/*.d \
           $(BUILD)/server/*/*.d $(BUILD)/asan/server/*.d $(BUILD)/asan/server/*/*.d)
