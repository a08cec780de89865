# Sourced by tools/device_bundle.sh and tools/device_fuzz_bundle.sh. The GPU machine has no
# compiler and no OpenBLAS, so binaries travel with their shared libraries.
# bundle_libs DEST_LIB_DIR BINARY...: copies every library `ldd` lists for the binaries, except
# the C runtime that every Linux has. OpenBLAS picks its kernel at run time (DYNAMIC_ARCH); the
# pthread/openmp variant is what libblas.so.3 / liblapack.so.3 resolve to through Debian's
# alternatives, so the real files are copied (cp -L).
bundle_libs() {
  local dest="$1"; shift
  mkdir -p "$dest"
  for b in "$@"; do ldd "$b" | awk '/=> \//{print $3}'; done | sort -u | while read -r lib; do
    case "$(basename "$lib")" in libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*) continue ;; esac
    cp -L "$lib" "$dest/"
  done
}
