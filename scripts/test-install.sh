#!/usr/bin/env bash
# Packaging checks: what a C, C++, Go or Zig user gets from `make install`.
#
#   scripts/test-install.sh                # every check
#   scripts/test-install.sh cpp-example    # only the named checks (as printed)
#
# Builds the workspace, then checks: exported symbols against the committed
# list, header documentation, the soname, the installed file layout (with
# DESTDIR), header version macros against Cargo.toml, and consumers built
# from an installed prefix found through pkg-config only: the C quickstart
# (shared and static), the C++ example, the Go module and the Zig package.
# Consumers run against a development relay. Prints one "N passed, M failed"
# line and exits non-zero if anything failed.
set -uo pipefail
top="$(cd "$(dirname "$0")/.." && pwd)"
cd "$top"

work="$(mktemp -d /tmp/msb-install-test.XXXXXX)"
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
stage="$work/stage"
bin="$work/bin"
mkdir -p "$bin"

passed=0
failed=0
failed_names=()

selected=("$@")

# check NAME FUNCTION: runs FUNCTION with its output in a log, shown on failure.
check() {
  local name="$1" fn="$2" log="$work/$1.log" status
  if [[ ${#selected[@]} -gt 0 && " ${selected[*]} " != *" $name "* ]]; then return 0; fi
  # Not inside `if`: errexit would be ignored in the subshell there.
  ( set -euo pipefail; "$fn" ) >"$log" 2>&1
  status=$?
  if [[ $status -eq 0 ]]; then
    passed=$((passed + 1))
    echo "ok    $name"
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    echo "FAIL  $name"
    sed 's/^/      /' "$log"
  fi
}

version="$(make -s --no-print-directory print-version)"
soname="$(make -s --no-print-directory print-soname)"
IFS=. read -r version_major version_minor version_patch <<<"$version"

# Runs a program built here against a fresh relay: run_with_relay PROGRAM.
run_with_relay() {
  scripts/with-devrelay.sh -- sh -c 'exec "$0" "$MSB_SOCKET"' "$1"
}

# Points pkg-config at the temporary prefix, installing into it first when
# an earlier check has not (so single checks can run alone).
use_installed_prefix() {
  [[ -f "$prefix/lib/pkgconfig/microsandbox_agent.pc" ]] \
    || make -s --no-print-directory install PREFIX="$prefix" >/dev/null
  export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
  # Nothing from the build tree may leak into a consumer's build or run.
  unset LD_LIBRARY_PATH LIBRARY_PATH C_INCLUDE_PATH CPLUS_INCLUDE_PATH
}

check_symbols() {
  scripts/check-symbols.sh
}

check_docs() {
  scripts/check-docs.sh
}

check_soname() {
  local actual
  actual="$(readelf -d target/release/libmicrosandbox_agent.so | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')"
  echo "soname: built '$actual', expected '$soname' (Cargo.toml version $version)"
  [[ "$actual" == "$soname" ]]
}

# DESTDIR staging: every file lands under DESTDIR, the .pc names the real
# PREFIX, the symlink chain is real name <- soname <- development link.
check_destdir_layout() {
  make -s --no-print-directory install PREFIX=/usr DESTDIR="$stage" >/dev/null
  local lib="$stage/usr/lib"
  for f in "$lib/libmicrosandbox_agent.so.$version" "$lib/libmicrosandbox_agent.a" \
           "$stage/usr/include/microsandbox_agent.h" "$lib/pkgconfig/microsandbox_agent.pc"; do
    [[ -f "$f" ]] || { echo "missing: $f"; return 1; }
  done
  [[ "$(readlink "$lib/$soname")" == "libmicrosandbox_agent.so.$version" ]] || { echo "bad $soname link"; return 1; }
  [[ "$(readlink "$lib/libmicrosandbox_agent.so")" == "$soname" ]] || { echo "bad .so link"; return 1; }
  local installed_soname
  installed_soname="$(readelf -d "$lib/libmicrosandbox_agent.so.$version" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')"
  [[ "$installed_soname" == "$soname" ]] || { echo "installed soname $installed_soname != $soname"; return 1; }
  grep -qx 'prefix=/usr' "$lib/pkgconfig/microsandbox_agent.pc" || { echo "pc prefix is not /usr"; return 1; }
  cmp -s include/microsandbox_agent.h "$stage/usr/include/microsandbox_agent.h"
  # make uninstall removes exactly what install put there.
  make -s --no-print-directory uninstall PREFIX=/usr DESTDIR="$stage" >/dev/null
  local left
  left="$(find "$stage" -type f -o -type l)"
  [[ -z "$left" ]] || { echo "left after uninstall: $left"; return 1; }
}

check_install_prefix() {
  use_installed_prefix
  [[ "$(pkg-config --modversion microsandbox_agent)" == "$version" ]]
  [[ "$(pkg-config --variable=prefix microsandbox_agent)" == "$prefix" ]]
  pkg-config --cflags --libs microsandbox_agent
}

# The header's macros and msb_version() of the installed library agree with
# Cargo.toml's version.
check_version() {
  use_installed_prefix
  cat >"$work/version.c" <<'C'
#include <stdio.h>
#include <string.h>
#include "microsandbox_agent.h"

#define STR2(x) #x
#define STR(x) STR2(x)

static int failures = 0;
static void expect(int ok, const char *what) {
    if (!ok) { fprintf(stderr, "mismatch: %s\n", what); failures++; }
}

int main(void) {
    expect(MSB_VERSION_MAJOR == EXPECTED_MAJOR, "MSB_VERSION_MAJOR");
    expect(MSB_VERSION_MINOR == EXPECTED_MINOR, "MSB_VERSION_MINOR");
    expect(MSB_VERSION_PATCH == EXPECTED_PATCH, "MSB_VERSION_PATCH");
    expect(MSB_VERSION_NUMBER == EXPECTED_MAJOR * 10000 + EXPECTED_MINOR * 100 + EXPECTED_PATCH,
           "MSB_VERSION_NUMBER");
    expect(MSB_VERSION_AT_LEAST(EXPECTED_MAJOR, EXPECTED_MINOR, EXPECTED_PATCH), "AT_LEAST(self)");
    expect(MSB_VERSION_AT_LEAST(0, 0, 0), "AT_LEAST(0.0.0)");
    expect(!MSB_VERSION_AT_LEAST(EXPECTED_MAJOR, EXPECTED_MINOR, EXPECTED_PATCH + 1), "!AT_LEAST(next patch)");
    expect(!MSB_VERSION_AT_LEAST(EXPECTED_MAJOR, EXPECTED_MINOR + 1, 0), "!AT_LEAST(next minor)");
    expect(!MSB_VERSION_AT_LEAST(EXPECTED_MAJOR + 1, 0, 0), "!AT_LEAST(next major)");
    const char *runtime = msb_version();
    const char *expected = STR(EXPECTED_MAJOR) "." STR(EXPECTED_MINOR) "." STR(EXPECTED_PATCH);
    expect(runtime != NULL && strcmp(runtime, expected) == 0, "msb_version()");
    printf("header %d.%d.%d (%d), library %s, Cargo.toml %s\n", MSB_VERSION_MAJOR, MSB_VERSION_MINOR,
           MSB_VERSION_PATCH, MSB_VERSION_NUMBER, runtime, expected);
    return failures ? 1 : 0;
}
C
  # shellcheck disable=SC2046  # pkg-config output is meant to be split
  cc -std=c11 -Wall -Wextra -Wpedantic -Werror \
     -DEXPECTED_MAJOR="$version_major" -DEXPECTED_MINOR="$version_minor" -DEXPECTED_PATCH="$version_patch" \
     "$work/version.c" $(pkg-config --cflags --libs microsandbox_agent) -Wl,-rpath,"$prefix/lib" -o "$bin/version"
  "$bin/version"
}

# The C quickstart, linked against the installed shared library through
# pkg-config, loads that library by its soname and runs against a relay.
check_c_shared() {
  use_installed_prefix
  # shellcheck disable=SC2046
  cc -Wall -Wextra -Werror examples/c/quickstart.c $(pkg-config --cflags --libs microsandbox_agent) \
     -Wl,-rpath,"$prefix/lib" -o "$bin/quickstart"
  readelf -d "$bin/quickstart" | grep -F "Shared library: [$soname]"
  ldd "$bin/quickstart" | grep -F "$soname => $prefix/lib/$soname"
  run_with_relay "$bin/quickstart"
}

# A static link with exactly what `pkg-config --static` says: the archive is
# chosen over the shared library with -l:NAME.a, everything else verbatim.
check_c_static() {
  use_installed_prefix
  local libs
  libs="$(pkg-config --static --libs microsandbox_agent)"
  libs="${libs//-lmicrosandbox_agent/-l:libmicrosandbox_agent.a}"
  echo "link line: $libs"
  # shellcheck disable=SC2046,SC2086
  cc -Wall -Wextra -Werror examples/c/quickstart.c $(pkg-config --cflags microsandbox_agent) $libs \
     -o "$bin/quickstart-static"
  if readelf -d "$bin/quickstart-static" | grep -F libmicrosandbox_agent; then
    echo "the static build still needs the shared library"
    return 1
  fi
  run_with_relay "$bin/quickstart-static"
}

# Libs.private in the .pc must be what rustc reports a static link needs. The
# probe builds in its own target dir: its extra rustc flags would otherwise
# make the shared target/release rebuild the library for everyone, and cargo
# replays the note when the probe is already fresh.
check_libs_private() {
  use_installed_prefix
  local rustc_libs pc_libs
  rustc_libs="$(CARGO_TARGET_DIR="$top/target/native-static-libs-probe" \
    cargo rustc --quiet --release --lib --crate-type staticlib -- --print native-static-libs 2>&1 \
    | sed -n 's/^note: native-static-libs: //p' | tail -n 1)"
  pc_libs="$(sed -n 's/^Libs.private: //p' "$prefix/lib/pkgconfig/microsandbox_agent.pc")"
  echo "rustc:        $rustc_libs"
  echo "Libs.private: $pc_libs"
  [[ -n "$rustc_libs" ]] || { echo "rustc printed no native-static-libs note"; return 1; }
  [[ "$rustc_libs" == "$pc_libs" ]] || { echo "update Libs.private in microsandbox_agent.pc.in"; return 1; }
}

check_cpp() {
  use_installed_prefix
  # shellcheck disable=SC2046
  c++ -std=c++17 -Wall -Wextra -Werror -Iexamples/cpp examples/cpp/quickstart.cpp \
      $(pkg-config --cflags --libs microsandbox_agent) -Wl,-rpath,"$prefix/lib" -o "$bin/quickstart-cpp"
  run_with_relay "$bin/quickstart-cpp"
}

check_docs_needs_doxygen() {
  local empty="$work/empty-path"
  mkdir -p "$empty"
  if PATH="$empty" "$(command -v make)" -s --no-print-directory docs >"$work/docs-missing.out" 2>&1; then
    echo "make docs succeeded without doxygen on PATH"
    return 1
  fi
  grep -F "doxygen not found" "$work/docs-missing.out"
}

check_docs_html() {
  command -v doxygen >/dev/null || { echo "doxygen is not installed (apt-get install doxygen)"; return 1; }
  rm -rf target/doc-c
  make -s --no-print-directory docs
  grep -q 'msb_client_connect' target/doc-c/html/microsandbox__agent_8h.html
}

# The Go module (cgo, `#cgo pkg-config: microsandbox_agent`) from the prefix.
check_go_binding_from_install() {
  use_installed_prefix
  command -v go >/dev/null || { echo "go is not installed"; return 1; }
  cd bindings/go
  export CGO_ENABLED=1 CGO_LDFLAGS="-Wl,-rpath,$prefix/lib"
  go vet ./...
  go build ./...
}

# The Zig package from the prefix: build.zig's pkg-config mode links what
# microsandbox_agent.pc names, and -Dinclude-dir makes it translate the
# installed header (its default is the repository's). `zig build` alone
# compiles nothing here, so run the tests, which need a relay (and the
# devrelay binary itself, for the tests that start one with a fault mode);
# the test binaries find the installed library through LD_LIBRARY_PATH
# (pkg-config gives no rpath).
check_zig_binding_from_install() {
  use_installed_prefix
  python3 -m ziglang version >/dev/null || { echo "zig (python3 -m ziglang) is not installed"; return 1; }
  local includedir libdir
  includedir="$(pkg-config --variable=includedir microsandbox_agent)"
  libdir="$(pkg-config --variable=libdir microsandbox_agent)"
  cd bindings/zig
  LD_LIBRARY_PATH="$libdir" MSB_DEVRELAY="$top/target/release/msb-devrelay" \
    "$top/scripts/with-devrelay.sh" -- \
    python3 -m ziglang build test -Dpkg-config=true -Dinclude-dir="$includedir" --summary all
}

echo "building the workspace"
cargo build --release --workspace --quiet || { echo "error: cargo build failed"; echo "0 passed, 1 failed"; exit 1; }

check symbols check_symbols
check docs check_docs
check soname check_soname
check destdir-layout check_destdir_layout
check install-prefix check_install_prefix
check version check_version
check c-shared-from-pkg-config check_c_shared
check c-static-from-pkg-config check_c_static
check libs-private-matches-rustc check_libs_private
check cpp-example check_cpp
check docs-fails-without-doxygen check_docs_needs_doxygen
check docs-html check_docs_html
for binding in go zig; do
  if [[ -d "bindings/$binding" ]]; then
    check "$binding-binding-from-install" "check_${binding}_binding_from_install"
  else
    echo "--    bindings/$binding does not exist yet: nothing to build"
  fi
done

echo
[[ $failed -eq 0 ]] || echo "failed: ${failed_names[*]}"
echo "install checks: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
