#!/usr/bin/env bash
# Installs the build into a scratch prefix and builds a vendor program against
# it twice: with pkg-config and with CMake's find_package(dp420). Then runs it.
#   install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
work=$(mktemp -d /var/tmp/dp420-install-XXXXXX)
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
cmake --install "$build" --prefix "$prefix" >/dev/null
test -f "$prefix/include/dp420/dp420.h"
test -f "$prefix/lib/pkgconfig/dp420.pc" || test -f "$prefix/lib/x86_64-linux-gnu/pkgconfig/dp420.pc"
libdir=$(dirname "$(find "$prefix" -name 'libdp420.so' | head -n 1)")

cat > "$work/vendor.c" <<'C'
#include <dp420/dp420.h>
#include <stdio.h>
int main(int argc, char** argv) {
  dp420_ctx_t* ctx = dp420_ctx_new();
  if (dp420_version() != DP420_VERSION) return 1;
  int rc = dp420_repo_init(ctx, argv[1]);
  dp420_repo_t* repo = NULL;
  if (rc == 0) rc = dp420_repo_open(ctx, argv[1], &repo);
  printf("vendor: %s rc=%d %s\n", dp420_version_string(), rc, dp420_errmsg(ctx));
  dp420_repo_close(repo);
  dp420_ctx_free(ctx);
  return rc == 0 ? 0 : 1;
}
C
# pkg-config
PKG_CONFIG_PATH=$libdir/pkgconfig cc "$work/vendor.c" -o "$work/vendor-pc" \
  $(PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config --cflags --libs dp420)
LD_LIBRARY_PATH=$libdir "$work/vendor-pc" "$work/repo-pc"
test -f "$work/repo-pc/config"

# CMake package
mkdir -p "$work/cm"
cp "$work/vendor.c" "$work/cm/"
cat > "$work/cm/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.22)
project(vendor C)
find_package(dp420 REQUIRED)
add_executable(vendor vendor.c)
target_link_libraries(vendor PRIVATE dp420::dp420)
CM
cmake -S "$work/cm" -B "$work/cm/build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cm/build" >/dev/null
LD_LIBRARY_PATH=$libdir "$work/cm/build/vendor" "$work/repo-cm"
test -f "$work/repo-cm/config"
echo "install_test: pkg-config and find_package(dp420) consumers built and ran"
